"""HoVerNet post-processing: our presets against a faithful re-implementation of hover_net's
``process()`` (benchmarks/hovernet_reference.py), on the same inputs, in one process.

    .venv/bin/python benchmarks/bench_postprocess.py [--patches 48] [--rounds 5]
        [--batch 8] [--base COMMIT]
        [--model HOVERNET_RUN --store STORE.h5 --split Test] [--json out.json]

Inputs: (1) "soft": soft np / hv maps made from real CoNSeP instance maps (128-px crops of
../shared/data/consep/Train, random disks where it is absent) plus noisy type logits; (2) with
``--model``: the outputs of a trained HoVerNet on a store's split (the real thing).
For each: patches/s (best of ``--rounds`` interleaved passes, one thread) of hover_net's
``process()`` with and without its contour / centroid bookkeeping and of our presets, patch by
patch and in batches of ``--batch`` (as ``postprocess()`` runs them; checked identical); the
agreement of our ``hovernet`` preset with it (pooled PQ, identical patches, identical types);
and PQ against ground truth of every variant. ``--base COMMIT`` adds that commit's
``hovernet/postprocess.py`` (read with ``git show``) to the race, batched, with its speed ratio to
this checkout's and whether the two give the same maps.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import hovernet_reference as ref  # noqa: E402
from bench_hovernet import soft_predictions  # noqa: E402
from bench_recipe_sizes import _cpu  # noqa: E402  (lscpu model, CPU capability, torch version)

from hovernet.config import PostprocessConfig  # noqa: E402
from hovernet.metrics import compute_pq  # noqa: E402
from hovernet.postprocess import (  # noqa: E402
    assign_types, assign_types_batch, instances_from_np_hv, instances_from_np_hv_batch,
)


def machine() -> dict[str, str]:
    return {"cpu": _cpu(), "threads": str(torch.get_num_threads())}


def soft_inputs(n: int) -> list[dict[str, np.ndarray]]:
    """Soft maps from real masks, with type logits: the true type + 1.5 over N(0, 1) noise."""
    rng = np.random.default_rng(2)
    out = []
    for gt, np_logits, hv in soft_predictions(n):
        prob = (1 / (1 + np.exp(-(np_logits[1] - np_logits[0])))).astype(np.float32)
        gt_type = rng.integers(1, 5, gt.max() + 1)[gt] * (gt > 0)
        nc = rng.normal(0, 1, (5, *gt.shape)).astype(np.float32)
        nc[gt_type, np.arange(gt.shape[0])[:, None], np.arange(gt.shape[1])[None]] += 1.5
        out.append({"prob": prob, "hv": hv, "nc": nc, "gt": gt, "gt_type": gt_type})
    return out


def model_inputs(model_dir: str, store: str, split: str, n: int) -> list[dict[str, np.ndarray]]:
    """A trained HoVerNet's outputs on the first ``n`` patches of ``store:split``."""
    from hovernet.evaluate import load_hovernet
    from hovernet.eval_data import open_eval_store
    from nasdm_aug.mixing.dataset import SyntheticMixDataset

    model, _, _ = load_hovernet(model_dir)
    st, split_, total = open_eval_store(store, split)
    data = SyntheticMixDataset(st, split=split_, mode="real", ratio=1.0)
    out = []
    with torch.no_grad():
        for i in range(min(n, total)):
            item = data[i]
            o = model(torch.as_tensor(np.asarray(item["image"]), dtype=torch.float32)[None])
            out.append({"prob": torch.softmax(o["np"].float(), 1)[0, 1].numpy(), "hv": o["hv"][0].float().numpy(),
                        "nc": o["nc"][0].float().numpy(), "gt": np.asarray(item["inst"]).squeeze().astype(np.int32),
                        "gt_type": np.asarray(item["type"]).squeeze().astype(np.int32)})
    return out


def load_base(commit: str) -> types.ModuleType:
    """``hovernet/postprocess.py`` as it was at ``commit``, as a module of its own (it imports the
    rest of ``hovernet`` from this checkout)."""
    root = Path(__file__).resolve().parents[1]
    src = subprocess.run(["git", "show", f"{commit}:hovernet/postprocess.py"], cwd=root, capture_output=True,
                         text=True)
    if src.returncode:
        sys.exit(f"Error: --base {commit}: {src.stderr.strip()}")
    mod = types.ModuleType(f"postprocess_{commit}")
    exec(compile(src.stdout, f"{commit}:hovernet/postprocess.py", "exec"), mod.__dict__)
    return mod


