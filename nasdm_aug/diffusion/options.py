"""The choices a ``GaussianDiffusion`` is built with: what the model's output predicts, how the
reverse-process variance is obtained, the training objective and the per-timestep weightings of
its MSE term; and how the process calls the model (``ModelFn``)."""

from __future__ import annotations

import enum
from typing import Any, Callable

import torch

from nasdm_aug.utils import unknown_name

__all__ = ["ModelMeanType", "ModelVarType", "LossType", "LOSS_WEIGHTINGS", "ModelFn"]

#: Per-timestep weights of the MSE term: "none" (L_simple, the paper's), "min-snr" (Hang et al.
#: 2023, Min-SNR-gamma), "p2" (Choi et al. 2022, perception-prioritized weighting).
LOSS_WEIGHTINGS: tuple[str, ...] = ("none", "min-snr", "p2")

#: The model as the process calls it: ``model(x_t, t, **model_kwargs)`` -> its output tensor.
ModelFn = Callable[..., torch.Tensor]


class ModelMeanType(enum.Enum):
    """What the model's first C output channels predict."""

    EPSILON = "epsilon"  # the noise eps (Ho et al. 2020)
    START_X = "start_x"  # x_0 directly
    V = "v"  # v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022)


class ModelVarType(enum.Enum):
    """How the reverse-process variance Sigma_theta(x_t, t) is obtained."""

    LEARNED_RANGE = "learned_range"  # v in [-1, 1] interpolates log beta~_t .. log beta_t (eq. 15)
    LEARNED = "learned"  # the model outputs log Sigma directly
    FIXED_SMALL = "fixed_small"  # beta~_t, the posterior variance
    FIXED_LARGE = "fixed_large"  # beta_t


class LossType(enum.Enum):
    """Training objective."""

    MSE = "mse"  # L_simple only (requires a fixed variance)
    HYBRID = "hybrid"  # L_simple + lambda * L_vlb (eq. 16), stop-gradient on the mean in L_vlb
    KL = "kl"  # the variational bound alone (L_vlb)


def _as_enum(value: Any, kind: type[enum.Enum]) -> enum.Enum:
    """Accept an enum member or its string value (configs store the string)."""
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        raise unknown_name(kind.__name__, value, [m.value for m in kind]) from None
