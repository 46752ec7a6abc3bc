"""GroupNorm whose backward on CPU bf16/fp16 channels_last tensors runs in float32.

Why our own: PyTorch's CPU group-norm backward for a reduced-precision channels_last input is
several times slower than its float32 backward when a group holds fewer than 16 channels (4-12
in the ``tiny`` preset, 8 in the ``paper`` preset's 256-channel norms), e.g. 6.0 ms against
4.0 ms through float32 for [8, 64, 64, 64] in 8 groups on the 2-core dev box; from 16 channels per group on, the
detour through float32 no longer pays (benchmarks/RESULTS.md, "bf16 group-norm backward"). It
made group norm a fifth of a bf16 training step. Everywhere else (CUDA, float32, NCHW, 16 or more
channels per group, no grad) this is plain ``nn.GroupNorm``: the same parameters, state-dict keys
and forward values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GroupNorm", "is_channels_last"]

_REDUCED = (torch.bfloat16, torch.float16)
_CHUNK_ELEMENTS = 1 << 18  # elements per backward chunk: its float32 copies (x, grad, dx) stay within ~3 MB
_SLOW_BELOW = 16  # channels per group under which PyTorch's reduced-precision channels_last backward is the slow one


def is_channels_last(x: torch.Tensor) -> bool:
    """True for a 4-D tensor laid out channels_last (and not also plain contiguous, as 1x1 maps are)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class _GroupNormFloatBackward(torch.autograd.Function):
    """Native group norm forward in the input's dtype; backward with the native float32 kernel.

    The forward saves the input and the float32 statistics the native kernel returns. The backward
    casts the input and the incoming gradient to float32 (layout kept) a few samples at a time, so
    the float32 copies stay in cache (3.9 against 6.1 ms for [4, 256, 64, 64] when done in one go),
    runs ``native_group_norm_backward`` on each chunk and casts the input gradient back. The weight
    and bias gradients are summed over the chunks in float32, like the parameters.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, groups: int, eps: float):  # type: ignore[override]
        n, c = x.shape[:2]
        hw = x[0, 0].numel()
        y, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, n, c, hw, groups, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.groups = groups
        return y

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight, mean, rstd = ctx.saved_tensors
        n, c = x.shape[:2]
        hw = x[0, 0].numel()
        mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
                weight is not None and ctx.needs_input_grad[2]]  # fmt: skip
        w32 = None if weight is None else weight.float()
        dx = torch.empty_like(x) if mask[0] else None
        dw = torch.zeros(c, device=x.device) if mask[1] else None
        db = torch.zeros(c, device=x.device) if mask[2] else None
        step = max(1, _CHUNK_ELEMENTS // x[0].numel())
        for i in range(0, n, step):
            s = slice(i, i + step)
            k = x[s].shape[0]
            gx, gw, gb = torch.ops.aten.native_group_norm_backward(
                grad[s].float(), x[s].float(), mean[s].float(), rstd[s].float(), w32, k, c, hw, ctx.groups, mask
            )
            if dx is not None:
                dx[s] = gx
            if dw is not None:
                dw += gw
            if db is not None:
                db += gb
        if weight is not None:
            dw = None if dw is None else dw.to(weight.dtype)
            db = None if db is None else db.to(weight.dtype)
        return dx, dw, db, None, None


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that takes the float32 backward for CPU reduced-precision channels_last inputs
    with fewer than 16 channels per group.

    Args: as ``nn.GroupNorm`` (num_groups, num_channels, eps, affine).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.num_channels // self.num_groups < _SLOW_BELOW
            and x.device.type == "cpu"
            and x.dtype in _REDUCED
            and torch.is_grad_enabled()
            and (x.requires_grad or (self.affine and self.weight.requires_grad))
            and is_channels_last(x)
        ):
            return _GroupNormFloatBackward.apply(x, self.weight, self.bias, self.num_groups, self.eps)
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
