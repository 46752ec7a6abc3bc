"""Sampling time of the patch model with guidance at every step against guidance limited to an
interval of noise levels (``synthesize --guidance-interval``), in one run on one thread.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_guidance_interval.py --store consep.h5 \\
        [--model consep-cpu] [--split R2] [--num 16] [--steps 50] [--guidance 1.5] \\
        [--intervals all,0.28-5.42,0.28-20] [--repeats 2]

Each interval samples the same ``--num`` real masks of ``--split`` (ancestral DDPM, seed 0, batch 8),
the intervals alternating within each repeat so all see the same machine; the median repeat is
reported with the guided steps out of ``--steps`` and the time relative to ``all`` (guidance at
every step, the reference). The mean absolute pixel difference to ``all`` says how far the samples
moved (the quality itself is scored by ``ablate_patch_model.py --sampling``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="a real PatchStore at the model's scale (consep.h5)")
    ap.add_argument("--model", default="consep-cpu", help="shipped model name or patch run directory")
    ap.add_argument("--split", default="R2")
    ap.add_argument("--num", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=1.5)
    ap.add_argument("--intervals", default="all,0.28-5.42,0.28-20", help="'all' or LOW-HIGH, comma-separated")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()

    from nasdm_aug.data.store import PatchStore
    from nasdm_aug.diffusion.respace import respace
    from nasdm_aug.generator import NASDMGenerator
    from nasdm_aug.hardware import describe_machine
    from nasdm_aug.sampling import SamplerOptions, guided_timesteps

    torch.set_num_threads(1)
    intervals = [None if s == "all" else tuple(float(v) for v in s.split("-")) for s in args.intervals.split(",")]
    if intervals[0] is not None:
        raise SystemExit("Error: the first --intervals entry must be 'all' (the reference)")
    gen = NASDMGenerator.from_pretrained(args.model, device="cpu", dtype=args.precision)
    with PatchStore(args.store) as st:
        idx = st.indices(args.split)[: args.num]
        masks = st.read(idx, keys=("inst", "type"))
    opts = SamplerOptions("ddpm", steps=args.steps)
    spaced = respace(gen._diffusion["patch"], args.steps, spacing=opts.spacing)
    kept = spaced.timestep_map.numpy()
    print(describe_machine(), f"| torch threads {torch.get_num_threads()} | precision {gen.dtype}", flush=True)

    times: dict[int, list[float]] = {i: [] for i in range(len(intervals))}
    images: dict[int, np.ndarray] = {}
    gen.generate_patches(masks["inst"][:8], masks["type"][:8], sampling=SamplerOptions("ddpm", steps=2))  # warm-up
    for _ in range(args.repeats):
        for i, interval in enumerate(intervals):
            t0 = time.perf_counter()
            images[i] = gen.generate_patches(masks["inst"], masks["type"], sampling=opts, guidance=args.guidance,
                                             seed=0, batch_size=8, guidance_interval=interval)
            times[i].append(time.perf_counter() - t0)
    ref = statistics.median(times[0])
    print(f"{len(idx)} {args.split} masks, DDPM {args.steps}, guidance {args.guidance}, median of {args.repeats}")
    print("| guidance interval | guided steps | s / patch | time against every step | mean abs. pixel diff. |")
    print("|---|---|---|---|---|")
    for i, interval in enumerate(intervals):
        guided = int(guided_timesteps(gen._diffusion["patch"].alphas_cumprod, interval)[kept].sum())
        med = statistics.median(times[i])
        diff = float(np.abs(images[i].astype(int) - images[0].astype(int)).mean())
        label = "every step" if interval is None else f"({interval[0]:g}, {interval[1]:g}]"
        print(f"| {label} | {guided} / {args.steps} | {med / len(idx):.3f} | {med / ref:.2f} | {diff:.2f} |", flush=True)


if __name__ == "__main__":
    main()
