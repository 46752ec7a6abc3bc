"""Synthesis in channels_last against NCHW, and bf16 against float32: patches/s as ratios against
the float32 NCHW path in the same run, and how far the samples move (same seeds).

    OMP_NUM_THREADS=1 python benchmarks/bench_synthesis_layout.py --threads 1 [--bf16] [--json out.json]

The embedded toy models (64 px), ancestral DDPM at 50 steps, guidance 1.5, patches for 8 fixed
generated masks. Each configuration is timed in interleaved repeats (median). Quality: the mean
absolute pixel difference (0-255) against float32 NCHW with the same seeds, beside the same
difference between two float32 NCHW runs with different seeds (what any change of noise moves).
bf16 runs only with --bf16: where it is emulated (no AVX512-BF16 / AMX) it is slow, and its speed
there says nothing about a machine that runs it natively.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from nasdm_aug.generator import NASDMGenerator
from nasdm_aug.hardware import describe_machine
from nasdm_aug.sampling import SamplerOptions


def _run(gen: NASDMGenerator, masks, batch: int, seed: int = 0) -> tuple[float, np.ndarray]:
    inst, types = masks[0][:batch], masks[1][:batch]
    start = time.perf_counter()
    out = gen.generate_patches(inst, types, batch_size=batch, seed=seed, sampling=SamplerOptions(steps=50))
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--bf16", action="store_true", help="also time and compare bf16 autocast")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    machine = describe_machine()
    print(f"machine: {machine}; threads {args.threads}")
    dtypes = [torch.float32] + ([torch.bfloat16] if args.bf16 else [])
    gens = {(layout, dt): NASDMGenerator.from_pretrained("toy", device="cpu", layout=layout, dtype=dt)
            for layout in ("contiguous", "channels_last") for dt in dtypes}
    ref = gens[("contiguous", torch.float32)]
    masks = ref.generate_masks("all", 8, sampling=SamplerOptions(steps=10), seed=0)  # any valid masks do
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        times: dict = {k: [] for k in gens}
        outs: dict = {}
        for _ in range(args.repeats):  # interleaved, so drift of the machine hits every configuration alike
            for key, gen in gens.items():
                if key[1] == torch.bfloat16 and times[key]:
                    continue  # emulated bf16 is slow: timed once
                sec, out = _run(gen, masks, batch)
                times[key].append(sec)
                outs[key] = out
        _, other_seed = _run(ref, masks, batch, seed=1)
        base = statistics.median(times[("contiguous", torch.float32)])
        base_img = outs[("contiguous", torch.float32)].astype(np.float64)
        spread = float(np.abs(other_seed.astype(np.float64) - base_img).mean())
        for key in gens:
            sec = statistics.median(times[key])
            rows.append({"batch": batch, "layout": key[0], "dtype": str(key[1]).replace("torch.", ""),
                         "patches_per_s": batch / sec, "speedup": base / sec,
                         "mean_abs_diff": float(np.abs(outs[key].astype(np.float64) - base_img).mean()),
                         "seed_spread": spread, "repeats": len(times[key])})
    print("| batch | layout | dtype | patches/s | vs fp32 NCHW | mean abs diff (same seeds) | other seed |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['layout']} | {r['dtype']} | {r['patches_per_s']:.3f} | {r['speedup']:.2f}x | "
              f"{r['mean_abs_diff']:.3f} | {r['seed_spread']:.2f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine, "threads": args.threads, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
