"""One diffusion U-Net backbone (improved-diffusion, Nichol & Dhariwal 2021) and NASDM's two configurations of it.

PatchUNet: SDM-style (Wang et al. 2022) SPADE norms on the patch condition in the middle and decoder.
MaskUNet: a linear map of the type-presence vector added to the time embedding (NASDM 3.1).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from nasdm_aug.nets.layers import AttentionBlock, ResBlock, TimestepSequential, timestep_embedding, zero_module
from nasdm_aug.nets.norm import GroupNorm, is_channels_last
from nasdm_aug.nets.presets import UNetConfig
from nasdm_aug.nets.spade import ConditionPyramid

__all__ = ["DiffusionUNet", "PatchUNet", "MaskUNet", "build_model"]


class DiffusionUNet(nn.Module):
    """The shared backbone: encoder, middle and decoder of resblocks with attention at set sizes.

    Subclasses decide how the condition enters (``spade``: middle and decoder resblocks take SPADE
    norms on a spatial condition) and implement ``forward(x, t, cond)`` and ``null_condition``.

    Args:
        config: the U-Net configuration.
        spade_channels: condition channels for SPADE norms in the middle and decoder; 0 for none.
    """

    def __init__(self, config: UNetConfig, spade_channels: int = 0):
        super().__init__()
        self.config = config
        self.cond_drop_prob = config.cond_drop_prob
        base, emb_dim = config.base_channels, 4 * config.base_channels
        self.time_embed = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        attn_ds = {config.image_size // r for r in config.attention_resolutions}
        common = dict(emb_channels=emb_dim, groups=config.norm_groups, dropout=config.dropout, spade_hidden=config.spade_hidden)

        def res(cin: int, cout: int, spade: bool, updown: str | None = None) -> ResBlock:
            return ResBlock(cin, out_channels=cout, cond_channels=spade_channels if spade else 0, updown=updown, **common)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, config.head_channels, config.norm_groups)

        # 1. encoder: plain resblocks (SDM keeps SPADE out of the encoder), resblock downsampling
        ch = base * config.channel_mults[0]
        first_in = config.in_channels + config.input_cond_channels
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(first_in, ch, 3, padding=1))])
        skips, ds = [ch], 1
        for level, mult in enumerate(config.channel_mults):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [res(ch, base * mult, spade=False)]
                ch = base * mult
                if ds in attn_ds:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepSequential(*layers))
                skips.append(ch)
            if level < len(config.channel_mults) - 1:
                self.input_blocks.append(TimestepSequential(res(ch, ch, spade=False, updown="down")))
                skips.append(ch)
                ds *= 2
        # 2. middle: resblock, attention, resblock, conditioned
        self.middle = TimestepSequential(res(ch, ch, spade=True), attn(ch), res(ch, ch, spade=True))
        # 3. decoder: conditioned resblocks on concatenated skips, resblock upsampling
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mults))):
            for i in range(config.num_res_blocks + 1):
                layers = [res(ch + skips.pop(), base * mult, spade=True)]
                ch = base * mult
                if ds in attn_ds:
                    layers.append(attn(ch))
                if level and i == config.num_res_blocks:
                    layers.append(res(ch, ch, spade=True, updown="up"))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))
        self.out = nn.Sequential(
            GroupNorm(config.norm_groups, ch), nn.SiLU(), zero_module(nn.Conv2d(ch, config.out_channels, 3, padding=1))
        )

    @contextlib.contextmanager
    def reuse_condition(self, max_bytes: int = 2 << 30) -> Iterator[None]:
        """Inside, a forward without gradients given the same condition tensor as an earlier one
        (the same object, unchanged) reuses that call's resized condition and SPADE modulation maps.

        The maps depend on the condition and the weights only, not on x or t, so a sampling run,
        which passes one condition at every step, computes them once instead of once per step. The
        kept maps take at most ``max_bytes`` (beyond it they are computed anew each call); they are
        dropped on exit, so weights changed after the block are never paired with stale maps. Do
        not change the weights inside it.
        """
        before, self._kept_conditions, self._kept_budget = getattr(self, "_kept_conditions", None), [], int(max_bytes)
        try:
            yield
        finally:
            self._kept_conditions = before

    def _pyramid(self, spatial: torch.Tensor, dtype: torch.dtype, fmt: torch.memory_format) -> ConditionPyramid:
        kept = getattr(self, "_kept_conditions", None)
        if kept is None or torch.is_grad_enabled():
            return ConditionPyramid(spatial, dtype, fmt)
        for cond, version, pyramid in kept:  # a few at most: guidance passes one or two conditions
            if cond is spatial and version == spatial._version and (pyramid.dtype, pyramid.memory_format) == (dtype, fmt):
                return pyramid
        # holding the tensor keeps its memory from being reused by another with the same address
        pyramid = ConditionPyramid(spatial, dtype, fmt, keep_modulation_bytes=self._kept_budget // 2)
        kept[:] = kept[-1:] + [(spatial, spatial._version, pyramid)]
        return pyramid

    def _unet(self, x: torch.Tensor, emb: torch.Tensor, spatial: torch.Tensor | None) -> torch.Tensor:
        """Run the backbone. x [N, C_in, H, W]; emb [N, 4 * base]; spatial [N, K, H, W] or None."""
        h = x
        if spatial is not None:
            fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
            if self.config.input_cond_channels:
                # the encoder sees the layout too; the same (possibly dropped) condition as SPADE's
                h = torch.cat([x, spatial.to(x.dtype)], dim=1).contiguous(memory_format=fmt)
            spatial = self._pyramid(spatial, _compute_dtype(x), fmt)
        hs = []
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle(h, emb, spatial)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, spatial)
        return self.out(h)

    def _embed_time(self, t: torch.Tensor, n: int) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(n)
        return self.time_embed(timestep_embedding(t, self.config.base_channels))

    def _drop_mask(self, n: int, device: torch.device) -> torch.Tensor | None:
        """Per-sample bool [N] of dropped conditions, only in training mode (torch.rand on ``device``)."""
        if not self.training or self.cond_drop_prob <= 0:
            return None
        return torch.rand(n, device=device) < self.cond_drop_prob

    def _check(self, x: torch.Tensor, cond: torch.Tensor, cond_shape: tuple[int, ...]) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected x of shape [N, {self.config.in_channels}, H, W], got {tuple(x.shape)}")
        if tuple(cond.shape) != cond_shape:
            raise ValueError(f"expected cond of shape {list(cond_shape)}, got {list(cond.shape)}")


class PatchUNet(DiffusionUNet):
    """The NASDM patch model: image [N, 3, H, W] given the patch condition [N, 1 + n_types + 1, H, W].

    The null condition is the all-zero map (never a real condition: a real one is one-hot, so its
    first 1 + n_types channels sum to 1 everywhere). Output [N, out_channels, H, W]: eps, then v.
    """

    def __init__(self, config: UNetConfig):
        if config.kind != "patch":
            raise ValueError(f"PatchUNet needs a config of kind 'patch', got {config.kind!r}")
        super().__init__(config, spade_channels=config.cond_channels)

    def null_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """The unconditional input for classifier-free guidance: zeros like ``cond``."""
        return torch.zeros_like(cond)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Args: x [N, C_in, H, W]; t [N] (or scalar); cond [N, n_types + 2, H, W]. Returns [N, C_out, H, W]."""
        self._check(x, cond, (x.shape[0], self.config.cond_channels, *x.shape[2:]))
        drop = self._drop_mask(x.shape[0], x.device)
        if drop is not None:
            cond = cond * (~drop).to(cond.dtype)[:, None, None, None]
        return self._unet(x, self._embed_time(t, x.shape[0]), cond.to(x.dtype))


