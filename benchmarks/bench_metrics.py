"""Benchmark of the generative evaluation: Inception features per second, FID cost, and `evaluate` on toy tissue.

    .venv/bin/python benchmarks/bench_metrics.py [--images 64] [--skip-full-fid] [--skip-evaluate] [--out DIR]

1. InceptionV3 (the packaged TorchScript) features/s on 128 px patches (resized to 299).
2. FID cost: the exact common-subspace path (N + M - 1 < 2048) against MONAI's full 2048 x 2048
   ``sqrtm`` (2100 + 2100 random features, so no reduction applies).
3. ``evaluate`` on toy tissue: a store of toy seed 1 against toy seed 0 (real vs real: the FID/KID
   floor at this sample size), and the toy model's bank against toy tissue when the embedded toy
   models exist.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nasdm_aug.metrics.generative import frechet_distance
from nasdm_aug.metrics.inception import InceptionExtractor


def bench_features(n: int, batch: int) -> dict:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 128, 128, 3), dtype=np.uint8)
    ex = InceptionExtractor(batch_size=batch)
    ex(images[:batch])  # warm-up: TorchScript profiles the first calls
    t, c = time.perf_counter(), time.process_time()
    ex(images)
    dt, cpu = time.perf_counter() - t, time.process_time() - c
    # CPU-seconds per image (all threads) is steadier than wall time on a shared machine
    return {"images": n, "batch": batch, "seconds": round(dt, 2), "features_per_s": round(n / dt, 2),
            "cpu_s_per_image": round(cpu / n, 3), "threads": torch.get_num_threads()}


def bench_fid(full: bool) -> dict:
    rng = np.random.default_rng(0)
    a, b = rng.random((64, 2048)), rng.random((64, 2048)) + 0.01
    t = time.perf_counter()
    frechet_distance(a, b)
    out = {"subspace_64_vs_64_s": round(time.perf_counter() - t, 3)}
    if full:
        a, b = rng.random((2100, 2048)), rng.random((2100, 2048)) + 0.01
        t = time.perf_counter()
        frechet_distance(a, b)
        out["monai_full_2100_vs_2100_s"] = round(time.perf_counter() - t, 1)
    return out


def _toy_store(path: Path, seed: int) -> None:
    from nasdm_aug.data.prepare import PrepareConfig, prepare

    prepare(PrepareConfig(format="toy", out=str(path), seed=seed, toy_images=2, toy_size=512), progress=False)


def bench_evaluate(root: Path, max_patches: int) -> dict:
    from nasdm_aug.generator import TOY_MODEL_DIR
    from nasdm_aug.metrics.evaluate import EvaluateConfig, evaluate_bank

    real, other = root / "toy0.h5", root / "toy1.h5"
    _toy_store(real, 0)
    _toy_store(other, 1)
    cfg = EvaluateConfig(real=str(real), synthetic=str(other), max_patches=max_patches, cache=False)
    t = time.perf_counter()
    r = evaluate_bank(cfg, root / "real_vs_real", progress=False)
    out = {"real_vs_real": {"n": [r["real"]["n"], r["synthetic"]["n"]], "fid": round(r["generative"]["fid"], 2),
                            "kid": round(r["generative"]["kid"]["mean"], 5),
                            "is": round(r["generative"]["is_synthetic"]["mean"], 2),
                            "seconds": round(time.perf_counter() - t, 1)}}
    if not (TOY_MODEL_DIR / "mask").is_dir():
        out["toy_bank"] = f"not run: no embedded toy models at {TOY_MODEL_DIR}"
        return out
    from nasdm_aug.synthesize import SynthesizeConfig, synthesize

    bank = root / "bank.h5"
    synthesize(SynthesizeConfig(masks=str(real), split="R2"), bank, progress=False)
    t = time.perf_counter()
    r = evaluate_bank(EvaluateConfig(real=str(real), real_split="Train", synthetic=str(bank), max_patches=max_patches,
                                cache=False), root / "toy_bank", progress=False)
    out["toy_bank"] = {"n": [r["real"]["n"], r["synthetic"]["n"]], "fid": round(r["generative"]["fid"], 2),
                       "kid": round(r["generative"]["kid"]["mean"], 5), "seconds": round(time.perf_counter() - t, 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-patches", type=int, default=64)
    parser.add_argument("--skip-full-fid", action="store_true")
    parser.add_argument("--skip-evaluate", action="store_true")
    parser.add_argument("--out", default=None, help="keep the toy stores and reports here")
    args = parser.parse_args()
    results = {"features": bench_features(args.images, args.batch), "fid": bench_fid(not args.skip_full_fid)}
    print(json.dumps(results, indent=2), flush=True)
    if args.skip_evaluate:
        return
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        root = Path(args.out) if args.out else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        results["evaluate"] = bench_evaluate(root, args.max_patches)
    print(json.dumps(results["evaluate"], indent=2))


if __name__ == "__main__":
    main()
