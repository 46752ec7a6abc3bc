"""Does the sampling precision or memory layout change the synthetic patches? The same masks
and seeds sampled in float32 NCHW, float32 channels_last and bfloat16 channels_last, beside
float32 NCHW with two other seeds (the run-to-run spread any change must stay within), each bank
scored as a user scores one.

    .venv/bin/python benchmarks/bench_synthesis_quality.py --model consep-cpu \\
        --masks consep.h5 --split R2 --num 96 --segmenter HOVERNET_RUN --work DIR \\
        [--steps 25 --guidance 1] [--json out.json]

Every bank is made by ``nasdm-aug synthesize`` and scored by ``nasdm-aug evaluate`` against the
real patches of ``--masks:--split`` (with ``--segmenter``: the instance-level fidelity criteria
too), the commands printed as they run; reruns reuse finished banks (``--resume``: refused if
made otherwise) and the reports made from the same bank, real split and segmenter.
Reported per bank: FID, KID, the fidelity criteria of the synthetic patches, and the mean absolute
pixel difference (0-255) to the float32 NCHW bank of seed 0. The question for each change is
whether it moves these numbers by more than other seeds do (float32 NCHW, seeds 1 and 2): the
table gives each change as a share of the largest seed change.

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

VARIANTS = {  # name: (dtype, layout, seed)
    "float32-nchw-seed0": ("float32", "contiguous", 0),
    "float32-channels_last-seed0": ("float32", "channels_last", 0),
    "bfloat16-channels_last-seed0": ("bfloat16", "channels_last", 0),
    "float32-nchw-seed1": ("float32", "contiguous", 1),
    "float32-nchw-seed2": ("float32", "contiguous", 2),
}
REFERENCE = "float32-nchw-seed0"


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
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

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
    ref_images = None
    for name, (dtype, layout, seed) in VARIANTS.items():
        bank = work / f"{name}.h5"
        cmd = [nasdm, "synthesize", *sum((["--model", m] for m in args.model.split(",")), []),
               "--masks", args.masks, "--indices", ",".join(str(int(i)) for i in idx),
               "--sampler", "ddpm", "--steps", str(args.steps), "--guidance", str(args.guidance),
               "--seed", str(seed), "--dtype", dtype, "--layout", layout, "--batch-size", str(args.batch_size),
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
        if name == REFERENCE:
            ref_images = imgs
        row["mean_abs_diff_vs_reference"] = float(np.abs(imgs - ref_images).mean())
        out["banks"][name] = row
        print(name, json.dumps(row), flush=True)
    print(table(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


CRITERIA = ("dice", "boundary_f1", "type_accuracy", "missing_rate", "excess_rate", "score")


def table(out: dict) -> str:
    """The banks as a markdown table, each number beside its change from the reference bank; for
    a change of precision or layout also that change as a fraction of the largest change another
    seed made (float32 NCHW, seeds 1 and 2)."""
    banks = out["banks"]
    ref = banks[REFERENCE]
    seeds = [row for name, row in banks.items() if name.startswith("float32-nchw-seed") and name != REFERENCE]

    def metrics(row: dict) -> dict[str, float]:
        m = {"FID": row["fid"], "KID x 10^3": 1e3 * row["kid"]}
        m.update({k: row["fidelity"][k] for k in CRITERIA if k in row.get("fidelity", {})})
        return m

    names = list(metrics(ref))
    lines = ["| bank | mean abs diff (0-255) | " + " | ".join(names) + " |",
             "|---" * (len(names) + 2) + "|"]
    spread = {k: max(abs(metrics(r)[k] - metrics(ref)[k]) for r in seeds) for k in names}
    for name, row in banks.items():
        cells = []
        for k, v in metrics(row).items():
            d = v - metrics(ref)[k]
            if name == REFERENCE:
                cells.append(f"{v:.4g}")
            elif row in seeds:
                cells.append(f"{v:.4g} ({d:+.3g})")
            else:
                share = f", {abs(d) / spread[k]:.0%}" if spread[k] else ""
                cells.append(f"{v:.4g} ({d:+.3g}{share})")
        lines.append(f"| {name} | {row['mean_abs_diff_vs_reference']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
