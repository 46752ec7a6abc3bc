"""Samplers with one signature in the style of k-diffusion's sampling.py: ancestral DDPM on a
respaced process (Ho et al. 2020, Alg. 2; Nichol & Dhariwal 2021), DDIM (Song et al. 2021, eq. 12)
and DPM-Solver++(2M) (Lu et al. 2022, Alg. 2).

Every sampler is ``fn(model_fn, x, diffusion, noise_sampler, options, model_kwargs, callback)``:
the caller owns the starting noise ``x``, the timesteps (``diffusion``, already respaced) and the
noise source; sampler options travel as one typed :class:`SamplerOptions`. :func:`sample` does
that set-up the usual way (respacing, noise drawn per sample from (seed, index)) and is what the
generator and the training previews call. A new sampler is one function and one entry in
``SAMPLERS`` here (docs/architecture.md, Where to add things).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import ConfigBase
from ..diffusion.gaussian import GaussianDiffusion
from ..diffusion.respace import SPACINGS, respace
from ..utils import unknown_name

__all__ = [
    "SamplerOptions",
    "SamplerSpec",
    "SAMPLERS",
    "DEFAULT_SAMPLER",
    "DEFAULT_STEPS",
    "DEFAULT_STEPS_BY_SAMPLER",
    "get_sampler",
    "sample",
    "sample_seed",
    "PerSampleNoise",
]

ModelFn = Callable[..., torch.Tensor]
NoiseSampler = Callable[[], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]


def sample_seed(seed: int, index: int) -> int:
    """The generator seed of sample ``index`` in a run seeded ``seed`` (a 63-bit hash of both)."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and sample index must be >= 0, got seed={seed}, index={index}")
    hi, lo = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return ((int(hi) << 32) | int(lo)) & ((1 << 63) - 1)


class PerSampleNoise:
    """A noise source with one CPU generator per sample, so sample i's noise depends only on
    (seed, index i): calling it returns one draw [N, *sample_shape].

    Drawn on the CPU so the noise is identical whatever the device; the transfer is small next
    to a network evaluation.
    """

    def __init__(self, sample_shape: Sequence[int], indices: Sequence[int], seed: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.generators = [torch.Generator().manual_seed(sample_seed(seed, int(i))) for i in indices]
        self.device, self.dtype = torch.device(device), dtype

    def __call__(self) -> torch.Tensor:
        noise = torch.stack([torch.randn(self.sample_shape, generator=g) for g in self.generators])
        return noise.to(device=self.device, dtype=self.dtype)


def _steps(diffusion: GaussianDiffusion, progress: bool):
    return tqdm(list(reversed(range(diffusion.num_timesteps))), disable=not progress, leave=False)


def _t(i: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)


@torch.no_grad()
def sample_ddpm(model_fn: ModelFn, x: torch.Tensor, diffusion: GaussianDiffusion, noise_sampler: NoiseSampler,
                options: SamplerOptions, model_kwargs: dict | None = None, callback: Callback | None = None,
                progress: bool = False) -> torch.Tensor:
    """Ancestral sampling of p_theta (Alg. 2 of Ho et al. 2020) over every step of ``diffusion``.

    Args:
        model_fn: called as ``model_fn(x_t, t, **model_kwargs)`` with original timesteps [N].
        x: the starting noise x_T [N, C, ...].
        diffusion: the process whose steps are walked (respaced by the caller).
        noise_sampler: returns fresh noise shaped like ``x``.
        options: ``clip_denoised`` is read (this sampler has no options of its own).
        model_kwargs: conditioning passed to ``model_fn`` unread (e.g. ``cond``).
        callback: called after every step with ``{"x", "i", "pred_xstart"}``.
        progress: show a tqdm bar.

    Returns:
        x_0 [N, C, ...].
    """
    for i in _steps(diffusion, progress):
        out = diffusion.p_mean_variance(model_fn, x, _t(i, x), model_kwargs, clip_denoised=options.clip_denoised)
        x = out["mean"]
        if i > 0:  # no noise on the last step (t = 0 returns the decoder mean)
            x = x + torch.exp(0.5 * out["log_variance"]) * noise_sampler()
        if callback is not None:
            callback({"x": x, "i": i, "pred_xstart": out["pred_xstart"]})
    return x


@torch.no_grad()
def sample_ddim(model_fn: ModelFn, x: torch.Tensor, diffusion: GaussianDiffusion, noise_sampler: NoiseSampler,
                options: SamplerOptions, model_kwargs: dict | None = None, callback: Callback | None = None,
                progress: bool = False) -> torch.Tensor:
    """DDIM (eq. 12 of Song et al. 2021): deterministic for ``options.eta = 0``, DDPM-like for 1.

    Args and returns: as :func:`sample_ddpm`; ``options.eta`` scales the per-step noise sigma_t(eta).
    """
    eta = options.eta
    for i in _steps(diffusion, progress):
        out = diffusion.p_mean_variance(model_fn, x, _t(i, x), model_kwargs, clip_denoised=options.clip_denoised)
        ab, ab_prev = float(diffusion.alphas_cumprod[i]), float(diffusion.alphas_cumprod_prev[i])
        # 1. sigma_t(eta) of eq. 16; 2. the "direction pointing to x_t"; 3. eq. 12.
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)
        x = out["pred_xstart"] * math.sqrt(ab_prev) + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * out["eps"]
        if i > 0 and sigma > 0:
            x = x + sigma * noise_sampler()
        if callback is not None:
            callback({"x": x, "i": i, "pred_xstart": out["pred_xstart"]})
    return x


