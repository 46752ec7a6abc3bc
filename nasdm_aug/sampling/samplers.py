"""Samplers with one shared signature (after k-diffusion's sampling.py): ancestral DDPM on a
respaced process (Ho et al. 2020, Alg. 2; Nichol & Dhariwal 2021), DDIM (Song et al. 2021, eq. 12)
and DPM-Solver++(2M) (Lu et al. 2022, Alg. 2). Noise is drawn per sample from (seed, index)."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..diffusion.gaussian import GaussianDiffusion
from ..diffusion.respace import respace

__all__ = [
    "sample_ddpm",
    "sample_ddim",
    "sample_dpmpp_2m",
    "SAMPLERS",
    "get_sampler",
    "DEFAULT_SAMPLER",
    "DEFAULT_STEPS",
    "DEFAULT_STEPS_BY_SAMPLER",
    "sample_seed",
]

ModelFn = Callable[..., torch.Tensor]


def sample_seed(seed: int, index: int) -> int:
    """The generator seed of sample ``index`` in a run seeded ``seed`` (a 63-bit hash of both)."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and sample index must be >= 0, got seed={seed}, index={index}")
    hi, lo = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return ((int(hi) << 32) | int(lo)) & ((1 << 63) - 1)


class _PerSampleNoise:
    """One CPU generator per sample, so sample i's noise depends only on (seed, index i).

    Drawn on the CPU so the noise is identical whatever the device; the transfer is small next
    to a network evaluation.
    """

    def __init__(self, indices: Sequence[int], seed: int, device: torch.device, dtype: torch.dtype) -> None:
        self.generators = [torch.Generator().manual_seed(sample_seed(seed, i)) for i in indices]
        self.device, self.dtype = device, dtype

    def randn(self, sample_shape: Sequence[int]) -> torch.Tensor:
        noise = torch.stack([torch.randn(tuple(sample_shape), generator=g) for g in self.generators])
        return noise.to(device=self.device, dtype=self.dtype)


def _setup(
    shape: Sequence[int],
    model_kwargs: dict | None,
    diffusion: GaussianDiffusion,
    steps: int | None,
    seed: int,
    sample_offset: int,
    indices: Sequence[int] | None,
    spacing: str,
    device: torch.device | str | None,
) -> tuple[GaussianDiffusion, _PerSampleNoise, torch.device]:
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"shape must be [N, C, ...] with positive sizes, got {shape}")
    if indices is None:
        indices = range(sample_offset, sample_offset + shape[0])
    elif len(indices) != shape[0]:
        raise ValueError(f"got {len(indices)} sample indices for a batch of {shape[0]}")
    if device is None:
        tensors = [v for v in (model_kwargs or {}).values() if isinstance(v, torch.Tensor)]
        device = tensors[0].device if tensors else torch.device("cpu")
    device = torch.device(device)
    if steps is not None and steps != diffusion.num_timesteps:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        diffusion = respace(diffusion, int(steps), spacing=spacing)
    return diffusion, _PerSampleNoise(list(indices), seed, device, torch.float32), device


def _finish(x: torch.Tensor, trace: list[torch.Tensor] | None):
    return (x, trace) if trace is not None else x


def _timesteps(diffusion: GaussianDiffusion, progress: bool):
    return tqdm(list(reversed(range(diffusion.num_timesteps))), disable=not progress, leave=False)


