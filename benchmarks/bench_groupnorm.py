"""Group-norm forward + backward on CPU: PyTorch's kernels against nasdm_aug.nets.norm.GroupNorm.

Run: ``.venv/bin/python benchmarks/bench_groupnorm.py [--threads 2] [--repeats 30]``.
Prints a markdown table for benchmarks/RESULTS.md ("bf16 group-norm backward"): median ms of one
forward + backward per shape, for nn.GroupNorm in fp32 and bf16 (NCHW and channels_last) and for
our float32 backward in bf16 channels_last (native forward), at every shape, all interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nasdm_aug.nets.norm import GroupNorm, _GroupNormFloatBackward


class _AlwaysFloatBackward(GroupNorm):
    """Our float32 backward at any channels per group (the shipped GroupNorm stops at 16)."""

    def forward(self, x):
        return _GroupNormFloatBackward.apply(x, self.weight, self.bias, self.num_groups, self.eps)


# [N, C, H, W], groups: the tiny preset's norms at 64 px (8 groups; 4, 8, 12 and 16 channels per
# group), and 32 groups as in the paper preset at 128 px (8 and 24 per group; 12 in between). From
# 16 per group on, GroupNorm hands over to PyTorch's own kernel; the table still times ours there.
SHAPES = [
    ((8, 32, 64, 64), 8), ((8, 64, 64, 64), 8), ((8, 96, 64, 64), 8), ((8, 128, 32, 32), 8),
    ((4, 256, 64, 64), 32), ((4, 384, 32, 32), 32), ((4, 768, 16, 16), 32),
]  # fmt: skip


def _variants(shape, groups):
    cl, nchw = torch.channels_last, torch.contiguous_format
    out = {}
    for name, dtype, fmt, cls in [
        ("fp32 NCHW", torch.float32, nchw, torch.nn.GroupNorm),
        ("fp32 NHWC", torch.float32, cl, torch.nn.GroupNorm),
        ("bf16 NCHW", torch.bfloat16, nchw, torch.nn.GroupNorm),
        ("bf16 NHWC", torch.bfloat16, cl, torch.nn.GroupNorm),
        ("ours bf16 NHWC", torch.bfloat16, cl, _AlwaysFloatBackward),
    ]:
        norm = cls(groups, shape[1])
        x = torch.randn(shape).to(dtype).contiguous(memory_format=fmt).requires_grad_()
        dy = torch.randn(shape).to(dtype).contiguous(memory_format=fmt)

        def run(norm=norm, x=x, dy=dy):
            x.grad = None
            norm(x).backward(dy)

        out[name] = run
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s); median ms of forward + backward")
    names = None
    for shape, groups in SHAPES:
        fns = _variants(shape, groups)
        if names is None:
            names = list(fns)
            print("| shape | groups | " + " | ".join(names) + " | native bf16 NHWC / ours |")
            print("|---|---|" + "---|" * (len(names) + 1))
        for fn in fns.values():
            fn()  # warm-up
        times: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(args.repeats):
            for n, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[n].append((time.perf_counter() - t0) * 1e3)
        med = {n: statistics.median(v) for n, v in times.items()}
        cells = " | ".join(f"{med[n]:.2f}" for n in names)
        print(f"| {list(shape)} | {groups} | {cells} | {med['bf16 NHWC'] / med['ours bf16 NHWC']:.2f}x |")


if __name__ == "__main__":
    main()
