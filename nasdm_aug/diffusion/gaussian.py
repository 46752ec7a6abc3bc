"""The Gaussian diffusion process with learned-range variance and the hybrid loss of
Nichol & Dhariwal (2021, improved DDPM), modelled on improved-diffusion's gaussian_diffusion.py.
Math only: every method takes the model as an argument.

The choices the process is built with are in ``options.py`` and its training losses in
``losses.py``; this module re-exports the choices."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from nasdm_aug.utils import unknown_name

from .losses import DiffusionLosses
from .options import LOSS_WEIGHTINGS, LossType, ModelFn, ModelMeanType, ModelVarType, _as_enum

__all__ = ["ModelMeanType", "ModelVarType", "LossType", "LOSS_WEIGHTINGS", "GaussianDiffusion", "extract_into_tensor"]


def extract_into_tensor(arr: np.ndarray | torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Gather ``arr[t]`` for a batch of indices and reshape to broadcast against an ``ndim`` tensor.

    Args:
        arr: per-timestep values, shape [T] (float64 numpy or tensor).
        t: long timesteps, shape [N].
        ndim: number of dimensions of the tensor the result multiplies.

    Returns:
        float32 tensor [N, 1, ..., 1] on ``t``'s device.
    """
    arr = torch.as_tensor(arr, device=t.device)
    out = arr[t.long()].float()
    return out.reshape(out.shape + (1,) * (ndim - out.ndim))