@torch.no_grad()
def sample_dpmpp_2m(model_fn: ModelFn, x: torch.Tensor, diffusion: GaussianDiffusion, noise_sampler: NoiseSampler,
                    options: SamplerOptions, model_kwargs: dict | None = None, callback: Callback | None = None,
                    progress: bool = False) -> torch.Tensor:
    """DPM-Solver++(2M): the second-order multistep data-prediction solver (Alg. 2 of Lu et al. 2022).

    Works in lambda_t = log(alpha_t / sigma_t) with alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t).
    The first step and the step into t = 0 are first order (DPM-Solver's ``lower_order_final``: the
    lambda jump into t = 0 is the largest, and extrapolating across it over-disperses); the last
    evaluation, at t = 0, returns its x_0 prediction. Deterministic: ``noise_sampler`` is not called.

    Args and returns: as :func:`sample_ddpm`.
    """
    ab = diffusion.alphas_cumprod
    alpha, sigma = np.sqrt(ab), np.sqrt(1 - ab)
    lam = np.log(alpha) - np.log(sigma)
    old_denoised = None
    for i in _steps(diffusion, progress):
        out = diffusion.p_mean_variance(model_fn, x, _t(i, x), model_kwargs, clip_denoised=options.clip_denoised)
        denoised = out["pred_xstart"]
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
        if callback is not None:
            callback({"x": x, "i": i, "pred_xstart": denoised})
    return x


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: its function, its default number of steps and the names of the
    ``SamplerOptions`` fields that are its own (others must keep their defaults)."""

    fn: Callable[..., torch.Tensor]
    default_steps: int
    own_options: tuple[str, ...] = ()


# Default steps (log-SNR spacing): the fewest within 2.5x the reference error on the analytic
# mixture (benchmarks/bench_samplers.py). Ancestral DDPM (the paper's sampler) at 50 steps is 20x
# fewer network evaluations than the paper's 1000 and within Monte-Carlo noise of 1000-step DDPM
# (W1 0.0008 vs 0.0033 and 0.0016 vs 0.0014), as is DPM-Solver++(2M) at 50. On the trained toy
# patch model the deterministic solvers left visible noise at 50 steps while ancestral sampling
# with the learned variance matched 1000-step DDPM (benchmarks/RESULTS.md, Synthesis), so the
# stochastic sampler is the default; DPM-Solver++ suits well-converged models.
SAMPLERS: dict[str, SamplerSpec] = {
    "ddpm": SamplerSpec(sample_ddpm, 50),
    "ddim": SamplerSpec(sample_ddim, 250, own_options=("eta",)),
    "dpmpp_2m": SamplerSpec(sample_dpmpp_2m, 50),
}
DEFAULT_SAMPLER = "ddpm"
DEFAULT_STEPS = SAMPLERS[DEFAULT_SAMPLER].default_steps
DEFAULT_STEPS_BY_SAMPLER = {name: spec.default_steps for name, spec in SAMPLERS.items()}
_SAMPLER_ONLY_OPTIONS = {"eta": 0.0}  # fields some samplers own, with their neutral values


@dataclass(frozen=True)
class SamplerOptions(ConfigBase):
    """How to sample: one typed object that the synthesis config, the generator and the CLI pass
    through unchanged.

    ``steps`` 0 means the sampler's own default and is resolved on construction, so a stored
    config records the real count.
    """

    sampler: str = DEFAULT_SAMPLER  # a name in SAMPLERS
    steps: int = 0  # network evaluations per sample; 0: the sampler's default_steps
    spacing: str = "logsnr"  # how the steps are chosen: even in log-SNR, or "uniform" (improved-diffusion)
    eta: float = 0.0  # ddim: the per-step noise (0 deterministic, 1 DDPM-like)
    clip_denoised: bool = True  # clamp the predicted x_0 to [-1, 1] at every step

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise unknown_name("sampler", self.sampler, sorted(SAMPLERS))
        spec = SAMPLERS[self.sampler]
        if self.steps == 0:
            object.__setattr__(self, "steps", spec.default_steps)
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"sampler steps must be an integer >= 1, got {self.steps!r}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {', '.join(SPACINGS)}, got {self.spacing!r}")
        if not self.eta >= 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")
        for name, neutral in _SAMPLER_ONLY_OPTIONS.items():
            if getattr(self, name) != neutral and name not in spec.own_options:
                owners = ", ".join(n for n, s in SAMPLERS.items() if name in s.own_options)
                raise ValueError(f"{name} is an option of the {owners} sampler, not of {self.sampler!r}")


    @staticmethod
    def nest_flat_keys(data: dict[str, Any], keys: Sequence[str] = ("sampler", "steps", "eta"),
                       unset: Sequence[Any] = ("", 0)) -> dict[str, Any]:
        """A config dict written when the sampler options were top-level fields (``sampler``,
        ``steps``, ``eta``) with its options moved under ``"sampling"``; values in ``unset``
        (the old "package default" markers) are dropped. Other dicts are returned unchanged."""
        if not isinstance(data, dict) or not any(k in data for k in keys):
            return data
        data = dict(data)
        nested = dict(data.get("sampling") or {})
        for k in keys:
            if k in data:
                value = data.pop(k)
                if value not in unset or k == "eta":
                    nested[k] = value
        data["sampling"] = nested
        return data


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """Return the sampler function registered as ``name``.

    Raises:
        InputError: unknown name (the message lists the valid names).
    """
    if name not in SAMPLERS:
        raise unknown_name("sampler", name, sorted(SAMPLERS))
    return SAMPLERS[name].fn


def sample(
    model_fn: ModelFn,
    shape: Sequence[int],
    model_kwargs: dict | None = None,
    *,
    diffusion: GaussianDiffusion,
    options: SamplerOptions | None = None,
    seed: int = 0,
    sample_offset: int = 0,
    indices: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    return_intermediates: bool = False,
):
    """Draw samples with ``options.sampler``: respace ``diffusion`` to ``options.steps`` (unless it
    already has that many), draw x_T and every later noise per sample from (seed, index), and run.

    Args:
        model_fn: called as ``model_fn(x_t, t, **model_kwargs)`` with original timesteps [N].
        shape: [N, C, ...] of the samples.
        model_kwargs: conditioning passed to ``model_fn`` unread (e.g. ``cond``).
        diffusion: the process the model was trained with (base or spaced).
        options: sampler, steps, spacing and the sampler's own options (default ``SamplerOptions()``).
        seed: run seed; sample i draws all its noise from a generator seeded by (seed, index i).
        sample_offset: index of the first sample (for sharded or resumed runs).
        indices: explicit per-sample indices [N]; overrides ``sample_offset``.
        device: where x lives; default the device of the first tensor in ``model_kwargs``, else CPU.
        progress: show a tqdm bar.
        return_intermediates: also return [x_T, ..., x_0] (each [N, C, ...]).

    Returns:
        x_0 [N, C, ...], or (x_0, intermediates) when ``return_intermediates``.

    Raises:
        ValueError: a bad shape, indices that do not match it, or a negative seed.
    """
    options = options or SamplerOptions()
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
    if options.steps != diffusion.num_timesteps:
        diffusion = respace(diffusion, options.steps, spacing=options.spacing)
    noise = PerSampleNoise(shape[1:], list(indices), seed, device)
    x = noise()
    trace = [x] if return_intermediates else None
    callback = (lambda info: trace.append(info["x"])) if trace is not None else None
    x = SAMPLERS[options.sampler].fn(model_fn, x, diffusion, noise, options, model_kwargs, callback, progress)
    return (x, trace) if trace is not None else x