@torch.no_grad()
def sample_ddpm(
    model_fn: ModelFn,
    shape: Sequence[int],
    model_kwargs: dict | None = None,
    *,
    diffusion: GaussianDiffusion,
    steps: int | None = None,
    seed: int = 0,
    sample_offset: int = 0,
    indices: Sequence[int] | None = None,
    spacing: str = "logsnr",
    clip_denoised: bool = True,
    device: torch.device | str | None = None,
    progress: bool = False,
    return_intermediates: bool = False,
):
    """Ancestral sampling of p_theta (Alg. 2 of Ho et al. 2020) on the respaced process.

    Every sampler here shares this signature; sampler-specific options come after it.

    Args:
        model_fn: called as ``model_fn(x_t, t, **model_kwargs)`` with original timesteps [N].
        shape: [N, C, ...] of the samples.
        model_kwargs: conditioning passed to ``model_fn`` unread (e.g. ``cond``).
        diffusion: the process the model was trained with (base or spaced).
        steps: network evaluations; None keeps the process's own steps, else it is respaced.
        seed: run seed; sample i draws all its noise from a generator seeded by (seed, index i).
        sample_offset: index of the first sample (for sharded or resumed runs).
        indices: explicit per-sample indices [N]; overrides ``sample_offset``.
        spacing: how ``steps`` are chosen: ``"logsnr"`` (even in log-SNR, the benchmarked
            default) or ``"uniform"`` (improved-diffusion's even stride).
        clip_denoised: clamp predicted x_0 to [-1, 1] at every step.
        device: where x lives; default the device of the first tensor in ``model_kwargs``, else CPU.
        progress: show a tqdm bar.
        return_intermediates: also return [x_T, ..., x_0] (each [N, C, ...]).

    Returns:
        x_0 [N, C, ...], or (x_0, intermediates) when ``return_intermediates``.
    """
    diffusion, noise, device = _setup(shape, model_kwargs, diffusion, steps, seed, sample_offset, indices, spacing, device)
    x = noise.randn(shape[1:])
    trace = [x] if return_intermediates else None
    for i in _timesteps(diffusion, progress):
        t = torch.full((shape[0],), i, dtype=torch.long, device=device)
        out = diffusion.p_mean_variance(model_fn, x, t, model_kwargs, clip_denoised=clip_denoised)
        x = out["mean"]
        if i > 0:  # no noise on the last step (t = 0 returns the decoder mean)
            x = x + torch.exp(0.5 * out["log_variance"]) * noise.randn(shape[1:])
        if trace is not None:
            trace.append(x)
    return _finish(x, trace)