class GaussianDiffusion(DiffusionLosses):
    """The forward process q, the reverse process p_theta and the training losses.

    Args:
        betas: float array [T] of noise variances, each in (0, 1].
        model_mean_type: what the model's first C channels predict.
        model_var_type: how the reverse variance is obtained; the learned kinds need a model
            output of 2C channels (mean part then variance part).
        loss_type: the training objective.
        vb_weight: lambda of the hybrid loss L_simple + lambda * L_vlb (eq. 16 of improved DDPM).
        loss_weighting: per-timestep weight of the MSE term (one of ``LOSS_WEIGHTINGS``); the
            variational-bound term that trains the variance is never weighted.
        snr_gamma: gamma of Min-SNR-gamma (the weight of an eps-predicting model is
            min(SNR_t, gamma) / SNR_t; of an x_0-predicting one min(SNR_t, gamma); of a
            v-predicting one min(SNR_t, gamma) / (SNR_t + 1)).
        p2_gamma, p2_k: P2 weighting's 1 / (k + SNR_t) ** gamma on the eps loss (the same
            weighting carried to x_0 and v targets).

    Timesteps are 0-based: ``t = 0`` is the first noising step, ``t = T - 1`` the last.
    """

    def __init__(
        self,
        betas: np.ndarray | torch.Tensor,
        model_mean_type: ModelMeanType | str = ModelMeanType.EPSILON,
        model_var_type: ModelVarType | str = ModelVarType.LEARNED_RANGE,
        loss_type: LossType | str = LossType.HYBRID,
        vb_weight: float = 0.001,
        loss_weighting: str = "none",
        snr_gamma: float = 5.0,
        p2_gamma: float = 1.0,
        p2_k: float = 1.0,
    ) -> None:
        self.model_mean_type = _as_enum(model_mean_type, ModelMeanType)
        self.model_var_type = _as_enum(model_var_type, ModelVarType)
        self.loss_type = _as_enum(loss_type, LossType)
        if self.loss_type is LossType.MSE and self.learns_sigma:
            raise ValueError(f"loss_type 'mse' cannot train model_var_type {self.model_var_type.value!r}; use 'hybrid'")
        if not (vb_weight >= 0 and math.isfinite(vb_weight)):
            raise ValueError(f"vb_weight must be a finite number >= 0, got {vb_weight!r}")
        self.vb_weight = float(vb_weight)
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise unknown_name("loss weighting", loss_weighting, LOSS_WEIGHTINGS)
        for name, value in (("snr_gamma", snr_gamma), ("p2_gamma", p2_gamma), ("p2_k", p2_k)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        self.loss_weighting = loss_weighting
        self.snr_gamma, self.p2_gamma, self.p2_k = float(snr_gamma), float(p2_gamma), float(p2_k)
        betas = np.asarray(torch.as_tensor(betas).cpu(), dtype=np.float64)
        if betas.ndim != 1 or len(betas) == 0 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError(f"betas must be a non-empty 1-D array in (0, 1], got shape {betas.shape}, range [{betas.min(initial=0):.3g}, {betas.max(initial=0):.3g}]")
        self.betas = betas
        self.num_timesteps = len(betas)
        # (attribute name, device) -> (the numpy array it was made from, its tensor on that device)
        self._device_schedules: dict[tuple[str, torch.device], tuple[Any, torch.Tensor]] = {}
        self._precompute(betas)

    def __getstate__(self) -> dict[str, Any]:
        # Device copies are a cache: a pickled or copied process rebuilds them where it runs.
        return {**self.__dict__, "_device_schedules": {}}

    def schedule_tensor(self, name: str, device: torch.device | str) -> torch.Tensor:
        """The per-timestep array ``getattr(self, name)`` as a tensor on ``device``, made once per
        device and reused. The values are the array's own (float64 for the schedule arrays), so
        ``extract_into_tensor`` of it gives exactly what it gives of the numpy array.

        Why: turning the numpy array into a CUDA tensor at every call was a blocking host-to-device
        copy, a dozen per training or sampling step. An attribute given a new array gets a new
        tensor (the cache remembers which array it copied).
        """
        device = torch.device(device)
        arr = getattr(self, name)
        hit = self._device_schedules.get((name, device))
        if hit is None or hit[0] is not arr:
            hit = (arr, torch.as_tensor(arr, device=device))
            self._device_schedules[(name, device)] = hit
        return hit[1]

    def _extract(self, name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """``extract_into_tensor`` of the schedule array ``name`` through its cached device tensor."""
        return extract_into_tensor(self.schedule_tensor(name, t.device), t, ndim)

    @property
    def learns_sigma(self) -> bool:
        """True when the model outputs a variance part (2C channels)."""
        return self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE)

    def _precompute(self, betas: np.ndarray) -> None:
        # All in float64 numpy; gathered in float64 and cast per call (on a cached device copy:
        # schedule_tensor), so small differences do not accumulate.
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.one_minus_alphas_cumprod = 1.0 - self.alphas_cumprod
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.log_betas = np.log(betas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        # beta~_t of eq. 7 (Ho et al.); at t = 0 it is 0, so its log is clipped to beta~_1.
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        first = self.posterior_variance[1] if len(betas) > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(first, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        # FIXED_LARGE's log variance: beta~_1 at t = 0, as improved-diffusion does, so the decoder is
        # not too wide.
        self.fixed_large_log_variance = (np.log(np.append(self.posterior_variance[1], betas[1:]))
                                         if len(betas) > 1 else np.log(betas))
        self.snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)
        self.mse_weights = self._mse_weights()

    def _mse_weights(self) -> np.ndarray:
        """The weight of the MSE term at each timestep, float64 [T]."""
        snr = self.snr
        # Each weighting is defined on one target and carried to the others by how their errors
        # relate: ||eps error||^2 = SNR ||x_0 error||^2 and ||v error||^2 = (SNR + 1) ||x_0 error||^2.
        per_x0 = {ModelMeanType.EPSILON: 1.0 / snr, ModelMeanType.START_X: np.ones_like(snr),
                  ModelMeanType.V: 1.0 / (snr + 1.0)}[self.model_mean_type]
        if self.loss_weighting == "min-snr":  # min(SNR, gamma) on the x_0 loss
            return np.minimum(snr, self.snr_gamma) * per_x0
        if self.loss_weighting == "p2":  # 1 / (k + SNR) ** gamma on the eps loss
            return snr / (self.p2_k + snr) ** self.p2_gamma * per_x0
        return np.ones_like(snr)

    # ---- forward process -------------------------------------------------------------------

    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and log-variance of q(x_t | x_0) (eq. 4 of Ho et al.); x_start [N, ...], t [N]."""
        mean = self._extract("sqrt_alphas_cumprod", t, x_start.ndim) * x_start
        variance = self._extract("one_minus_alphas_cumprod", t, x_start.ndim).expand_as(x_start)
        log_variance = self._extract("log_one_minus_alphas_cumprod", t, x_start.ndim).expand_as(x_start)
        return mean, variance, log_variance

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I).

        Args:
            x_start: clean data [N, ...].
            t: long timesteps [N].
            noise: optional standard normal noise like ``x_start``.

        Returns:
            x_t, same shape as ``x_start``.
        """
        noise = torch.randn_like(x_start) if noise is None else noise
        if noise.shape != x_start.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x_start shape {tuple(x_start.shape)}")
        return (
            self._extract("sqrt_alphas_cumprod", t, x_start.ndim) * x_start
            + self._extract("sqrt_one_minus_alphas_cumprod", t, x_start.ndim) * noise
        )

    def q_posterior_mean_variance(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (eqs. 6-7 of Ho et al.).

        Args:
            x_start, x_t: tensors [N, ...] of one shape.
            t: long timesteps [N].

        Returns:
            (mean, variance, log_variance), each shaped like ``x_t``.
        """
        if x_start.shape != x_t.shape:
            raise ValueError(f"x_start shape {tuple(x_start.shape)} differs from x_t shape {tuple(x_t.shape)}")
        nd = x_t.ndim
        mean = (
            self._extract("posterior_mean_coef1", t, nd) * x_start
            + self._extract("posterior_mean_coef2", t, nd) * x_t
        )
        variance = self._extract("posterior_variance", t, nd).expand_as(x_t)
        log_variance = self._extract("posterior_log_variance_clipped", t, nd).expand_as(x_t)
        return mean, variance, log_variance

    # ---- reverse process -------------------------------------------------------------------

    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        nd = x_t.ndim
        return (
            self._extract("sqrt_recip_alphas_cumprod", t, nd) * x_t
            - self._extract("sqrt_recipm1_alphas_cumprod", t, nd) * eps
        )

    def predict_xstart_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v."""
        nd = x_t.ndim
        return (self._extract("sqrt_alphas_cumprod", t, nd) * x_t
                - self._extract("sqrt_one_minus_alphas_cumprod", t, nd) * v)

    def v_target(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0, the V model's regression target."""
        nd = x_start.ndim
        return (self._extract("sqrt_alphas_cumprod", t, nd) * noise
                - self._extract("sqrt_one_minus_alphas_cumprod", t, nd) * x_start)

    def predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor) -> torch.Tensor:
        """eps = (x_t / sqrt(abar_t) - x_0) / sqrt(1 / abar_t - 1)."""
        nd = x_t.ndim
        return (self._extract("sqrt_recip_alphas_cumprod", t, nd) * x_t - pred_xstart) / (
            self._extract("sqrt_recipm1_alphas_cumprod", t, nd)
        )

    def _model_log_variance(self, var_values: torch.Tensor | None, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        nd = x.ndim
        if self.model_var_type is ModelVarType.LEARNED:
            return var_values
        if self.model_var_type is ModelVarType.LEARNED_RANGE:
            # Eq. 15: interpolate in log space between beta~_t (v = -1) and beta_t (v = +1).
            min_log = self._extract("posterior_log_variance_clipped", t, nd)
            max_log = self._extract("log_betas", t, nd)
            frac = (var_values + 1) / 2
            return frac * max_log + (1 - frac) * min_log
        if self.model_var_type is ModelVarType.FIXED_LARGE:
            return self._extract("fixed_large_log_variance", t, nd).expand_as(x)
        return self._extract("posterior_log_variance_clipped", t, nd).expand_as(x)

    def _split_output(self, out: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        c = x.shape[1]
        want = 2 * c if self.learns_sigma else c
        if out.shape[0] != x.shape[0] or out.shape[1] != want or out.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"model output shape {tuple(out.shape)} does not fit x {tuple(x.shape)}: expected {want} channels "
                f"for model_var_type {self.model_var_type.value!r}"
            )
        return (out[:, :c], out[:, c:]) if self.learns_sigma else (out, None)

    def p_mean_variance(
        self,
        model: ModelFn,
        x: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict | None = None,
        clip_denoised: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Apply the model to get p_theta(x_{t-1} | x_t) and the implied prediction of x_0.

        Args:
            model: called as ``model(x, t, **model_kwargs)``; returns [N, 2C, ...] (mean part,
                then variance part) for learned variances, [N, C, ...] otherwise.
            x: x_t, [N, C, ...].
            t: long timesteps [N].
            model_kwargs: passed to the model unread (conditioning).
            clip_denoised: clamp the predicted x_0 to [-1, 1].

        Returns:
            dict with ``mean``, ``variance``, ``log_variance``, ``pred_xstart`` and ``eps`` (the noise
            implied by the possibly clipped ``pred_xstart``), each shaped like ``x``.
        """
        out = model(x, t, **(model_kwargs or {}))
        mean_out, var_values = self._split_output(out, x)
        log_variance = self._model_log_variance(var_values, x, t)
        if self.model_mean_type is ModelMeanType.EPSILON:
            pred_xstart = self.predict_xstart_from_eps(x, t, mean_out)
        elif self.model_mean_type is ModelMeanType.V:
            pred_xstart = self.predict_xstart_from_v(x, t, mean_out)
        else:
            pred_xstart = mean_out
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        eps = self.predict_eps_from_xstart(x, t, pred_xstart)
        return {
            "mean": mean,
            "variance": torch.exp(log_variance),
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
            "eps": eps,
        }
