"""Why the consep-cpu recipe trains at 64 px: training throughput of the tiny mask and patch U-Nets
at 64 and 128 px (depth and attention follow the size, as ``train --preset`` resolves them).

Run: ``.venv/bin/python benchmarks/bench_recipe_sizes.py [--threads 2] [--steps 4]``.
Bare forward + hybrid-free MSE + backward + fused AdamW on random data, fp32 channels_last (the
recipe's layout), CoNSeP's 4 types; the first step is a warm-up and the best of the rest is shown.
Prints the CPU beside the numbers: compare ratios within one run, not across machines.
"""

from __future__ import annotations

import argparse
import time

import torch

from nasdm_aug.hardware import describe_machine
from nasdm_aug.nets import build_model, get_preset


def _cpu() -> str:
    """The machine beside the numbers (CPU model, torch CPU capability, bf16 native or not, torch)."""
    return describe_machine()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"CPU: {_cpu()}, {args.threads} threads")
    print("| model | px | batch | mults | params | s/step | samples/s |\n|---|---|---|---|---|---|---|")
    for kind, size, batch in (("mask", 64, 8), ("patch", 64, 8), ("mask", 128, 4), ("patch", 128, 4)):
        cfg = get_preset(kind, "tiny", image_size=size, n_types=4)
        model = build_model(cfg).train().to(memory_format=torch.channels_last)
        c = cfg.in_channels
        x = torch.randn(batch, c, size, size).to(memory_format=torch.channels_last)
        cond = (torch.randn(batch, cfg.cond_channels, size, size) if kind == "patch"
                else torch.rand(batch, cfg.cond_channels))
        t = torch.randint(0, 1000, (batch,))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            out = model(x, t, cond)
            loss = ((out[:, :c] - x) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        best = min(times[1:])
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"| {kind} | {size} | {batch} | {cfg.channel_mults} | {params:.2f} M | {best:.3f} | {batch / best:.1f} |")


if __name__ == "__main__":
    main()
