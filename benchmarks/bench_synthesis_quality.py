"""Does the sampling precision or memory layout change the synthetic patches? The same masks
and seeds sampled in float32 NCHW, float32 channels_last and bfloat16 channels_last, beside
float32 NCHW with other seeds (the run-to-run spread any change must stay within), each bank
scored as a user scores one.

    .venv/bin/python benchmarks/bench_synthesis_quality.py --model consep-cpu \\
        --masks consep.h5 --split R2 --num 96 --segmenter HOVERNET_RUN --work DIR \\
        [--seeds 3] [--bf16-seeds 1] [--steps 25 --guidance 1] [--json out.json]

Every bank is made by ``nasdm-aug synthesize`` and scored by ``nasdm-aug evaluate`` against the
real patches of ``--masks:--split`` (with ``--segmenter``: the instance-level fidelity criteria
too), the commands printed as they run; reruns reuse finished banks (``--resume``: refused if
made otherwise) and the reports made from the same bank, real split and segmenter.
Reported per bank: FID, KID, the fidelity criteria of the synthetic patches, and the mean absolute
pixel difference (0-255) to the float32 NCHW bank of the same seed. The question for each change
is whether it moves these numbers by more than another seed does: float32 NCHW with seeds
0..``--seeds``-1 give each metric's standard deviation over seeds, sigma, so a change of seed moves
a metric by sqrt(2) sigma (the standard deviation of the difference of two runs). The change (bf16
or channels_last minus float32 NCHW with the same seed, averaged over its seeds) is given as a
multiple of sigma; "held" where it is within the run-to-run change, at most sqrt(2) sigma.

Where bf16 is not native (no AVX512-BF16 / AMX, no CUDA) it is emulated: slow, but it rounds the
same operands to bf16 as a native run, so the quality measured holds there too (the products'
accumulation order may differ, far below bf16's rounding).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_recipe_sizes import _cpu  # noqa: E402

from nasdm_aug.data.store import PatchStore  # noqa: E402

REFERENCE = "float32-nchw"  # the path every change is compared with, one bank per seed
_SHORT = {"contiguous": "nchw", "channels_last": "channels_last"}


def variants(seeds: int, bf16_seeds: int) -> dict[str, tuple[str, str, int]]:
    """{bank name: (dtype, layout, seed)}: float32 NCHW for every seed, float32 channels_last for
    seed 0, bfloat16 channels_last for the first ``bf16_seeds`` seeds."""
    if seeds < 2 or not 1 <= bf16_seeds <= seeds:
        raise ValueError(f"need --seeds >= 2 and 1 <= --bf16-seeds <= --seeds, got {seeds}, {bf16_seeds}")
    out = {f"float32-nchw-seed{s}": ("float32", "contiguous", s) for s in range(seeds)}
    out["float32-channels_last-seed0"] = ("float32", "channels_last", 0)
    out.update({f"bfloat16-channels_last-seed{s}": ("bfloat16", "channels_last", s) for s in range(bf16_seeds)})
    return out


def _kind(row: dict) -> str:
    """The bank's dtype and layout without its seed, e.g. ``bfloat16-channels_last``."""
    return f"{row['dtype']}-{_SHORT[row['layout']]}"