@torch.no_grad()
def sample_ddim(
    model_fn: ModelFn,
    shape: Sequence[int],
    model_kwargs: dict | None = None,
    *,
    diffusion: GaussianDiffusion,
    steps: int | None = None,
    seed: int = 0,
    sample_offset: int = 0,
    indices: Sequence[int] | None = None,
    spacing: str = "logsnr",
    clip_denoised: bool = True,
    device: torch.device | str | None = None,
    progress: bool = False,
    return_intermediates: bool = False,
    eta: float = 0.0,
):
    """DDIM (eq. 12 of Song et al. 2021): deterministic for ``eta = 0``, DDPM-like for ``eta = 1``.

    Args: as ``sample_ddpm``, plus
        eta: scale of the per-step noise sigma_t(eta) (>= 0).

    Returns:
        x_0 [N, C, ...], or (x_0, intermediates) when ``return_intermediates``.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    diffusion, noise, device = _setup(shape, model_kwargs, diffusion, steps, seed, sample_offset, indices, spacing, device)
    x = noise.randn(shape[1:])
    trace = [x] if return_intermediates else None
    for i in _timesteps(diffusion, progress):
        t = torch.full((shape[0],), i, dtype=torch.long, device=device)
        out = diffusion.p_mean_variance(model_fn, x, t, model_kwargs, clip_denoised=clip_denoised)
        ab, ab_prev = float(diffusion.alphas_cumprod[i]), float(diffusion.alphas_cumprod_prev[i])
        # 1. sigma_t(eta) of eq. 16; 2. the "direction pointing to x_t"; 3. eq. 12.
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)
        x = out["pred_xstart"] * math.sqrt(ab_prev) + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * out["eps"]
        if i > 0 and sigma > 0:
            x = x + sigma * noise.randn(shape[1:])
        if trace is not None:
            trace.append(x)
    return _finish(x, trace)


@torch.no_grad()
def sample_dpmpp_2m(
    model_fn: ModelFn,
    shape: Sequence[int],
    model_kwargs: dict | None = None,
    *,
    diffusion: GaussianDiffusion,
    steps: int | None = None,
    seed: int = 0,
    sample_offset: int = 0,
    indices: Sequence[int] | None = None,
    spacing: str = "logsnr",
    clip_denoised: bool = True,
    device: torch.device | str | None = None,
    progress: bool = False,
    return_intermediates: bool = False,
):
    """DPM-Solver++(2M): the second-order multistep data-prediction solver (Alg. 2 of Lu et al. 2022).

    Works in lambda_t = log(alpha_t / sigma_t) with alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t).
    The first step and the step into t = 0 are first order (DPM-Solver's ``lower_order_final``: the
    lambda jump into t = 0 is the largest, and extrapolating across it over-disperses); the last
    evaluation, at t = 0, returns its x_0 prediction.

    Args: as ``sample_ddpm``.

    Returns:
        x_0 [N, C, ...], or (x_0, intermediates) when ``return_intermediates``.
    """
    diffusion, noise, device = _setup(shape, model_kwargs, diffusion, steps, seed, sample_offset, indices, spacing, device)
    ab = diffusion.alphas_cumprod
    alpha, sigma = np.sqrt(ab), np.sqrt(1 - ab)
    lam = np.log(alpha) - np.log(sigma)
    x = noise.randn(shape[1:])
    trace = [x] if return_intermediates else None
    old_denoised = None
    for i in _timesteps(diffusion, progress):
        t = torch.full((shape[0],), i, dtype=torch.long, device=device)
        denoised = diffusion.p_mean_variance(model_fn, x, t, model_kwargs, clip_denoised=clip_denoised)["pred_xstart"]
        if i == 0:
            x = denoised
        else:
            h = float(lam[i - 1] - lam[i])
            if old_denoised is not None and i > 1:
                # Second-order multistep correction from the previous x_0 prediction (r = h_last / h).
                r = float(lam[i] - lam[i + 1]) / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            else:
                denoised_d = denoised
            x = float(sigma[i - 1] / sigma[i]) * x - float(alpha[i - 1] * math.expm1(-h)) * denoised_d
            old_denoised = denoised
        if trace is not None:
            trace.append(x)
    return _finish(x, trace)


SAMPLERS: dict[str, Callable[..., Any]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
}

# Ancestral DDPM (the paper's sampler) on 50 log-SNR steps, 20x fewer network evaluations than the
# paper's 1000. On the analytic mixture (benchmarks/bench_samplers.py) it is within Monte-Carlo
# noise of 1000-step DDPM (W1 0.0008 vs 0.0033 and 0.0016 vs 0.0014), as is DPM-Solver++(2M) at 50.
# On the trained toy patch model the deterministic solvers (DDIM, DPM-Solver++) left visible noise
# at 50 steps while ancestral sampling with the learned variance matched 1000-step DDPM
# (benchmarks/RESULTS.md, Synthesis), so the stochastic sampler is the default; DPM-Solver++ suits well-converged models.
DEFAULT_SAMPLER = "ddpm"
DEFAULT_STEPS = 50
# Each sampler's own default (log-SNR spacing): fewest steps within 2.5x the reference error.
DEFAULT_STEPS_BY_SAMPLER = {"ddpm": 50, "ddim": 250, "dpmpp_2m": DEFAULT_STEPS}


def get_sampler(name: str) -> Callable[..., Any]:
    """Return the sampler function registered as ``name``.

    Raises:
        KeyError: unknown name (the message lists the valid names).
    """
    if name not in SAMPLERS:
        raise KeyError(f"unknown sampler {name!r}; available: {sorted(SAMPLERS)}")
    return SAMPLERS[name]
