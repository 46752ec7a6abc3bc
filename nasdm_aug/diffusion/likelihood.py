"""Gaussian KL and the discretized Gaussian decoder log-likelihood used by the variational
bound (Ho et al. 2020, section 3.3; Nichol & Dhariwal 2021, improved DDPM)."""

from __future__ import annotations

import math

import torch

__all__ = ["normal_kl", "approx_standard_normal_cdf", "discretized_gaussian_log_likelihood", "mean_flat"]


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch one: [N, ...] -> [N]."""
    return x.mean(dim=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats.

    Args:
        mean1, logvar1, mean2, logvar2: broadcastable tensors (or floats; at least one tensor).

    Returns:
        Elementwise KL, broadcast shape of the inputs.
    """
    ref = next(a for a in (mean1, logvar1, mean2, logvar2) if isinstance(a, torch.Tensor))
    logvar1, logvar2 = (torch.as_tensor(v, dtype=ref.dtype, device=ref.device) for v in (logvar1, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Fast tanh approximation of the standard normal CDF (as in improved-diffusion)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, *, means: torch.Tensor, log_scales: torch.Tensor, bin_width: float = 2.0 / 255.0
) -> torch.Tensor:
    """Log-likelihood of data discretised into bins of ``bin_width`` in [-1, 1] under N(means, exp(log_scales)^2).

    The outermost bins extend to -inf and +inf (Ho et al. 2020, eq. 13), so 8-bit images
    rescaled to [-1, 1] have a proper discrete likelihood.

    Args:
        x: data in [-1, 1], any shape.
        means: Gaussian means, same shape as ``x``.
        log_scales: log standard deviations, same shape as ``x``.
        bin_width: width of one bin (2/255 for 8-bit data).

    Returns:
        Elementwise log-probabilities in nats, same shape as ``x``.
    """
    if not x.shape == means.shape == log_scales.shape:
        raise ValueError(f"shape mismatch: x {tuple(x.shape)}, means {tuple(means.shape)}, log_scales {tuple(log_scales.shape)}")
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    half = bin_width / 2.0
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + half))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - half))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    edge = 1.0 - 1.5 * half  # within half a bin of the extremes: use the open-ended tail
    return torch.where(
        x < -edge,
        log_cdf_plus,
        torch.where(x > edge, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))),
    )
