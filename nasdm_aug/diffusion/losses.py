"""The training losses of ``GaussianDiffusion`` (improved DDPM, Nichol & Dhariwal 2021): the
variational-bound terms in bits per dimension, the prior term and the per-sample hybrid loss.

``DiffusionLosses`` is a part of ``GaussianDiffusion``, not a class of its own: its methods use
the process's ``q_sample``, ``q_posterior_mean_variance``, ``q_mean_variance``,
``p_mean_variance``, model-output split and schedule arrays."""

from __future__ import annotations

import math

import torch

from .likelihood import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .options import LossType, ModelFn, ModelMeanType

__all__ = ["DiffusionLosses"]


class DiffusionLosses:
    """The loss methods of :class:`~nasdm_aug.diffusion.gaussian.GaussianDiffusion`."""

    def vb_terms_bpd(
        self,
        model: ModelFn,
        x_start: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict | None = None,
        clip_denoised: bool = False,
    ) -> dict[str, torch.Tensor]:
        """One term L_t of the variational bound, in bits per dimension.

        L_t = KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0 and the discretized Gaussian
        decoder NLL -log p(x_0|x_1) at t = 0 (Ho et al. 2020, eq. 5 and 13).

        Returns:
            dict with ``output`` [N] (bits/dim) and ``pred_xstart`` [N, C, ...].
        """
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model, x_t, t, model_kwargs=model_kwargs, clip_denoised=clip_denoised)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, means=out["mean"], log_scales=0.5 * out["log_variance"])
        nll = mean_flat(nll) / math.log(2.0)
        return {"output": torch.where(t == 0, nll, kl), "pred_xstart": out["pred_xstart"]}

    def prior_bpd(self, x_start: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) in bits/dim, shape [N]; constant in the model."""
        t = torch.full((x_start.shape[0],), self.num_timesteps - 1, dtype=torch.long, device=x_start.device)
        mean, _, log_var = self.q_mean_variance(x_start, t)
        return mean_flat(normal_kl(mean, log_var, 0.0, 0.0)) / math.log(2.0)

    def training_losses(
        self,
        model: ModelFn,
        x_start: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict | None = None,
        noise: torch.Tensor | None = None,
        pixel_weight: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample training losses for one sampled timestep per sample.

        ``mse`` is L_simple = mean over dims of ||eps - eps_theta||^2 (of x_0 for START_X, of v for V).
        ``vb`` is the single term L_t in bits/dim (decoder NLL at t = 0), computed with the
        mean output detached (the stop-gradient of eq. 16), so it trains only the variance.

        HYBRID returns ``loss = w_t * mse + vb_weight * T * vb``, with ``w_t`` the loss weighting's
        weight (1 for ``"none"``; ``mse`` itself is returned unweighted, so logs stay comparable). Why the factor T: the paper's L_vlb is
        the sum over t of L_t, and with t uniform its unbiased one-sample estimate is T * L_t, so
        lambda * L_vlb = lambda * T * L_t. improved-diffusion writes ``vb *= T / 1000`` (its
        RESCALED_MSE, the default for learned sigmas) and adds vb; that is exactly lambda = 0.001
        here: for T = 1000 both weigh L_t by 1.0, for T = 4000 both by 4.0. Note the prior term L_T
        is constant in the model and not added to ``loss`` (see ``prior_bpd``). KL returns
        ``loss = T * vb`` (the bound itself, up to L_T).

        Args:
            model: called as ``model(x_t, t, **model_kwargs)``.
            x_start: data in [-1, 1], [N, C, ...].
            t: long timesteps [N] in [0, T).
            model_kwargs: conditioning passed to the model unread.
            noise: optional standard normal noise like ``x_start``.
            pixel_weight: optional non-negative weights broadcastable to ``x_start`` (e.g. [N, 1, H, W]):
                the MSE term in ``loss`` becomes the mean of ``pixel_weight * error ** 2`` (the
                per-timestep weighting still applies on top). ``mse`` stays the unweighted mean, and
                ``vb`` is not weighted: it trains the variance.

        Returns:
            dict of per-sample tensors [N]: ``mse``, ``vb`` (zeros for fixed variances) and ``loss``.
        """
        model_kwargs = model_kwargs or {}
        noise = torch.randn_like(x_start) if noise is None else noise
        x_t = self.q_sample(x_start, t, noise=noise)
        out = model(x_t, t, **model_kwargs)
        mean_out, var_values = self._split_output(out, x_t)
        if self.learns_sigma or self.loss_type is LossType.KL:
            # Detach the mean so L_vlb trains only the variance (eq. 16); KL trains both.
            frozen_mean = mean_out.detach() if self.loss_type is LossType.HYBRID else mean_out
            frozen = frozen_mean if var_values is None else torch.cat([frozen_mean, var_values], dim=1)
            vb = self.vb_terms_bpd(lambda *_a, **_k: frozen, x_start, x_t, t, clip_denoised=False)["output"]
        else:
            vb = torch.zeros(x_start.shape[0], device=x_start.device, dtype=x_start.dtype)
        sq_err = (self._mse_target(x_start, t, noise) - mean_out) ** 2
        mse = mean_flat(sq_err)
        weighted = mse if pixel_weight is None else mean_flat(sq_err * pixel_weight)
        if self.loss_weighting != "none":
            weighted = weighted * self._extract("mse_weights", t, 1)
        scale = float(self.num_timesteps)
        if self.loss_type is LossType.KL:
            loss = scale * vb
        elif self.loss_type is LossType.HYBRID:
            loss = weighted + self.vb_weight * scale * vb
        else:
            loss = weighted
        return {"mse": mse, "vb": vb, "loss": loss}

    def _mse_target(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the model's mean part regresses onto: the noise, v or x_0 (``model_mean_type``)."""
        if self.model_mean_type is ModelMeanType.EPSILON:
            return noise
        if self.model_mean_type is ModelMeanType.V:
            return self.v_target(x_start, t, noise)
        return x_start