def run(cmd: list[str], log: Path) -> float:
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.exit(f"Error: {cmd[1]} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - t0


def images(bank: Path) -> np.ndarray:
    with PatchStore(bank) as st:
        return st.read(np.arange(len(st)), keys=("image",))["image"].astype(np.int16)


def _evaluated(ev: Path, real: str, split: str, bank: Path, segmenter: str | None) -> bool:
    """A finished report of ``evaluate`` made with these inputs (else it is made again)."""
    try:
        cfg = json.loads((ev / "config.json").read_text())
        (ev / "metrics.json").stat()
    except (OSError, ValueError):
        return False
    same = (Path(cfg.get("real", "")).resolve() == Path(real).resolve() and cfg.get("real_split") == split
            and Path(cfg.get("synthetic", "")).resolve() == bank.resolve())
    return same and (Path(cfg["segmenter"]).resolve() if cfg.get("segmenter") else None) == (
        Path(segmenter).resolve() if segmenter else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="consep-cpu", help="a shipped model name, or the mask and patch run folders comma-separated")
    ap.add_argument("--masks", required=True, help="real PatchStore whose masks are sampled")
    ap.add_argument("--split", default="R2")
    ap.add_argument("--num", type=int, default=96, help="the split's first N patches")
    ap.add_argument("--segmenter", default=None, help="HoVerNet run not trained on --split (fidelity criteria)")
    ap.add_argument("--work", required=True)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=3, help="float32 NCHW seeds (the run-to-run spread)")
    ap.add_argument("--bf16-seeds", type=int, default=1, help="bfloat16 banks, for the first N of those seeds")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    try:
        banks = variants(args.seeds, args.bf16_seeds)
    except ValueError as e:
        sys.exit(f"Error: {e}")

    nasdm = str(Path(sys.executable).with_name("nasdm-aug"))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    with PatchStore(args.masks) as st:
        idx = st.indices(args.split)[: args.num]
    if len(idx) < args.num:
        sys.exit(f"Error: {args.masks}:{args.split} has {len(idx)} patches, fewer than --num {args.num}")
    out: dict = {"machine": {"cpu": _cpu(), "omp_threads": os.environ.get("OMP_NUM_THREADS", "")},
                 "model": args.model, "masks": f"{args.masks}:{args.split}", "n": int(len(idx)),
                 "steps": args.steps, "guidance": args.guidance, "banks": {}}
    ref_images: dict[int, np.ndarray] = {}
    for name, (dtype, layout, seed) in banks.items():
        bank = work / f"{name}.h5"
        cmd = [nasdm, "synthesize", *sum((["--model", m] for m in args.model.split(",")), []),
               "--masks", args.masks, "--indices", ",".join(str(int(i)) for i in idx),
               "--sampler", "ddpm", "--steps", str(args.steps), "--guidance", str(args.guidance),
               "--guidance-interval", "all",
               "--seed", str(seed), "--precision", {"float32": "fp32", "bfloat16": "bf16"}[dtype], "--layout", layout,
               "--batch-size", str(args.batch_size),
               "--device", "cpu", "--out", str(bank), "--resume"]
        reused = bank.exists()  # then synthesize --resume only checks it
        wall = run(cmd, work / f"{name}.synth.log")
        ev = work / f"eval-{name}"
        if not _evaluated(ev, args.masks, args.split, bank, args.segmenter):
            cmd = [nasdm, "evaluate", "--real", f"{args.masks}:{args.split}", "--synthetic", str(bank),
                   "--out", str(ev), "--overwrite", "--seed", "0"]
            if args.segmenter:
                cmd += ["--segmenter", args.segmenter]
            run(cmd, work / f"eval-{name}.log")
        m = json.loads((ev / "metrics.json").read_text())
        row = {"dtype": dtype, "layout": layout, "seed": seed, "synth_wall_s": None if reused else round(wall, 1),
               "fid": m["generative"]["fid"], "kid": m["generative"]["kid"]["mean"]}
        if m.get("fidelity"):
            row["fidelity"] = {k: v for k, v in m["fidelity"]["synthetic"].items() if isinstance(v, (int, float))}
        imgs = images(bank)
        if _kind(row) == REFERENCE:
            ref_images[seed] = imgs
        row["mean_abs_diff_vs_reference"] = float(np.abs(imgs - ref_images[seed]).mean())
        row["mean_abs_diff_vs_reference_seed0"] = float(np.abs(imgs - ref_images[0]).mean())
        out["banks"][name] = row
        print(name, json.dumps(row), flush=True)
    print(table(out))
    out["summary"] = summary(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


HELD_RATIO = float(np.sqrt(2))  # the standard deviation of a change of seed, in seed standard deviations
CRITERIA = ("dice", "boundary_f1", "type_accuracy", "missing_rate", "excess_rate", "score")


def _metrics(row: dict) -> dict[str, float]:
    m = {"FID": row["fid"], "KID x 10^3": 1e3 * row["kid"]}
    m.update({k: row["fidelity"][k] for k in CRITERIA if k in row.get("fidelity", {})})
    return m


def summary(out: dict) -> dict[str, dict]:
    """Per change (dtype-layout other than the reference): for each metric the mean over its seeds
    of (change minus float32 NCHW with the same seed), the float32 NCHW seed standard deviation,
    their ratio, and whether the change is held: within a change of seed (ratio <= sqrt(2))."""
    banks = out["banks"]
    ref = {row["seed"]: _metrics(row) for row in banks.values() if _kind(row) == REFERENCE}
    names = list(next(iter(ref.values())))
    std = {k: float(np.std([m[k] for m in ref.values()], ddof=1)) for k in names}
    res: dict[str, dict] = {}
    for kind in dict.fromkeys(_kind(r) for r in banks.values() if _kind(r) != REFERENCE):
        rows = [r for r in banks.values() if _kind(r) == kind]
        per = {}
        for k in names:
            d = float(np.mean([_metrics(r)[k] - ref[r["seed"]][k] for r in rows]))
            ratio = abs(d) / std[k] if std[k] else (0.0 if d == 0 else float("inf"))
            per[k] = {"change": d, "seed_std": std[k], "ratio": ratio, "held": ratio <= HELD_RATIO}
        res[kind] = {"seeds": [r["seed"] for r in rows], "metrics": per,
                     "mean_abs_diff": float(np.mean([r["mean_abs_diff_vs_reference"] for r in rows])),
                     "held": all(v["held"] for v in per.values())}
    return res


def table(out: dict) -> str:
    """The banks as a markdown table, then each change against the seed spread."""
    banks = out["banks"]
    names = list(_metrics(next(iter(banks.values()))))
    lines = ["| bank | mean abs diff to float32 NCHW, same seed / seed 0 (0-255) | " + " | ".join(names) + " |",
             "|---" * (len(names) + 2) + "|"]
    for name, row in banks.items():
        cells = [f"{v:.4g}" for v in _metrics(row).values()]
        lines.append(f"| {name} | {row['mean_abs_diff_vs_reference']:.4f} / {row['mean_abs_diff_vs_reference_seed0']:.2f} | "
                     + " | ".join(cells) + " |")
    summ = summary(out)
    seeds = sorted(r["seed"] for r in banks.values() if _kind(r) == REFERENCE)
    lines += ["", f"Change against float32 NCHW with the same seed (mean over its seeds), and that change as a multiple "
              f"of the float32 NCHW standard deviation over seeds {seeds}; held: within a change of seed "
              f"(at most {HELD_RATIO:.2f}):", "",
              "| change | seeds | " + " | ".join(names) + " | held |", "|---" * (len(names) + 3) + "|"]
    std = next(iter(summ.values()))["metrics"] if summ else {}
    lines.append("| (seed std) | | " + " | ".join(f"{std[k]['seed_std']:.3g}" for k in names) + " | |")
    for kind, s in summ.items():
        cells = [f"{m['change']:+.3g} ({m['ratio']:.2f})" for m in s["metrics"].values()]
        lines.append(f"| {kind} | {','.join(map(str, s['seeds']))} | " + " | ".join(cells)
                     + f" | {'yes' if s['held'] else 'no'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
