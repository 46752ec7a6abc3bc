"""Synthesis speed: patches/s of the toy and `paper` models, batched classifier-free guidance
against two separate forwards, peak memory, and the cost of the paper's S2 bank.

    OMP_NUM_THREADS=1 python benchmarks/bench_synthesis.py --threads 1

Network evaluations (NFE) dominate sampling, so the `paper` preset (random weights; speed only) is
timed per guided NFE at batch 1 and 8 and extrapolated to its default step count; the toy model is
run end to end. Times are wall-clock on this machine, in one process, so ratios share conditions.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from nasdm_aug.generator import NASDMGenerator
from nasdm_aug.nets import build_model
from nasdm_aug.nets.presets import get_preset
from nasdm_aug.sampling import DEFAULT_SAMPLER, DEFAULT_STEPS, SamplerOptions, classifier_free_guidance

PAPER_S2 = 8639  # patches in the paper's S2 bank (NASDM Table 2)
PAPER_STEPS = 1000


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def guided_nfe_seconds(model: torch.nn.Module, batch: int, size: int, repeats: int) -> dict[str, float]:
    """Seconds of one guided network evaluation: batched [cond; null] against two forwards."""
    x = torch.randn(batch, 3, size, size)
    t = torch.full((batch,), 500)
    cond = torch.zeros(batch, model.config.cond_channels, size, size)
    cond[:, 0] = 1
    guided = classifier_free_guidance(model, 1.5)
    null = model.null_condition(cond)

    def batched():
        with torch.no_grad():
            guided(x, t, cond=cond)

    def separate():
        with torch.no_grad():
            model(x, t, cond=cond)
            model(x, t, cond=null)

    return {"batched": _time(batched, repeats), "separate": _time(separate, repeats)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-paper", action="store_true")
    ap.add_argument("--paper-batches", default="1,8", help="batch sizes timed for the paper preset")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out: dict = {"threads": args.threads, "sampler": DEFAULT_SAMPLER, "steps": DEFAULT_STEPS}

    gen = NASDMGenerator.from_pretrained("toy", device="cpu")
    masks = gen.generate_masks("all", 8, sampling=SamplerOptions(steps=10), seed=0)  # any valid masks will do for timing
    for batch in (1, 8):
        start = time.perf_counter()
        gen.generate_patches(masks[0][:batch], masks[1][:batch], batch_size=batch, seed=0)
        sec = time.perf_counter() - start
        out[f"toy_patches_per_s_b{batch}"] = batch / sec
    nfe = guided_nfe_seconds(gen.patch_model, 8, gen.patch_size, args.repeats)
    out["toy_guidance_batched_over_separate"] = nfe["separate"] / nfe["batched"]

    if not args.skip_paper:
        model = build_model(get_preset("patch", "paper")).eval()
        batches = [int(b) for b in args.paper_batches.split(",")]
        for batch in batches:
            nfe = guided_nfe_seconds(model, batch, 128, 1)
            out[f"paper_guided_nfe_seconds_b{batch}"] = nfe["batched"]
            out[f"paper_patches_per_s_b{batch}"] = batch / (nfe["batched"] * DEFAULT_STEPS)
            out[f"paper_guidance_batched_over_separate_b{batch}"] = nfe["separate"] / nfe["batched"]
        per_patch_nfe = out[f"paper_guided_nfe_seconds_b{batches[-1]}"] / batches[-1]
        out["paper_S2_hours_default"] = PAPER_S2 * DEFAULT_STEPS * per_patch_nfe / 3600
        out["paper_S2_hours_1000_steps"] = PAPER_S2 * PAPER_STEPS * per_patch_nfe / 3600
        out["paper_S2_nfe_default"] = PAPER_S2 * DEFAULT_STEPS
        out["paper_S2_nfe_1000_steps"] = PAPER_S2 * PAPER_STEPS
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}, indent=2))


if __name__ == "__main__":
    main()
