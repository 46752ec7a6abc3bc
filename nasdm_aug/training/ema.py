"""Exponential moving average of model weights (decay 0.999 in NASDM, Shrivastava & Fletcher 2023,
after improved DDPM's ``update_ema``)."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """A shadow copy of a model whose weights track ``decay * ema + (1 - decay) * model``.

    Written here rather than with ``torch.optim.swa_utils.AveragedModel`` because that class copies
    the weights on its first update instead of averaging, keeps an ``n_averaged`` buffer that must
    be restored for an exact resume, and prefixes its state dict with ``module.``; the shadow here
    is a plain module of the same class, so its state dict loads straight into a fresh model.

    Create it after the model is on its device and memory format: ``Module.to`` replaces buffer
    tensors, and the EMA holds the tensors it found.

    With ``warmup``, update ``n`` (counted from 0) uses ``min(decay, (1 + n) / (10 + n))``, the
    warm-up of TensorFlow's ``ExponentialMovingAverage(num_updates=...)``: the average forgets the
    random initial weights within a few hundred steps instead of holding ``decay ** n`` of them
    (37% after 1,000 steps at 0.999), which matters for short runs. Off by default (the paper's
    plain rate).

    Args:
        model: the trained model (unwrapped, not DDP); copied once at construction.
        decay: weight of the old average per update, in [0, 1).
        warmup: ramp the decay up with the update count (above).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = False) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self._pairs = self._float_pairs(model)

    def _float_pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        src = dict(model.state_dict(keep_vars=True))
        dst = dict(self.module.state_dict(keep_vars=True))
        if src.keys() != dst.keys():
            raise ValueError("EMA: the model's state dict keys differ from the shadow's")
        keys = [k for k, v in dst.items() if v.is_floating_point()]
        return [dst[k] for k in keys], [src[k] for k in keys]

    def decay_at(self, n: int) -> float:
        """The decay of update number ``n`` (0-based)."""
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, n: int = 0) -> None:
        """One step: ``ema <- ema + (1 - d) * (model - ema)`` over every float tensor, ``d = decay_at(n)``.

        Args:
            n: the update's number (the trainer passes its step), used only with ``warmup``.

        Integer buffers (counters) are left at the copy's values; nets here have none.
        """
        shadow, live = self._pairs
        torch._foreach_lerp_(shadow, live, 1.0 - self.decay_at(n))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow model's state dict (keys as the model's own)."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load shadow weights saved by :meth:`state_dict` (strict)."""
        self.module.load_state_dict(state, strict=True)
