"""Respacing a trained diffusion process to fewer steps without retraining (improved DDPM,
Nichol & Dhariwal 2021, section 4), modelled on improved-diffusion's respace.py."""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from nasdm_aug.utils import unknown_name

from .gaussian import GaussianDiffusion, LossType, ModelMeanType, ModelVarType
from .schedules import get_named_beta_schedule

__all__ = ["space_timesteps", "logsnr_timesteps", "SpacedDiffusion", "create_diffusion", "respace", "SPACINGS"]

SPACINGS = ("uniform", "logsnr")


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> set[int]:
    """Choose which of the original timesteps a respaced process keeps.

    The original steps are cut into ``len(section_counts)`` equal sections and each section is
    strided evenly to its count, first and last step included (improved-diffusion's scheme).
    ``"ddimN"`` instead takes the fixed stride of the DDIM paper, ``range(0, T, T // N)``-like.

    Args:
        num_timesteps: T of the original process.
        section_counts: ``"50"``, ``"10,15,20"``, ``"ddim25"`` or a list of ints.

    Returns:
        Set of kept original timesteps (0-based).

    Raises:
        ValueError: a count exceeds its section, or no DDIM stride gives exactly N steps.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            return _ddim_timesteps(num_timesteps, section_counts)
        try:
            section_counts = [int(x) for x in section_counts.split(",")]
        except ValueError:
            raise ValueError(f"cannot parse timestep respacing {section_counts!r}; use e.g. '50', 'ddim25' or '10,15,20'") from None
    counts = list(section_counts)
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"section counts must be positive integers, got {counts}")
    size_per, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot take {count} steps from a section of {size} (T={num_timesteps}, counts={counts})")
        stride = (size - 1) / (count - 1) if count > 1 else 1
        kept += [start + round(stride * j) for j in range(count)]
        start += size
    return set(kept)


def _ddim_timesteps(num_timesteps: int, spec: str) -> set[int]:
    try:
        desired = int(spec[len("ddim"):])
    except ValueError:
        raise ValueError(f"cannot parse timestep respacing {spec!r}; expected 'ddimN'") from None
    for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == desired:
            return set(range(0, num_timesteps, stride))
    raise ValueError(f"cannot create exactly {desired} steps with an integer stride from T={num_timesteps}")


def logsnr_timesteps(alphas_cumprod: np.ndarray, count: int) -> set[int]:
    """Choose ``count`` timesteps evenly spaced in log-SNR lambda_t = log(alpha_t / sigma_t).

    The spacing DPM-Solver recommends (Lu et al. 2022, section 3.3): with the linear schedule,
    evenly strided t leaves one large lambda jump at the last step, where the fine structure of
    the data is resolved; even lambda spacing puts more steps there.

    Args:
        alphas_cumprod: abar_t of the base process [T].
        count: number of steps to keep (1 <= count <= T); t = T - 1 and, for count > 1, t = 0 are kept.

    Returns:
        Set of exactly ``count`` original timesteps.
    """
    ab = np.asarray(alphas_cumprod, dtype=np.float64)
    if not 1 <= count <= len(ab):
        raise ValueError(f"cannot take {count} steps from a process of {len(ab)}")
    lam = 0.5 * (np.log(ab) - np.log1p(-ab))
    targets = np.linspace(lam[-1], lam[0], count) if count > 1 else lam[-1:]
    kept, prev = [], len(ab)
    for j, target in enumerate(targets):
        t = int(np.argmin(np.abs(lam - target)))
        # Keep t strictly decreasing and leave room for the remaining steps, so exactly count remain.
        t = max(min(t, prev - 1), count - 1 - j)
        kept.append(t)
        prev = t
    return set(kept)


class _WrappedModel:
    """Calls the model with the original timesteps, so trained weights are reused unchanged.

    ``timestep_map(device)`` gives the map of kept to original timesteps on that device; the
    spaced process hands its cached one, so a step copies nothing to the device.
    """

    def __init__(self, model: Any, timestep_map: Callable[[torch.device], torch.Tensor]) -> None:
        self.model = model
        self.timestep_map = timestep_map

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.model(x, self.timestep_map(t.device)[t], **kwargs)


class SpacedDiffusion(GaussianDiffusion):
    """A diffusion process that keeps a subset of the base process's steps.

    The betas are recomputed from the kept alphas_cumprod (beta_i = 1 - abar_{t_i} / abar_{t_{i-1}}),
    so learned-range variances interpolate between the respaced beta and beta~ (improved DDPM
    section 4), and the model is always called with the original timestep.

    Args:
        use_timesteps: original timesteps to keep (any iterable of ints in [0, T)).
        betas: the base process's betas [T].
        **kwargs: the remaining ``GaussianDiffusion`` arguments.
    """

    def __init__(self, use_timesteps: Iterable[int], betas: np.ndarray, **kwargs: Any) -> None:
        base = GaussianDiffusion(betas, **kwargs)
        self.use_timesteps = sorted(set(int(t) for t in use_timesteps))
        if not self.use_timesteps or self.use_timesteps[0] < 0 or self.use_timesteps[-1] >= base.num_timesteps:
            raise ValueError(f"use_timesteps must be a non-empty subset of [0, {base.num_timesteps}), got {self.use_timesteps[:5]}...")
        self.original_betas = base.betas
        self.original_num_steps = base.num_timesteps
        last, new_betas = 1.0, []
        for t in self.use_timesteps:
            new_betas.append(1.0 - base.alphas_cumprod[t] / last)
            last = base.alphas_cumprod[t]
        self.timestep_map = torch.tensor(self.use_timesteps, dtype=torch.long)
        super().__init__(np.asarray(new_betas), **kwargs)

    def _wrap(self, model: Any) -> Any:
        if isinstance(model, _WrappedModel):
            return model
        return _WrappedModel(model, functools.partial(self.schedule_tensor, "timestep_map"))

    def p_mean_variance(self, model, *args, **kwargs):  # noqa: D102 - see GaussianDiffusion
        return super().p_mean_variance(self._wrap(model), *args, **kwargs)

    def training_losses(self, model, *args, **kwargs):  # noqa: D102 - see GaussianDiffusion
        return super().training_losses(self._wrap(model), *args, **kwargs)


def _init_kwargs(diffusion: GaussianDiffusion) -> dict[str, Any]:
    return {
        "model_mean_type": diffusion.model_mean_type,
        "model_var_type": diffusion.model_var_type,
        "loss_type": diffusion.loss_type,
        "vb_weight": diffusion.vb_weight,
        "loss_weighting": diffusion.loss_weighting,
        "snr_gamma": diffusion.snr_gamma,
        "p2_gamma": diffusion.p2_gamma,
        "p2_k": diffusion.p2_k,
    }


def respace(
    diffusion: GaussianDiffusion, section_counts: str | int | Sequence[int], spacing: str = "uniform"
) -> SpacedDiffusion:
    """Respace a (base or already spaced) process, keeping its model interface.

    Args:
        diffusion: the process the model was trained with, or a ``SpacedDiffusion`` of it.
        section_counts: as in ``space_timesteps`` (an int means one section); an int with
            ``spacing="logsnr"`` keeps that many steps evenly spaced in log-SNR.
        spacing: ``"uniform"`` (``space_timesteps``) or ``"logsnr"`` (``logsnr_timesteps``).

    Returns:
        A ``SpacedDiffusion`` over the original timesteps; for a spaced input, the new steps are
        chosen among its kept steps.
    """
    if spacing not in SPACINGS:
        raise unknown_name("spacing", spacing, SPACINGS)
    if spacing == "logsnr":
        if not isinstance(section_counts, int):
            raise ValueError(f"logsnr spacing takes an int step count, got {section_counts!r}")
        kept = logsnr_timesteps(diffusion.alphas_cumprod, section_counts)
    else:
        spec = str(section_counts) if isinstance(section_counts, int) else section_counts
        kept = space_timesteps(diffusion.num_timesteps, spec)
    if isinstance(diffusion, SpacedDiffusion):
        use = [diffusion.use_timesteps[i] for i in sorted(kept)]
        return SpacedDiffusion(use, diffusion.original_betas, **_init_kwargs(diffusion))
    return SpacedDiffusion(kept, diffusion.betas, **_init_kwargs(diffusion))


def create_diffusion(
    steps: int = 1000,
    schedule: str = "linear",
    var_type: ModelVarType | str = ModelVarType.LEARNED_RANGE,
    loss_type: LossType | str = LossType.HYBRID,
    timestep_respacing: str | Sequence[int] = "",
    mean_type: ModelMeanType | str = ModelMeanType.EPSILON,
    vb_weight: float = 0.001,
    loss_weighting: str = "none",
    snr_gamma: float = 5.0,
    p2_gamma: float = 1.0,
    p2_k: float = 1.0,
) -> SpacedDiffusion:
    """Build the process: a named schedule of ``steps`` steps, optionally respaced.

    Defaults are the paper's: 1000 linear steps, eps prediction, learned-range variance,
    hybrid loss with lambda = 0.001.

    Args:
        steps: T of the trained process.
        schedule: ``"linear"`` or ``"cosine"``.
        var_type: a ``ModelVarType`` or its value string.
        loss_type: a ``LossType`` or its value string.
        timestep_respacing: ``""`` for all steps, else as in ``space_timesteps``.
        mean_type: a ``ModelMeanType`` or its value string.
        vb_weight: lambda of the hybrid loss.
        loss_weighting, snr_gamma, p2_gamma, p2_k: the MSE term's per-timestep weight
            (``GaussianDiffusion``).

    Returns:
        A ``SpacedDiffusion`` (with all steps kept when ``timestep_respacing`` is empty).
    """
    betas = get_named_beta_schedule(schedule, steps)
    use = space_timesteps(steps, timestep_respacing) if timestep_respacing else range(steps)
    return SpacedDiffusion(
        use, betas, model_mean_type=mean_type, model_var_type=var_type, loss_type=loss_type, vb_weight=vb_weight,
        loss_weighting=loss_weighting, snr_gamma=snr_gamma, p2_gamma=p2_gamma, p2_k=p2_k,
    )
