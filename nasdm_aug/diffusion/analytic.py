"""A known-answer data distribution for testing and benchmarking samplers: i.i.d. coordinates
from a 1-D Gaussian mixture, whose optimal eps-predictor E[eps | x_t] and reverse variance are
closed-form (Tweedie's formula; cf. Bao et al. 2022, Analytic-DPM)."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .gaussian import GaussianDiffusion, ModelMeanType, ModelVarType

__all__ = ["GaussianMixture1D", "OptimalMixtureModel", "DEFAULT_MIXTURE"]


class GaussianMixture1D:
    """Every coordinate of x_0 is drawn independently from sum_k w_k N(m_k, s_k^2).

    Args:
        weights: mixture weights w_k (normalised here).
        means: component means m_k.
        stds: component standard deviations s_k > 0.
    """

    def __init__(self, weights: Sequence[float], means: Sequence[float], stds: Sequence[float]) -> None:
        if not len(weights) == len(means) == len(stds) or min(stds) <= 0 or min(weights) < 0:
            raise ValueError(f"need equal-length weights >= 0, means, stds > 0; got {weights}, {means}, {stds}")
        w = torch.tensor(weights, dtype=torch.float64)
        self.weights = w / w.sum()
        self.means = torch.tensor(means, dtype=torch.float64)
        self.stds = torch.tensor(stds, dtype=torch.float64)

    @property
    def mean(self) -> float:
        """E[x_0] of one coordinate."""
        return float((self.weights * self.means).sum())

    @property
    def std(self) -> float:
        """Standard deviation of one coordinate."""
        second = (self.weights * (self.stds**2 + self.means**2)).sum()
        return float(torch.sqrt(second - self.mean**2))

    def sample(self, shape: Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw float32 data of ``shape`` (every element i.i.d.)."""
        n = math.prod(shape)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, generator=generator, dtype=torch.float64)
        return (self.means[k] + self.stds[k] * z).reshape(tuple(shape)).float()

    def cdf(self, x: torch.Tensor) -> torch.Tensor:
        """The mixture CDF evaluated elementwise (float64)."""
        z = (x.double()[..., None] - self.means) / (self.stds * math.sqrt(2.0))
        return (self.weights * 0.5 * (1 + torch.erf(z))).sum(-1)

    def posterior_x0(self, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """E[x_0 | x_t] and Var[x_0 | x_t] under x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps (float64).

        Args:
            x_t: noisy data, any shape.
            alpha_bar: abar_t broadcastable to ``x_t`` (e.g. [N, 1, ..., 1]).

        Returns:
            (mean, variance), each shaped like ``x_t``.
        """
        # Loop over the few components with x-shaped tensors: a trailing K axis of size 2 is
        # several times slower on CPU than contiguous elementwise ops.
        x, ab = x_t.double(), alpha_bar.double()
        log_r, mean_k, second_k = [], [], []
        for w, m, s in zip(self.weights.tolist(), self.means.tolist(), self.stds.tolist()):
            var = ab * s**2 + (1 - ab)  # marginal variance of x_t given component k
            diff = x - ab.sqrt() * m
            log_r.append(math.log(w) - 0.5 * torch.log(var) - 0.5 / var * diff**2)
            mk = m + (ab.sqrt() * s**2 / var) * diff
            mean_k.append(mk)
            second_k.append(s**2 * (1 - ab) / var + mk**2)
        r = torch.softmax(torch.stack(log_r), dim=0)
        mean = (r * torch.stack(mean_k)).sum(0)
        var = (r * torch.stack(second_k)).sum(0) - mean**2
        return mean, var.clamp(min=0)


DEFAULT_MIXTURE = GaussianMixture1D(weights=[0.3, 0.7], means=[-0.5, 0.4], stds=[0.15, 0.2])


class OptimalMixtureModel:
    """The Bayes-optimal network for ``mixture`` under ``diffusion`` (the base, unspaced process).

    Called as ``model(x_t, t)`` with original timesteps; returns eps* = E[eps | x_t] [N, C, ...],
    followed for LEARNED_RANGE by v* [N, C, ...], the interpolation value that makes
    Sigma equal the true reverse variance Var[x_{t-1} | x_t] = beta~_t + coef1_t^2 Var[x_0 | x_t].

    Args:
        mixture: the data distribution.
        diffusion: the process the model is "trained" for (EPSILON mean type).
        eps_offset: added to eps* (a perturbed, worse model for loss tests).
    """

    def __init__(self, mixture: GaussianMixture1D, diffusion: GaussianDiffusion, eps_offset: float = 0.0) -> None:
        if diffusion.model_mean_type is not ModelMeanType.EPSILON:
            raise ValueError("OptimalMixtureModel predicts eps; use model_mean_type EPSILON")
        if diffusion.model_var_type is ModelVarType.LEARNED:
            raise ValueError("OptimalMixtureModel supports LEARNED_RANGE and fixed variances only")
        self.mixture = mixture
        self.diffusion = diffusion
        self.eps_offset = eps_offset
        d = diffusion
        self._abar = torch.tensor(d.alphas_cumprod)
        self._min_log = torch.tensor(d.posterior_log_variance_clipped)
        self._max_log = torch.log(torch.tensor(d.betas))
        self._coef1 = torch.tensor(d.posterior_mean_coef1)
        self._post_var = torch.tensor(d.posterior_variance)

    def _at(self, arr: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
        return arr.to(t.device)[t.long()].reshape((-1,) + (1,) * (ndim - 1))

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **_: object) -> torch.Tensor:
        ab = self._at(self._abar, t, x_t.ndim)
        mean_x0, var_x0 = self.mixture.posterior_x0(x_t, ab)
        eps = (x_t.double() - ab.sqrt() * mean_x0) / (1 - ab).sqrt() + self.eps_offset
        if self.diffusion.model_var_type is not ModelVarType.LEARNED_RANGE:
            return eps.to(x_t.dtype)
        # Eq. 15 solved for v: log Sigma = frac * max_log + (1 - frac) * min_log, v = 2 frac - 1.
        true_var = self._at(self._post_var, t, x_t.ndim) + self._at(self._coef1, t, x_t.ndim) ** 2 * var_x0
        lo, hi = self._at(self._min_log, t, x_t.ndim), self._at(self._max_log, t, x_t.ndim)
        frac = (torch.log(true_var.clamp(min=1e-20)) - lo) / (hi - lo)
        return torch.cat([eps, 2 * frac - 1], dim=1).to(x_t.dtype)
