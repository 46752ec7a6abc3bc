"""Beta schedules: the linear schedule of Ho et al. (2020) and the cosine schedule of
Nichol & Dhariwal (2021, improved DDPM, eq. 17)."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from nasdm_aug.utils import unknown_name

__all__ = ["get_named_beta_schedule", "betas_for_alpha_bar", "BETA_SCHEDULES"]

BETA_SCHEDULES = ("linear", "cosine")


def betas_for_alpha_bar(num_steps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999) -> np.ndarray:
    """Discretise a continuous ``alpha_bar(t)``, t in [0, 1], into betas.

    Args:
        num_steps: number of diffusion steps T.
        alpha_bar: cumulative product of (1 - beta) as a function of t in [0, 1].
        max_beta: upper clip; prevents singularities at t = 1 (improved DDPM, section 3.2).

    Returns:
        float64 array of shape [T].
    """
    betas = [
        min(1.0 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)
    ]
    return np.asarray(betas, dtype=np.float64)


def get_named_beta_schedule(name: str, num_steps: int) -> np.ndarray:
    """Return the named beta schedule.

    The linear schedule is scaled so that any ``num_steps`` spans the same noise range as
    Ho et al.'s 1000 steps (beta from 1e-4 to 0.02 at T = 1000), as in improved-diffusion.

    Args:
        name: ``"linear"`` or ``"cosine"``.
        num_steps: number of diffusion steps T (>= 1).

    Returns:
        float64 array of betas, shape [T].

    Raises:
        InputError: unknown name.
        ValueError: non-positive ``num_steps``.
    """
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if name == "linear":
        scale = 1000 / num_steps
        return np.linspace(scale * 0.0001, scale * 0.02, num_steps, dtype=np.float64)
    if name == "cosine":
        return betas_for_alpha_bar(num_steps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2)
    raise unknown_name("beta schedule", name, BETA_SCHEDULES)
