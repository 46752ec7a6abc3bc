"""Spatially-adaptive group normalisation on the patch condition (SPADE, Park et al. 2019; SDM, Wang et al. 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nasdm_aug.nets.norm import GroupNorm

__all__ = ["SPADEGroupNorm", "ConditionPyramid"]


class ConditionPyramid:
    """One forward pass's condition at every feature size, resized and cast once per size.

    A U-Net calls its SPADE norms dozens of times at three or four sizes; resizing (nearest) and
    casting (under autocast) the condition in each call repeats the same copies each time (copies
    were 18% of a bf16 CPU training step in our profile). The pyramid makes each size once, in the
    network's compute dtype (the autocast dtype where autocast is on) and memory format.

    With ``keep_modulation_bytes`` > 0 it also keeps each SPADE norm's modulation maps (1 + gamma
    and beta, a function of the condition and the weights only), up to that many bytes in all, so a
    pyramid reused across the steps of a sampling run computes them once instead of once per step
    (``DiffusionUNet.reuse_condition``).

    Args:
        cond: the full-size condition [N, K, H, W].
        dtype: dtype of the resized copies (default ``cond.dtype``).
        memory_format: ``torch.contiguous_format`` or ``torch.channels_last``.
        keep_modulation_bytes: budget for kept modulation maps (0: keep none).
    """

    def __init__(self, cond: torch.Tensor, dtype: torch.dtype | None = None,
                 memory_format: torch.memory_format = torch.contiguous_format, keep_modulation_bytes: int = 0) -> None:
        self.full = cond
        self.dtype = dtype or cond.dtype
        self.memory_format = memory_format
        self._sizes: dict[tuple[int, int], torch.Tensor] = {}
        self._budget = int(keep_modulation_bytes)
        self._modulation: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def at(self, size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """The condition at spatial ``size`` (H, W)."""
        size = (int(size[0]), int(size[1]))
        if size not in self._sizes:
            c = self.full if tuple(self.full.shape[-2:]) == size else F.interpolate(self.full, size=size, mode="nearest")
            self._sizes[size] = c.to(self.dtype).contiguous(memory_format=self.memory_format)
        return self._sizes[size]

    def scale_shift(self, norm: "SPADEGroupNorm", size: tuple[int, int] | torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        """``norm``'s modulation at ``size`` as (1 + gamma, beta), without gradients; kept for the
        next call while the budget lasts."""
        kept = self._modulation.get(id(norm))
        if kept is not None:
            return kept
        gamma, beta = norm.gamma_beta(norm.shared(self.at(size))).chunk(2, dim=1)
        pair = (1 + gamma, beta)
        nbytes = sum(t.numel() * t.element_size() for t in pair)
        if nbytes <= self._budget:
            self._modulation[id(norm)] = pair
            self._budget -= nbytes
        return pair


class _Modulate(torch.autograd.Function):
    """``normed * (1 + gamma) + beta`` where ``gb`` = [gamma, beta] stacked on the channels.

    The same function as ``addcmul(beta, normed, 1 + gamma)`` after ``gb.chunk(2)``, with a
    hand-written backward: autograd's would build the two halves of ``gb``'s gradient apart and
    ``cat`` them (3% of a CPU training step in our profile); here they are written in place into
    one buffer.
    """

    @staticmethod
    def forward(ctx, normed: torch.Tensor, gb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        gamma, beta = gb.chunk(2, dim=1)
        ctx.save_for_backward(normed, gb)
        return torch.addcmul(beta, normed, 1 + gamma)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # type: ignore[override]
        normed, gb = ctx.saved_tensors
        c = normed.shape[1]
        grad_normed = grad_gb = None
        if ctx.needs_input_grad[0]:
            grad_normed = torch.addcmul(grad, grad, gb[:, :c])  # grad * (1 + gamma)
        if ctx.needs_input_grad[1]:
            grad_gb = torch.empty_like(gb)
            torch.mul(grad, normed, out=grad_gb[:, :c])
            grad_gb[:, c:].copy_(grad)
        return grad_normed, grad_gb


class SPADEGroupNorm(nn.Module):
    """GroupNorm without affine parameters, modulated by a segmentation-like condition.

    ``out = norm(x) * (1 + gamma(c)) + beta(c)`` with ``c`` the condition resized (nearest) to the
    features, as in SDM's ``SPADEGroupNorm``. Gamma and beta come from one 3x3 convolution with
    ``2 * channels`` outputs instead of SDM's two convolutions: the same function, one kernel call.

    Args:
        channels: feature channels C.
        cond_channels: condition channels (1 + n_types + 1 for the patch condition).
        groups: GroupNorm groups; must divide ``channels``.
        hidden: channels of the shared conv layer (SDM: 128).
        eps: GroupNorm epsilon.
    """

    def __init__(self, channels: int, cond_channels: int, groups: int = 32, hidden: int = 128, eps: float = 1e-5):
        super().__init__()
        self.norm = GroupNorm(groups, channels, eps=eps, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(cond_channels, hidden, 3, padding=1), nn.ReLU())
        self.gamma_beta = nn.Conv2d(hidden, 2 * channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | ConditionPyramid) -> torch.Tensor:
        """Normalise ``x`` [N, C, H, W] and modulate it by ``cond`` [N, K, H', W'] (any H', W') or a pyramid."""
        if not torch.is_grad_enabled():
            # sampling: the modulation may be kept across steps, and the fresh normalised tensor
            # is modulated in place (one pass, no allocation; the same arithmetic as _Modulate)
            if isinstance(cond, ConditionPyramid):
                scale, beta = cond.scale_shift(self, x.shape[-2:])
            else:
                gamma, beta = self.gamma_beta(self.shared(_resized(cond, x))).chunk(2, dim=1)
                scale = 1 + gamma
            normed = self.norm(x)
            return torch.addcmul(beta, normed, scale, out=normed)
        c = cond.at(x.shape[-2:]) if isinstance(cond, ConditionPyramid) else _resized(cond, x)
        return _Modulate.apply(self.norm(x), self.gamma_beta(self.shared(c)))


def _resized(cond: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if cond.shape[-2:] != x.shape[-2:]:
        return F.interpolate(cond, size=x.shape[-2:], mode="nearest")
    return cond
