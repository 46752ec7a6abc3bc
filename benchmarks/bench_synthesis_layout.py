"""Synthesis for every combination of dtype, layout, compile and batch: patches/s as ratios against
the float32 NCHW eager path in the same run, the achieved GFLOP/s against the same run's conv
ceiling, and how far the samples move (same seeds); then guidance as one batched forward against two.

    OMP_NUM_THREADS=1 python benchmarks/bench_synthesis_layout.py --threads 1 [--bf16] [--compile]
        [--batches 1,8,32] [--steps 50] [--model toy|consep-cpu|preset:NAME] [--json out.json]

The embedded toy models (64 px) by default, or another shipped model, or (``preset:NAME``, e.g.
``preset:paper``) a patch model of that preset with random weights at its own patch size (speed and
GFLOP/s only: the quality columns and the guidance comparison are skipped). Ancestral DDPM,
guidance 1.5, patches for fixed generated masks (the toy mask model's, enlarged to the patch size).
Each configuration is timed in interleaved repeats (median). Quality: the mean absolute pixel
difference (0-255) against float32 NCHW with the same seeds, beside the same difference between two
float32 NCHW runs with different seeds (what any change of noise moves). bf16 runs only with
--bf16: where it is emulated (no AVX512-BF16 / AMX) it is slow, and its speed there says nothing
about a machine that runs it natively. --compile adds torch.compile rows for each dtype in
channels_last (compiled before timing, once per batch shape: minutes each on a CPU). GFLOP/s counts
the FLOPs the network executes (torch.utils.flop_counter), two forwards per guided step, over the
sampling time, against the larger of two ceiling measurements (before and after the timings);
eager sampling computes the SPADE maps once per batch, so its later steps count less.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_nets import _conv_ceiling  # noqa: E402

from nasdm_aug.data.masks import patch_condition_torch  # noqa: E402
from nasdm_aug.generator import NASDMGenerator  # noqa: E402
from nasdm_aug.hardware import describe_machine  # noqa: E402
from nasdm_aug.nets.presets import get_preset  # noqa: E402
from nasdm_aug.nets.unet import build_model  # noqa: E402
from nasdm_aug.sampling import SamplerOptions, classifier_free_guidance, sample  # noqa: E402

GUIDANCE = 1.5


def _generator(model: str, layout: str, dtype: torch.dtype, compile: bool) -> NASDMGenerator:
    """A shipped model, or (``preset:NAME``) the toy's type table and diffusion with a patch model of
    that preset and random weights (seeded, so every layout and dtype gets the same weights)."""
    if not model.startswith("preset:"):
        return NASDMGenerator.from_pretrained(model, device="cpu", layout=layout, dtype=dtype, compile=compile)
    toy = NASDMGenerator.from_pretrained("toy", device="cpu")
    cfg = get_preset("patch", model.split(":", 1)[1], n_types=toy.type_table.n_types)
    torch.manual_seed(0)
    return NASDMGenerator(build_model(cfg), replace(toy.patch_config, model=cfg), toy.type_table, device="cpu",
                          dtype=dtype, layout=layout, compile=compile)


def _masks(model: str, gen: NASDMGenerator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` valid masks at ``gen``'s patch size: the mask model's, or the toy's enlarged."""
    source = gen if gen.mask_model is not None else NASDMGenerator.from_pretrained("toy", device="cpu")
    inst, types = source.generate_masks("all", n, sampling=SamplerOptions(steps=10), seed=0)
    k = gen.patch_size // inst.shape[-1]
    if k > 1:
        inst, types = (a.repeat(k, axis=-2).repeat(k, axis=-1) for a in (inst, types))
    return inst, types


def _run(gen: NASDMGenerator, masks, batch: int, steps: int, seed: int = 0) -> tuple[float, np.ndarray]:
    inst, types = masks[0][:batch], masks[1][:batch]
    start = time.perf_counter()
    out = gen.generate_patches(inst, types, batch_size=batch, seed=seed, sampling=SamplerOptions(steps=steps),
                               guidance=GUIDANCE)
    return time.perf_counter() - start, out