class MaskUNet(DiffusionUNet):
    """The NASDM mask model: mask representation [N, C, H, W] given type presence [N, n_types].

    The null condition is a sentinel: every entry -1 (a real multi-hot vector is 0/1, and all-zero
    is a real "no nuclei" request). Rows equal to the sentinel, and rows dropped in training, take a
    learned null embedding in place of ``Linear(presence)`` before it joins the time embedding.
    """

    NULL_VALUE = -1.0

    def __init__(self, config: UNetConfig):
        if config.kind != "mask":
            raise ValueError(f"MaskUNet needs a config of kind 'mask', got {config.kind!r}")
        super().__init__(config, spade_channels=0)
        emb_dim = 4 * config.base_channels
        self.class_embed = nn.Linear(config.n_types, emb_dim)
        self.null_embed = nn.Parameter(torch.zeros(emb_dim))

    def null_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """The unconditional input for classifier-free guidance: the -1 sentinel like ``cond``."""
        return torch.full_like(cond, self.NULL_VALUE)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Args: x [N, C, H, W]; t [N] (or scalar); cond [N, n_types] multi-hot or sentinel. Returns [N, 2C, H, W]."""
        self._check(x, cond, (x.shape[0], self.config.n_types))
        is_null = (cond == self.NULL_VALUE).all(dim=1)
        drop = self._drop_mask(x.shape[0], x.device)
        if drop is not None:
            is_null = is_null | drop
        y = self.class_embed(cond.clamp(min=0).to(self.class_embed.weight.dtype))
        y = torch.where(is_null[:, None], self.null_embed.to(y.dtype), y)
        return self._unet(x, self._embed_time(t, x.shape[0]) + y, None)


def build_model(config: UNetConfig) -> DiffusionUNet:
    """Build the model a config describes: PatchUNet for kind "patch", MaskUNet for kind "mask"."""
    return PatchUNet(config) if config.kind == "patch" else MaskUNet(config)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the convolutions on ``x`` run in: the autocast dtype where autocast is on for its
    device type, else ``x.dtype``. A device type autocast does not know (``meta``, used to count
    parameters and FLOPs without memory) has no autocast, and torch raises when asked about it."""
    dev = x.device.type
    try:
        enabled = torch.is_autocast_enabled(dev)
    except RuntimeError:
        return x.dtype
    return torch.get_autocast_dtype(dev) if enabled else x.dtype
