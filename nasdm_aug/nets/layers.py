"""U-Net building blocks after improved-diffusion's unet.py (Nichol & Dhariwal 2021) and SDM (Wang et al. 2022).

Timestep embedding, GroupNorm resblocks with time scale-shift (plain or SPADE-normalised),
resblock up/down sampling and multi-head self-attention on scaled_dot_product_attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nasdm_aug.nets.norm import GroupNorm
from nasdm_aug.nets.spade import SPADEGroupNorm

__all__ = ["timestep_embedding", "zero_module", "ResBlock", "AttentionBlock", "TimestepSequential"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in improved-diffusion.

    Args:
        t: timesteps [N].
        dim: embedding width.
        max_period: the longest wavelength.

    Returns:
        float32 [N, dim].
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters, so a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class _PlainNorm(GroupNorm):
    """GroupNorm with the (x, cond) call signature of SPADEGroupNorm; the condition is ignored."""

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)


def _norm(channels: int, groups: int, cond_channels: int, spade_hidden: int, affine: bool = True) -> nn.Module:
    if cond_channels:
        return SPADEGroupNorm(channels, cond_channels, groups, spade_hidden)
    return _PlainNorm(groups, channels, affine=affine)


class ResBlock(nn.Module):
    """Residual block with time scale-shift, optionally SPADE-normalised and up/down sampling.

    ``h = conv(act(norm1(x, c)))``; ``h = act(norm2(h, c) * (1 + scale) + shift)`` with
    ``(scale, shift) = Linear(emb)``; ``out = skip(x) + zero_conv(dropout(h))``. The second norm is
    affine-free for plain blocks (the time scale-shift is the affine), SPADE for conditioned ones.

    Args:
        channels: input channels.
        emb_channels: width of the time embedding.
        out_channels: output channels (default ``channels``).
        groups: GroupNorm groups.
        dropout: dropout before the last convolution.
        cond_channels: condition channels for SPADE norms; 0 for plain GroupNorm.
        spade_hidden: hidden width of the SPADE conv net.
        updown: ``"up"`` (nearest x2), ``"down"`` (average pool /2) or ``None``.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int | None = None,
        groups: int = 32,
        dropout: float = 0.0,
        cond_channels: int = 0,
        spade_hidden: int = 128,
        updown: str | None = None,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.updown = updown
        self.norm1 = _norm(channels, groups, cond_channels, spade_hidden)
        self.conv1 = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_channels, 2 * out_channels)
        self.norm2 = _norm(out_channels, groups, cond_channels, spade_hidden, affine=False)
        self.drop = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.updown == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.updown == "down":
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Args: x [N, C, H, W]; emb [N, E]; cond [N, K, H', W'] for SPADE blocks. Returns [N, C_out, H*, W*]."""
        # without autograd (sampling) every intermediate below is a fresh tensor no one else
        # holds, so the element-wise steps write in place: fewer passes and allocations
        inplace = not torch.is_grad_enabled()
        h = F.silu(self.norm1(x, cond), inplace=inplace)
        # resample after the first norm, as improved-diffusion does, so both paths see the new size
        h, x = self._resample(h), self._resample(x)
        h = self.conv1(h)
        scale, shift = self.emb_proj(F.silu(emb))[..., None, None].chunk(2, dim=1)
        h = self.norm2(h, cond)
        h = torch.addcmul(shift, h, 1 + scale, out=h) if inplace else torch.addcmul(shift, h, 1 + scale)  # time scale-shift
        h = self.conv2(self.drop(F.silu(h, inplace=inplace)))
        return h.add_(self.skip(x)) if inplace else self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the pixels, with a residual connection.

    Args:
        channels: feature channels C.
        head_channels: channels per head; C must be a multiple.
        groups: GroupNorm groups.
    """

    def __init__(self, channels: int, head_channels: int, groups: int = 32):
        super().__init__()
        self.heads = channels // head_channels
        self.norm = GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x [N, C, H, W]. Returns [N, C, H, W]."""
        n, c, hgt, wid = x.shape
        qkv = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, hgt * wid)
        # One copy to [3, N, heads, HW, d] makes q, k and v each contiguous in either memory layout.
        # Why: in NCHW the transposed views had a last-dim stride of HW, and CUDA's fused attention
        # kernels (flash, memory-efficient, cuDNN) need stride 1 there, so every call fell back to
        # the unfused math path, which writes the whole [HW, HW] attention matrix; the copy is of q,
        # k and v only.
        q, k, v = qkv.permute(1, 0, 2, 4, 3).contiguous().unbind(0)  # each [N, heads, HW, d]
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(n, c, hgt, wid)
        return x + self.proj(out)


class TimestepSequential(nn.Sequential):
    """A sequence that hands the time embedding and condition to the resblocks in it."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb, cond) if isinstance(layer, ResBlock) else layer(x)
        return x