def _forward_flops(gen: NASDMGenerator, masks, reuse: bool) -> float:
    """FLOPs one patch-model forward executes for one sample: a whole forward, or (``reuse``) a
    later step of a sampling run, whose SPADE maps were kept from the first (eager sampling)."""
    cond = patch_condition_torch(torch.from_numpy(masks[0][:1].astype(np.int64)),
                                 torch.from_numpy(masks[1][:1].astype(np.int64)), gen.type_table.n_types)
    x = torch.randn(1, 3, gen.patch_size, gen.patch_size)
    with torch.no_grad(), gen.patch_model.reuse_condition():
        if reuse:
            gen.patch_model(x, torch.tensor([10]), cond=cond)
        with FlopCounterMode(display=False) as fc:
            gen.patch_model(x, torch.tensor([10]), cond=cond if reuse else cond.clone())
    return float(fc.get_total_flops())


def _guidance_passes(gen: NASDMGenerator, masks, batch: int, steps: int, repeats: int) -> dict[str, float]:
    """Seconds per patch of guided sampling as one batched forward and as two forwards, sampled as the
    generator samples: the SPADE maps kept across steps (``reuse_condition``), in its dtype."""
    cond = patch_condition_torch(torch.from_numpy(masks[0][:batch].astype(np.int64)),
                                 torch.from_numpy(masks[1][:batch].astype(np.int64)), gen.type_table.n_types)
    cond = cond.contiguous(memory_format=torch.channels_last)
    diffusion = gen.patch_config.diffusion.build()
    times: dict[str, list[float]] = {"batched": [], "two forwards": []}
    for _ in range(repeats):
        for name in times:
            guided = classifier_free_guidance(gen.patch_model, GUIDANCE, batched=name == "batched")

            def model_fn(x, t, cond):
                return guided(x.contiguous(memory_format=torch.channels_last), t, cond=cond)
            t0 = time.perf_counter()
            with gen.patch_model.reuse_condition(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                                   enabled=gen.dtype == torch.bfloat16):
                sample(model_fn, (batch, 3, gen.patch_size, gen.patch_size), {"cond": cond}, diffusion=diffusion,
                       options=SamplerOptions(steps=steps), seed=0, device=torch.device("cpu"))
            times[name].append((time.perf_counter() - t0) / batch)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--steps", type=int, default=50, help="sampler steps per patch")
    ap.add_argument("--bf16", action="store_true", help="also time and compare bf16 autocast")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (channels_last)")
    ap.add_argument("--model", default="toy", help="a shipped model, or preset:NAME (random weights, speed only)")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    machine = describe_machine()
    speed_only = args.model.startswith("preset:")
    print(f"machine: {machine}; threads {args.threads}; model {args.model}; {args.steps} steps, guidance {GUIDANCE}")
    dtypes = [torch.float32] + ([torch.bfloat16] if args.bf16 else [])
    keys = [(layout, dt, False) for layout in ("contiguous", "channels_last") for dt in dtypes]
    keys += [("channels_last", dt, True) for dt in dtypes] if args.compile else []
    gens = {k: _generator(args.model, *k) for k in keys}
    ref_key = ("contiguous", torch.float32, False)
    ref = gens[ref_key]
    batches = [int(b) for b in args.batches.split(",")]
    masks = _masks(args.model, ref, max(batches))  # any valid masks do
    # guided: two forwards per step; eager sampling makes the SPADE maps at its first step only,
    # compiled sampling at every step
    full, later = _forward_flops(ref, masks, reuse=False), _forward_flops(ref, masks, reuse=True)
    flops_per_patch = {False: 2 * (full + (args.steps - 1) * later), True: 2 * args.steps * full}
    def ceiling() -> dict:
        return {dt: _conv_ceiling(32, "bf16" if dt == torch.bfloat16 else "fp32", 5) for dt in dtypes}

    before = ceiling()  # and again after the timings: this box's speed drifts, and the larger one counts
    for key, gen in gens.items():  # compile outside the timing (once per batch shape)
        if key[2]:
            for batch in batches:
                t0 = time.perf_counter()
                _run(gen, masks, batch, steps=1)
                print(f"compiled {key[0]} {key[1]} for batch {batch} in {time.perf_counter() - t0:.0f} s")
    rows = []
    for batch in batches:
        times: dict = {k: [] for k in gens}
        outs: dict = {}
        for _ in range(args.repeats):  # interleaved, so drift of the machine hits every configuration alike
            for key, gen in gens.items():
                if key[1] == torch.bfloat16 and times[key] and "bf16 emulated" in machine:
                    continue  # emulated bf16 is slow: timed once
                sec, out = _run(gen, masks, batch, args.steps)
                times[key].append(sec)
                outs[key] = out
        base = statistics.median(times[ref_key])
        base_img = outs[ref_key].astype(np.float64)
        spread = float("nan")
        if not speed_only:
            _, other_seed = _run(ref, masks, batch, args.steps, seed=1)
            spread = float(np.abs(other_seed.astype(np.float64) - base_img).mean())
        for key in gens:
            sec = statistics.median(times[key])
            gflops = batch / sec * flops_per_patch[key[2]] / 1e9
            rows.append({"batch": batch, "layout": key[0], "dtype": str(key[1]).replace("torch.", ""),
                         "compile": key[2], "patches_per_s": batch / sec, "speedup": base / sec, "gflops": gflops,
                         "mean_abs_diff": float(np.abs(outs[key].astype(np.float64) - base_img).mean()),
                         "seed_spread": spread, "repeats": len(times[key])})
    after = ceiling()
    ceilings = {dt: max(before[dt], after[dt]) for dt in dtypes}
    for r in rows:
        r["ceiling_gflops"] = ceilings[getattr(torch, r["dtype"])]
    print("conv ceiling (3x3 64->64, 32 px), before / after the timings: "
          + ", ".join(f"{str(d).replace('torch.', '')} {before[d]:.1f} / {after[d]:.1f} GFLOP/s" for d in dtypes)
          + f"; network GFLOP per patch: {flops_per_patch[False] / 1e9:.1f} eager (SPADE maps kept), "
          f"{flops_per_patch[True] / 1e9:.1f} compiled")
    print("| batch | layout | dtype | compile | patches/s | vs fp32 NCHW eager | GFLOP/s (% of ceiling) "
          "| mean abs diff (same seeds) | other seed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['layout']} | {r['dtype']} | {'yes' if r['compile'] else 'no'} | "
              f"{r['patches_per_s']:.3f} | {r['speedup']:.2f}x | {r['gflops']:.1f} "
              f"({100 * r['gflops'] / r['ceiling_gflops']:.0f}%) | {r['mean_abs_diff']:.3f} | {r['seed_spread']:.2f} |")
    passes = {}
    if not speed_only:
        gb = min(8, max(batches))
        passes = _guidance_passes(gens[("channels_last", torch.float32, False)], masks, gb, args.steps, args.repeats)
        print(f"guidance at batch {gb}, channels_last float32: one batched forward {passes['batched'] * 1e3:.0f} ms "
              f"per patch, two forwards {passes['two forwards'] * 1e3:.0f} ms "
              f"({passes['two forwards'] / passes['batched']:.2f}x)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine, "threads": args.threads, "model": args.model, "steps": args.steps,
                       "gflop_per_patch": {str(k): v / 1e9 for k, v in flops_per_patch.items()}, "ceilings":
                       {str(d): c for d, c in ceilings.items()},
                       "ceilings_before_after": {str(d): [before[d], after[d]] for d in dtypes}, "rows": rows, "guidance_passes": passes}, fh, indent=2)


if __name__ == "__main__":
    main()
