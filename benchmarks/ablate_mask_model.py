"""Mask-model ablation: do generated masks look like nuclei, and do they keep the requested types?

    .venv/bin/python benchmarks/ablate_mask_model.py --store consep.h5 --work DIR \\
        --runs shipped=nasdm_aug/assets/consep-cpu/mask,x0=runs/mask-x0 [--num 128] \\
        [--sampling ddpm:50:1.5] [--thresholds 0,0.5] [--require other] [--json out.json] [--sheet sheet.png]

For each mask run (a run directory or one of its checkpoint folders) and each ``--sampling`` value
(``SAMPLER:STEPS:GUIDANCE[:LOW-HIGH]``, the last an optional guidance interval in noise levels
sigma), the mask model is asked for the type-presence vectors of ``--num`` random patches of
``--split`` (Train by default: the requests then follow the training data's type mix, so the
generated nuclei are compared with the real ones they imitate). Its raw output is cached in DIR
(keyed by the weights, the sampling and the requests) and decoded once per ``--thresholds`` value
(``decode_mask``'s ``marker_threshold``; 0 is today's decoder). Scores:

- **shape**: 1-D Wasserstein distances between generated and real nuclei of every patch of
  ``--split``: nuclei per patch, area (px), eccentricity and solidity (``mask_realism``);
- **merged**: the share of generated nuclei larger than the real 99th area percentile
  (a merged blob of several nuclei is the usual failure);
- **kept apart**: the share of nuclei 4-adjacent to another nucleus (touching) and the share of
  foreground components holding 3 or more nuclei (clustered), beside the real masks' own
  (``contact_statistics``): touching nuclei drawn as one instance lower the first, a sheet of
  nuclei tiled into one solid region raises the second;
- **type control**: overall precision and recall of the requested types (``type_control``), and
  the recall of each type, since the micro-averaged one is the common types' (``--require TYPE``
  draws every request from patches holding TYPE, to measure a rare type's);
- **round trip**: the same decoder on the encoded REAL masks, PQ against the real instances,
  so a decoder change that helps generated masks is seen not to break real ones.

Every run samples with the same seeds. ``--sheet`` draws the first 8 requests: the real patch's
mask whose types were asked for, then each run's mask at the first sampling and the last threshold.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nasdm_aug.data.masks import decode_mask, encode_mask, type_presence  # noqa: E402
from nasdm_aug.data.store import PatchStore  # noqa: E402
from nasdm_aug.generator import NASDMGenerator, model_weights_hash, named_model_dir  # noqa: E402
from nasdm_aug.hardware import describe_machine  # noqa: E402
from nasdm_aug.metrics.mask_checks import (  # noqa: E402
    contact_statistics,
    mask_realism,
    nuclei_statistics,
    type_control,
    types_present,
)
from nasdm_aug.sampling import SamplerOptions, check_guidance_interval  # noqa: E402

SHIPPED_PATCH = named_model_dir("consep-cpu") / "patch"


def parse_sampling(spec: str) -> tuple[SamplerOptions, float, tuple[float, float] | None]:
    """``SAMPLER:STEPS:GUIDANCE[:LOW-HIGH]``: the optional fourth field is the guidance interval in
    noise levels sigma (e.g. ``ddpm:50:2.5:1-200``: guided only where 1 < sigma <= 200)."""
    try:
        name, steps, guidance, *rest = spec.split(":")
        if len(rest) > 1:
            raise ValueError("more than four fields")
        interval = check_guidance_interval(tuple(rest[0].split("-"))) if rest else None
        return SamplerOptions(sampler=name, steps=int(steps)), float(guidance), interval
    except ValueError as exc:
        sys.exit(f"Error: --sampling {spec!r} is not SAMPLER:STEPS:GUIDANCE[:LOW-HIGH] (e.g. ddpm:50:1.5 or "
                 f"ddpm:50:2.5:1-200): {exc}")


def sample_reps(run: Path, presence: np.ndarray, spec: str, work: Path, batch: int, seed: int) -> np.ndarray:
    """The raw mask representations for ``presence``, cached in ``work`` by weights, sampling and requests."""
    # the EMA weights the generator loads (a run folder's latest checkpoint, or the folder itself)
    key = hashlib.sha256(f"{model_weights_hash(run, None)}|{spec}|{seed}|{presence.tobytes().hex()}".encode()).hexdigest()[:16]
    cache = work / f"reps-{key}.npz"
    if cache.exists():
        return np.load(cache)["reps"]
    options, guidance, interval = parse_sampling(spec)
    gen = NASDMGenerator.from_pretrained(run, SHIPPED_PATCH, dtype="auto")
    reps = []
    t0 = time.perf_counter()
    for s in tqdm(range(0, len(presence), batch), desc=f"sample {run.name} {spec}", leave=False):
        reps.append(gen.sample_mask_representations(presence[s:s + batch], sampling=options, guidance=guidance,
                                                    seed=seed, sample_offset=s,
                                                    guidance_interval=interval).cpu().numpy())
    reps = np.concatenate(reps).astype(np.float16)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, reps=reps, seconds=time.perf_counter() - t0)
    tmp.replace(cache)
    return reps


def score(insts: np.ndarray, types: np.ndarray, presence: np.ndarray, real_stats: dict[str, np.ndarray],
          names: list[str], n_types: int) -> dict[str, float]:
    stats = nuclei_statistics(insts, types, n_types)
    real = mask_realism(stats, real_stats, names)
    per_type = type_control(presence > 0, types_present(types, n_types), names)
    ctrl = per_type["all"]
    big = np.percentile(real_stats["area"], 99)
    contact = contact_statistics(insts)
    return {"count": real["count"], "area": real["area"], "eccentricity": real["eccentricity"],
            "solidity": real["solidity"], "merged": float((stats["area"] > big).mean()) if len(stats["area"]) else 0.0,
            "nuclei_per_patch": float(stats["count"].mean()),
            # kept apart: touching nuclei as separate instances, and no oversized clumps of them
            "touching": float(contact["touching"].mean()) if len(contact["touching"]) else 0.0,
            "clustered": float((contact["cluster"] >= 3).mean()) if len(contact["cluster"]) else 0.0,
            "precision": ctrl["precision"], "recall": ctrl["recall"],
            # micro-averaged control is the common types'; the rare ones' recall is seen only per type
            **{f"recall/{name}": per_type[name]["recall"] for name in names}}


def round_trip_pq(inst: np.ndarray, types: np.ndarray, n_types: int, threshold: float) -> float:
    """Mean PQ of decode(encode(real mask)) against the real instances (patches with nuclei)."""
    from monai.metrics import compute_panoptic_quality

    pqs = []
    for i, t in zip(inst, types):
        if not i.any():
            continue
        d, _ = decode_mask(encode_mask(i, t, n_types), n_types, min_size=0, marker_threshold=threshold)
        pqs.append(float(compute_panoptic_quality(torch.from_numpy(d.astype(np.int64)),
                                                  torch.from_numpy(i.astype(np.int64)), remap=True)))
    return float(np.mean(pqs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--split", default="Train")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--runs", required=True, help="LABEL=PATH,... mask run or checkpoint folders")
    ap.add_argument("--num", type=int, default=128)
    ap.add_argument("--sampling", default="ddpm:50:1.5", help="SAMPLER:STEPS:GUIDANCE[:LOW-HIGH][,...]")
    ap.add_argument("--thresholds", default="0,0.5", help="decode_mask marker thresholds, comma-separated")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--require", default="", metavar="TYPE",
                    help="draw the requests only from patches holding this type (the control of a rare type)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--sheet", type=Path)
    ap.add_argument("--sheet-rows", default="", help="RUN@SAMPLING@tTHRESHOLD,... the sheet's columns (default: "
                    "every run at the first sampling and the last threshold)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    args.work.mkdir(parents=True, exist_ok=True)
    runs = {}
    for item in args.runs.split(","):
        label, _, path = item.partition("=")
        if not path or not Path(path).is_dir():
            sys.exit(f"Error: --runs item {item!r} is not LABEL=RUN_DIR with an existing folder")
        runs[label] = Path(path)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    store = PatchStore(args.store)
    table = store.type_table
    names, n_types = list(table.names), table.n_types
    idx = store.indices(args.split)
    real = store.read(idx, keys=("inst", "type"))
    real_stats = nuclei_statistics(real["inst"], real["type"], n_types)
    pool = np.arange(len(idx))
    if args.require:
        if args.require not in names:
            sys.exit(f"Error: --require {args.require!r} is not a type of {args.store}; valid: {', '.join(names)}")
        k = names.index(args.require) + 1
        pool = np.flatnonzero([(t == k).any() for t in real["type"]])
    pick = np.random.default_rng(args.seed).choice(pool, size=min(args.num, len(pool)), replace=False)
    presence = np.stack([type_presence(t, n_types) for t in real["type"][pick]]).astype(np.float32)
    out: dict[str, Any] = {"cpu": describe_machine(), "store": str(args.store), "split": args.split, "num": len(pick),
                           "real": {"nuclei_per_patch": float(real_stats["count"].mean())}, "rows": {},
                           "round_trip_pq": {}}
    # the same decoder on real masks: what a threshold costs where the channels are exact
    sub = pick[: min(len(pick), 64)]
    for th in thresholds:
        out["round_trip_pq"][str(th)] = round_trip_pq(real["inst"][sub], real["type"][sub], n_types, th)
    # the floor: the requested patches' own real masks against the whole split (128 draws of it)
    out["rows"]["real masks of the requests"] = score(real["inst"][pick], real["type"][pick], presence, real_stats,
                                                      names, n_types)
    decoded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for label, run in runs.items():
        for spec in args.sampling.split(","):
            reps = sample_reps(run, presence, spec, args.work, args.batch, args.seed)
            for th in thresholds:
                dec = [decode_mask(r.astype(np.float32), n_types, marker_threshold=th) for r in reps]
                insts, types = np.stack([d[0] for d in dec]), np.stack([d[1] for d in dec])
                row = f"{label}@{spec}@t{th:g}"
                out["rows"][row] = score(insts, types, presence, real_stats, names, n_types)
                decoded[row] = (insts, types)
                print(row, json.dumps({k: round(v, 3) for k, v in out["rows"][row].items()}), flush=True)
    print(f"\nCPU: {out['cpu']}; {len(pick)} requests from {args.split}; real nuclei per patch "
          f"{out['real']['nuclei_per_patch']:.2f}; round-trip PQ of real masks: {out['round_trip_pq']}\n")
    print("| run @ sampling @ threshold | W1 count | W1 area | W1 eccentricity | W1 solidity | merged | touching | "
          "clustered | nuclei/patch | precision | recall |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row, r in out["rows"].items():
        print(f"| {row} | {r['count']:.2f} | {r['area']:.1f} | {r['eccentricity']:.3f} | {r['solidity']:.3f} | "
              f"{r['merged']:.3f} | {r['touching']:.2f} | {r['clustered']:.3f} | {r['nuclei_per_patch']:.2f} | "
              f"{r['precision']:.2f} | {r['recall']:.2f} |")
    print("\nRecall per type (share of the requests asking for a type whose mask holds one):\n")
    print("| run @ sampling @ threshold | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for row, r in out["rows"].items():
        print(f"| {row} | " + " | ".join(f"{r[f'recall/{n}']:.2f}" for n in names) + " |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    if args.sheet:
        first = args.sampling.split(",")[0]
        rows = args.sheet_rows.split(",") if args.sheet_rows else [f"{lab}@{first}@t{thresholds[-1]:g}" for lab in runs]
        missing = [r for r in rows if r not in decoded]
        if missing:
            sys.exit(f"Error: --sheet-rows {', '.join(missing)} not scored; scored: {', '.join(decoded)}")
        write_sheet(args.sheet, real, pick, decoded, rows, table)


def write_sheet(path: Path, real: dict[str, np.ndarray], pick: np.ndarray, decoded: dict, rows: list[str],
                table: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nasdm_aug.viz import colour_mask

    cols = ["real (types asked)"] + rows
    n = min(8, len(pick))
    fig, axes = plt.subplots(n, len(cols), figsize=(1.9 * len(cols), 1.9 * n), squeeze=False)
    for i in range(n):
        panels = [colour_mask(real["inst"][pick[i]], real["type"][pick[i]], table)]
        panels += [colour_mask(decoded[r][0][i], decoded[r][1][i], table) for r in rows]
        for j, p in enumerate(panels):
            axes[i, j].imshow(p, interpolation="nearest")
            axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
            if i == 0:
                axes[0, j].set_title(cols[j].replace("@", "\n", 1), fontsize=7)
    fig.suptitle("generated masks for the types of the real patch on the left (same seeds per row)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
