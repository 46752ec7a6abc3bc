"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper that turns a conditional model into
a guided ``model_fn``; the null condition belongs to the model (cf. lucidrains' cond_drop_prob)."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

__all__ = ["classifier_free_guidance", "check_guidance_interval", "guided_timesteps"]


def check_guidance_interval(interval: Any) -> tuple[float, float] | None:
    """``interval`` as a (low, high) pair of noise levels with 0 <= low < high < inf, or None
    (guidance at every step). High is finite so that configs holding it stay plain JSON.

    Raises:
        ValueError: not two numbers, a negative, NaN or infinite bound, or low >= high.
    """
    if interval is None:
        return None
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance interval must be two noise levels (low, high), got {interval!r}") from None
    if not (0 <= lo < hi):
        raise ValueError(f"guidance interval must have 0 <= low < high, got ({lo}, {hi})")
    if not math.isfinite(hi):
        raise ValueError("guidance interval's high end must be finite; a value above the process's largest "
                         "noise level (157 for 1000 linear steps) guides up to pure noise")
    return lo, hi


def guided_timesteps(alphas_cumprod: Any, interval: tuple[float, float] | None) -> torch.Tensor:
    """Which timesteps of a process lie in the guidance interval.

    The noise level of step t is sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), the noise-to-signal
    ratio (EDM's sigma for a variance-preserving process); step t is guided when
    low < sigma_t <= high, as in Kynkaenniemi et al. 2024.

    Args:
        alphas_cumprod: alpha_bar_t of the trained process, [T].
        interval: (low, high), or None for every step.

    Returns:
        bool tensor [T].
    """
    ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    if interval is None:
        return torch.ones(ab.shape[0], dtype=torch.bool)
    sigma = ((1 - ab) / ab).sqrt()
    return (sigma > interval[0]) & (sigma <= interval[1])


def classifier_free_guidance(model: Any, scale: float, batched: bool = True,
                             guided: torch.Tensor | None = None) -> Callable[..., torch.Tensor]:
    """Wrap ``model`` so that eps = eps_null + scale * (eps_cond - eps_null).

    One batched forward of ``[cond; model.null_condition(cond)]`` gives both predictions (or two
    forwards with ``batched=False``: the same numbers up to float rounding; the batched one was
    faster on the CPU measured, benchmarks/RESULTS.md, Synthesis: every combination). Only
    the first C = x.shape[1] output channels (eps) are guided; the remaining channels (the learned
    variance) are the conditional model's, as in NASDM/SDM. Scale 1 calls the conditional model
    alone, so it equals it exactly; scale 0 calls the unconditional one alone.

    Args:
        model: called as ``model(x, t, cond=cond, **kwargs)``, with a method
            ``null_condition(cond) -> tensor like cond``.
        scale: guidance weight w >= 0 (1 = no guidance).
        batched: one forward of the doubled batch, else one conditional and one unconditional.
        guided: bool [T] over the original timesteps (:func:`guided_timesteps`): a step outside it
            calls the conditional model alone, which saves the unconditional half of that step's
            work (guidance limited to an interval of noise levels, Kynkaenniemi et al. 2024). None:
            every step is guided.

    Returns:
        ``model_fn(x, t, cond, **kwargs) -> [N, C or 2C, ...]``. Other tensor kwargs whose first
        dimension is N are repeated for the doubled batch; everything else is passed unchanged.

    Raises:
        ValueError: ``scale`` negative or not finite.
        TypeError: ``model`` has no ``null_condition``.
    """
    scale = float(scale)
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"guidance scale must be a finite number >= 0, got {scale}")
    if not callable(getattr(model, "null_condition", None)):
        raise TypeError(f"{type(model).__name__} has no null_condition(cond); classifier-free guidance needs one")

    last: list[Any] = []  # (cond, its version, null, [cond; null]) of the previous call
    on_device: dict[torch.device, torch.Tensor] = {}  # ``guided`` on each device t arrives on

    def conditions(cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # a sampler passes one condition at every step: the same null and doubled tensors each
        # time let the network recognise the condition it has seen (DiffusionUNet.reuse_condition)
        if not (last and last[0] is cond and last[1] == cond._version):
            null = model.null_condition(cond)
            last[:] = [cond, cond._version, null, torch.cat([cond, null]) if batched else None]
        return last[2], last[3]

    def model_fn(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if scale == 1.0:
            return model(x, t, cond=cond, **kwargs)
        if guided is not None:
            if t.device not in on_device:  # copied once per device, not at every step
                on_device[t.device] = guided.to(t.device)
            inside = on_device[t.device][t]
            if not bool(inside.any()):
                return model(x, t, cond=cond, **kwargs)
            if not bool(inside.all()):  # steps differ within the batch: guide all, keep the guided ones
                out, plain = _guide(x, t, cond, kwargs), model(x, t, cond=cond, **kwargs)
                return torch.where(inside.view(-1, *([1] * (out.dim() - 1))), out, plain)
        return _guide(x, t, cond, kwargs)

    def _guide(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        null, both = conditions(cond)
        if scale == 0.0:
            return model(x, t, cond=null, **kwargs)
        n = x.shape[0]
        if batched:
            doubled = {k: _repeat2(v, n) for k, v in kwargs.items()}
            out = model(torch.cat([x, x]), torch.cat([t, t]), cond=both, **doubled)
            out_cond, out_null = out[:n], out[n:]
        else:
            out_cond, out_null = model(x, t, cond=cond, **kwargs), model(x, t, cond=null, **kwargs)
        c = x.shape[1]
        eps = out_null[:, :c] + scale * (out_cond[:, :c] - out_null[:, :c])
        return torch.cat([eps, out_cond[:, c:]], dim=1)

    return model_fn


def _repeat2(value: Any, n: int) -> Any:
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == n:
        return torch.cat([value, value])
    return value
