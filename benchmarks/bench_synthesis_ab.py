"""Synthesis speed of this checkout against another commit's, in one run: each side samples the
same patches in its own process, the two alternating, so both see the same machine.

    git worktree add /tmp/base <commit>
    OMP_NUM_THREADS=1 python benchmarks/bench_synthesis_ab.py --base-tree /tmp/base \\
        [--base-layout contiguous] [--batches 1,8,32] [--steps 20] [--repeats 3] [--model toy]
        [--dtype float32|bfloat16]

The embedded toy models (64 px; ``--model consep-cpu`` for the real-tissue ones, which both
commits must ship), ancestral DDPM, guidance 1.5, patches for fixed generated masks
(made by this checkout, handed to both sides). Each side loads its own ``nasdm_aug`` (checked),
warms up on one batch and times ``generate_patches``; the median repeat is reported with the mean
absolute pixel difference between the two sides' patches (same seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, sys, time
tree, layout, batch, steps, masks, out, model, dtype = sys.argv[1:9]
sys.path.insert(0, tree)
import numpy as np, torch
torch.set_num_threads(1)
import nasdm_aug
assert nasdm_aug.__file__.startswith(tree), nasdm_aug.__file__
from nasdm_aug.generator import NASDMGenerator
from nasdm_aug.sampling import SamplerOptions
kw = {} if layout == "default" else {"layout": layout}
if dtype != "default":  # this side: always explicit, whatever this checkout's default is
    kw["dtype"] = getattr(torch, dtype)
gen = NASDMGenerator.from_pretrained(model, device="cpu", **kw)
m = np.load(masks)
inst, typ, batch = m["inst"][: int(batch)], m["type"][: int(batch)], int(batch)
opts = SamplerOptions(steps=int(steps))
gen.generate_patches(inst[:1], typ[:1], sampling=SamplerOptions(steps=1), guidance=1.5)  # warm-up
t0 = time.perf_counter()
img = gen.generate_patches(inst, typ, sampling=opts, guidance=1.5, batch_size=batch, seed=0)
sec = time.perf_counter() - t0
np.save(out, img)
print(json.dumps({"seconds": sec, "layout": getattr(gen, "layout", "contiguous")}))
"""


def _side(tree: str, layout: str, batch: int, steps: int, masks: str, out: str, model: str, dtype: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    res = subprocess.run([sys.executable, "-c", _CHILD, tree, layout, str(batch), str(steps), masks, out, model, dtype],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-tree", required=True, help="a checkout (git worktree) of the commit to compare with")
    ap.add_argument("--base-layout", default="contiguous",
                    help="layout of the base side (contiguous: NCHW; default: that commit's default)")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="toy", help="the shipped model both sides sample with")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="this side's sampling dtype (the base side samples in its default, float32 before "
                         "the 'auto' default); bfloat16 is only "
                         "meaningful where it is native (the machine line says)")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from nasdm_aug.generator import NASDMGenerator
    from nasdm_aug.hardware import describe_machine
    from nasdm_aug.sampling import SamplerOptions

    base_commit = subprocess.run(["git", "-C", args.base_tree, "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip()
    this_commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip()
    print(f"machine: {describe_machine()}; threads {os.environ.get('OMP_NUM_THREADS', '1')} per side; "
          f"model {args.model}, {args.steps} steps, guidance 1.5; base {base_commit} ({args.base_layout}, float32), "
          f"this {this_commit} (default layout, {args.dtype})")
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        masks = os.path.join(tmp, "masks.npz")
        inst, typ = NASDMGenerator.from_pretrained(args.model, device="cpu").generate_masks(
            "all", max(batches), sampling=SamplerOptions(steps=10), seed=0)
        np.savez(masks, inst=inst, type=typ)
        rows = []
        for batch in batches:
            times: dict[str, list[float]] = {"base": [], "this": []}
            for _ in range(args.repeats):
                for side, tree, layout, dtype in (("base", args.base_tree, args.base_layout, "default"),
                                                  ("this", str(HERE), "default", args.dtype)):
                    r = _side(tree, layout, batch, args.steps, masks, os.path.join(tmp, f"{side}.npy"), args.model, dtype)
                    times[side].append(r["seconds"])
            diff = float(np.abs(np.load(os.path.join(tmp, "base.npy")).astype(float)
                                - np.load(os.path.join(tmp, "this.npy")).astype(float)).mean())
            b, t = statistics.median(times["base"]), statistics.median(times["this"])
            rows.append({"batch": batch, "base_patches_per_s": batch / b, "this_patches_per_s": batch / t,
                         "speedup": b / t, "mean_abs_diff": diff, "base_s": times["base"], "this_s": times["this"]})
    print("| batch | base patches/s | this patches/s | speed-up | mean abs diff (same seeds) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['base_patches_per_s']:.3f} | {r['this_patches_per_s']:.3f} | {r['speedup']:.2f}x | "
              f"{r['mean_abs_diff']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": describe_machine(), "model": args.model, "base": base_commit, "this": this_commit,
                                               "this_dtype": args.dtype,
                                               "steps": args.steps, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