def race(items: list[dict[str, np.ndarray]], rounds: int, batch: int,
         base: tuple[str, types.ModuleType] | None = None) -> dict[str, float]:
    presets = {"hovernet": PostprocessConfig.hovernet(), "default": PostprocessConfig(), "monai": PostprocessConfig.monai()}

    def ours(cfg):
        return lambda it: (lambda inst: (inst, assign_types(inst, it["nc"], cfg.type_vote)))(
            instances_from_np_hv(it["prob"], it["hv"], cfg))

    def ours_batched(cfg, mod=None):
        """What ``postprocess()`` (and so ``hovernet evaluate``) does: one pass per batch."""
        inst_fn = mod.instances_from_np_hv_batch if mod else instances_from_np_hv_batch
        type_fn = mod.assign_types_batch if mod else assign_types_batch

        def run(chunk):
            inst = inst_fn(np.stack([it["prob"] for it in chunk]), np.stack([it["hv"] for it in chunk]), cfg)
            typ = type_fn(inst, np.stack([it["nc"] for it in chunk]), cfg.type_vote)
            return list(zip(inst, typ))
        return run

    def theirs(contours):
        def run(it):
            inst = ref.proc_np_hv(it["prob"], it["hv"][0], it["hv"][1])
            return inst, ref.type_vote(inst, np.argmax(it["nc"], 0).astype(np.int32), contours=contours)
        return run

    fns = {"hover_net_process": theirs(True), "hover_net_no_contours": theirs(False),
           **{f"ours_{k}": ours(c) for k, c in presets.items()}}
    batched = {f"ours_{k}_batch{batch}": ours_batched(c) for k, c in presets.items()}
    if base:
        batched[f"base_hovernet_batch{batch}"] = ours_batched(presets["hovernet"], base[1])
    for fn in fns.values():  # warm caches and imports
        fn(items[0])
    for fn in batched.values():
        fn(items[:batch])
    best = {k: float("inf") for k in (*fns, *batched)}
    results = {}
    for _ in range(rounds):  # interleaved: a disturbance of the shared CPU hits every variant alike
        for k, fn in fns.items():
            t0 = time.perf_counter()
            results[k] = [fn(it) for it in items]
            best[k] = min(best[k], time.perf_counter() - t0)
        for k, fn in batched.items():
            t0 = time.perf_counter()
            results[k] = [r for i in range(0, len(items), batch) for r in fn(items[i: i + batch])]
            best[k] = min(best[k], time.perf_counter() - t0)
    for k in presets:  # the batched pass is the per-patch function's output, pixel for pixel
        for (a, ta), (b, tb) in zip(results[f"ours_{k}"], results[f"ours_{k}_batch{batch}"]):
            assert np.array_equal(a, b) and np.array_equal(ta, tb), f"batched {k} differs from per patch"
    out = {f"{k}_per_s": len(items) / v for k, v in best.items()}
    if base:
        out["base"] = base[0]
        out["speedup_batched_vs_base"] = best[f"base_hovernet_batch{batch}"] / best[f"ours_hovernet_batch{batch}"]
        out["speedup_base_batched_vs_no_contours"] = best["hover_net_no_contours"] / best[f"base_hovernet_batch{batch}"]
        out["same_maps_as_base"] = all(
            np.array_equal(a, b) and np.array_equal(ta, tb)
            for (a, ta), (b, tb) in zip(results[f"base_hovernet_batch{batch}"], results[f"ours_hovernet_batch{batch}"]))
    for name, k in (("", "ours_hovernet"), ("_batched", f"ours_hovernet_batch{batch}")):
        out[f"speedup{name}_vs_process"] = best["hover_net_process"] / best[k]
        out[f"speedup{name}_vs_no_contours"] = best["hover_net_no_contours"] / best[k]
    # agreement of the hovernet preset with hover_net
    tp = fp = fn = 0
    iou = 0.0
    same = types_same = types_n = 0
    for (inst, typ), (their, info) in zip(results["ours_hovernet"], results["hover_net_process"]):
        s = compute_pq(inst, their)
        tp, fp, fn, iou = tp + s["tp"], fp + s["fp"], fn + s["fn"], iou + s["iou_sum"]
        same += int((inst.max() == 0 and their.max() == 0) or (s["fp"] == s["fn"] == 0 and s["iou_sum"] == s["tp"]))
        for their_id, entry in info.items():
            pix = their == their_id
            types_n += 1
            types_same += int(typ[pix].min() == typ[pix].max() == entry["type"])
    out["agreement_pq_pooled"] = iou / (tp + 0.5 * (fp + fn)) if tp + fp + fn else float("nan")
    out["identical_patches"] = same / len(items)
    out["identical_types"] = types_same / max(types_n, 1)
    out["instances_hover_net"] = int(sum(len(np.unique(r[0])) - 1 for r in results["hover_net_process"]))
    for k in ("hover_net_process", *(f"ours_{p}" for p in presets)):
        pq = [compute_pq(r[0], it["gt"])["pq"] for r, it in zip(results[k], items)]
        out[f"pq_vs_gt_{k}"] = float(np.nanmean(pq))
    out["n_patches"] = len(items)
    out["patch_size"] = int(items[0]["prob"].shape[0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8, help="patches per batched call (hovernet evaluate's default)")
    ap.add_argument("--model", default=None, help="a trained HoVerNet run folder (optional)")
    ap.add_argument("--store", default=None, help="PatchStore for --model")
    ap.add_argument("--split", default="Test")
    ap.add_argument("--json", default=None)
    ap.add_argument("--base", default=None, metavar="COMMIT",
                    help="also race this commit's hovernet/postprocess.py (the hovernet preset, batched)")
    args = ap.parse_args()
    base = (args.base, load_base(args.base)) if args.base else None
    torch.set_num_threads(1)
    res: dict = {"machine": machine()}
    print(json.dumps(res["machine"]), flush=True)
    res["soft"] = race(soft_inputs(args.patches), args.rounds, args.batch, base)
    print("soft", json.dumps(res["soft"], indent=1), flush=True)
    if args.model:
        if not args.store:
            sys.exit("Error: --model needs --store")
        res["model"] = race(model_inputs(args.model, args.store, args.split, args.patches), args.rounds, args.batch,
                            base)
        print("model", json.dumps(res["model"], indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
