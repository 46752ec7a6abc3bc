"""GaussianDiffusion: closed forms, the learned-range variance, the hybrid loss and its stop-gradient."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nasdm_aug.diffusion import (
    DEFAULT_MIXTURE,
    GaussianDiffusion,
    LossType,
    ModelVarType,
    OptimalMixtureModel,
    create_diffusion,
    discretized_gaussian_log_likelihood,
    get_named_beta_schedule,
    normal_kl,
)

T = 100


@pytest.fixture(scope="module")
def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(get_named_beta_schedule("linear", T))


def test_linear_schedule_matches_ho_et_al():
    betas = get_named_beta_schedule("linear", 1000)
    assert betas.shape == (1000,) and betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert get_named_beta_schedule("linear", 250)[-1] == pytest.approx(0.08)  # scaled by 1000 / T


def test_cosine_schedule_is_eq_17_of_improved_ddpm():
    # Nichol & Dhariwal (2021), eq. 17: alpha_bar(t) = f(t) / f(0), f(t) = cos(((t/T + s) / (1 + s)) pi/2)^2,
    # s = 0.008; beta_t = 1 - alpha_bar(t) / alpha_bar(t - 1), clipped at 0.999; betas[t - 1] is beta_t
    steps, s = 1000, 0.008

    def alpha_bar(t):
        f = lambda u: math.cos((u / steps + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        return f(t) / f(0)

    betas = get_named_beta_schedule("cosine", steps)
    assert betas.shape == (steps,) and betas.dtype == np.float64
    for t in (1, 2, 250, 500, 900, 999):
        assert betas[t - 1] == pytest.approx(1 - alpha_bar(t) / alpha_bar(t - 1), rel=1e-12, abs=0), t
    assert betas[-1] == 0.999  # 1 - alpha_bar(T) / alpha_bar(T - 1) = 1: clipped
    assert alpha_bar(steps) < 1e-9 and np.all(betas[:-1] < 0.999)
    # the product of (1 - beta) up to t is alpha_bar(t) itself (f(0) normalises it to 1 at t = 0)
    for t in (1, 100, 500, 990):
        assert np.prod(1 - betas[:t]) == pytest.approx(alpha_bar(t), rel=1e-9), t


@pytest.mark.parametrize("name, steps", [("sigmoid", 10), ("linear", 0), ("cosine", 2.5)])
def test_schedule_rejects_bad_arguments(name, steps):
    with pytest.raises(ValueError):
        get_named_beta_schedule(name, steps)


def test_q_sample_at_t0_is_nearly_clean(diffusion):
    x0, noise = torch.rand(4, 3, 8, 8) * 2 - 1, torch.randn(4, 3, 8, 8)
    t = torch.zeros(4, dtype=torch.long)
    ab0 = 1 - diffusion.betas[0]
    expected = math.sqrt(ab0) * x0 + math.sqrt(1 - ab0) * noise
    torch.testing.assert_close(diffusion.q_sample(x0, t, noise), expected)
    torch.testing.assert_close(diffusion.q_sample(x0, t, torch.zeros_like(x0)), x0, rtol=0, atol=1e-3)


def test_posterior_matches_product_of_gaussians(diffusion):
    # q(x_{t-1}|x_t,x_0) ∝ N(x_t; sqrt(a_t) x_{t-1}, b_t) N(x_{t-1}; sqrt(abar_{t-1}) x_0, 1 - abar_{t-1}).
    x0, xt = torch.randn(5, 2), torch.randn(5, 2)
    t = torch.tensor([1, 5, 20, 50, 99])
    mean, var, log_var = diffusion.q_posterior_mean_variance(x0, xt, t)
    b = torch.tensor(diffusion.betas)[t][:, None]
    abp = torch.tensor(diffusion.alphas_cumprod)[t - 1][:, None]
    prec = (1 - b) / b + 1 / (1 - abp)
    want_mean = ((1 - b).sqrt() / b * xt.double() + abp.sqrt() / (1 - abp) * x0.double()) / prec
    torch.testing.assert_close(var.double(), (1 / prec).expand_as(var), rtol=1e-5, atol=0)
    torch.testing.assert_close(mean.double(), want_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(log_var, var.log(), rtol=1e-5, atol=1e-6)


def test_normal_kl_closed_forms():
    # seeded and in float64: in float32 the rounding of exp(lv1 - lv2) etc. reaches ~1e-7, so an
    # unseeded draw failed now and then
    g = torch.Generator().manual_seed(0)
    m, lv = torch.randn(10, dtype=torch.float64, generator=g), torch.randn(10, dtype=torch.float64, generator=g)
    assert torch.allclose(normal_kl(m, lv, m, lv), torch.zeros(10, dtype=torch.float64), atol=1e-7)
    assert normal_kl(torch.tensor(0.0), 0.0, torch.tensor(1.0), 0.0).item() == pytest.approx(0.5)
    # KL(N(0, e) || N(0, 1)) = 0.5 (e - 1 - 1)
    assert normal_kl(torch.tensor(0.0), 1.0, 0.0, 0.0).item() == pytest.approx(0.5 * (math.e - 2), rel=1e-6)


def test_discretized_likelihood_sums_to_one_over_bins():
    x = torch.linspace(-1, 1, 256)  # the 256 bin centres of 8-bit data
    for mu, log_s in [(0.0, -2.0), (0.9, -4.0), (-0.7, -0.5)]:
        ll = discretized_gaussian_log_likelihood(x, means=torch.full_like(x, mu), log_scales=torch.full_like(x, log_s))
        assert ll.exp().sum().item() == pytest.approx(1.0, abs=3e-3)  # tanh CDF approximation


@pytest.mark.parametrize("v, which", [(-1.0, "posterior"), (1.0, "beta"), (0.0, "geometric")])
def test_learned_range_interpolates_in_log_space(diffusion, v, which):
    x = torch.randn(3, 2, 4, 4)
    t = torch.tensor([3, 40, 99])
    model = lambda x_t, t_, **_: torch.cat([torch.zeros_like(x_t), torch.full_like(x_t, v)], 1)  # noqa: E731
    log_var = diffusion.p_mean_variance(model, x, t)["log_variance"][:, 0, 0, 0].double()
    lo = torch.tensor(diffusion.posterior_log_variance_clipped)[t]
    hi = torch.log(torch.tensor(diffusion.betas))[t]
    want = {"posterior": lo, "beta": hi, "geometric": (lo + hi) / 2}[which]
    torch.testing.assert_close(log_var, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(4, 2), (4, 2, 1, 1), (4, 3, 8, 8)])
def test_shapes_and_hybrid_loss_formula(diffusion, shape):
    x0 = torch.rand(shape) * 2 - 1
    t = torch.tensor([0, 1, 50, 99])
    model = lambda x_t, t_, **_: torch.cat([0.5 * x_t, torch.tanh(x_t)], 1)  # noqa: E731
    out = diffusion.p_mean_variance(model, torch.randn(shape), t)
    assert set(out) == {"mean", "variance", "log_variance", "pred_xstart", "eps"}
    assert all(v.shape == torch.Size(shape) for v in out.values())
    losses = diffusion.training_losses(model, x0, t, noise=torch.randn(shape))
    assert all(v.shape == (4,) for v in losses.values())
    torch.testing.assert_close(losses["loss"], losses["mse"] + 0.001 * T * losses["vb"])
    assert torch.isfinite(losses["loss"]).all() and (losses["vb"] >= 0).all()


def test_vb_gradient_does_not_reach_the_mean_output(diffusion):
    x0, t = torch.rand(4, 2, 4, 4) * 2 - 1, torch.tensor([0, 10, 50, 99])
    raw = torch.randn(4, 4, 4, 4, requires_grad=True)
    losses = diffusion.training_losses(lambda x_t, t_, **_: raw, x0, t)
    losses["vb"].sum().backward()
    assert raw.grad[:, :2].abs().max() == 0  # eps channels: L_vlb is stopped
    assert raw.grad[:, 2:].abs().max() > 0  # variance channels: trained by L_vlb
    raw.grad = None
    losses = diffusion.training_losses(lambda x_t, t_, **_: raw, x0, t)
    losses["mse"].sum().backward()
    assert raw.grad[:, :2].abs().max() > 0 and raw.grad[:, 2:].abs().max() == 0


def test_optimal_model_has_lower_hybrid_loss_than_perturbed():
    diffusion = create_diffusion()
    g = torch.Generator().manual_seed(0)
    x0 = DEFAULT_MIXTURE.sample((256, 1, 4, 4), g)
    # t >= 1: there L_t is a KL, minimised in expectation by the true reverse mean and variance.
    t, noise = torch.randint(1, 1000, (256,), generator=g), torch.randn(x0.shape, generator=g)
    best = diffusion.training_losses(OptimalMixtureModel(DEFAULT_MIXTURE, diffusion), x0, t, noise=noise)
    for offset in (0.05, -0.05):
        worse = diffusion.training_losses(OptimalMixtureModel(DEFAULT_MIXTURE, diffusion, offset), x0, t, noise=noise)
        assert best["loss"].mean() < worse["loss"].mean()
        assert best["vb"].mean() < worse["vb"].mean()  # the true reverse variance minimises L_vlb too


def test_model_output_channel_mismatch_is_named(diffusion):
    with pytest.raises(ValueError, match=r"expected 4 channels"):
        diffusion.p_mean_variance(lambda x, t, **_: x, torch.randn(2, 2, 4, 4), torch.tensor([1, 2]))


def test_invalid_configurations_raise():
    betas = get_named_beta_schedule("linear", 100)
    with pytest.raises(ValueError, match="cannot train"):
        GaussianDiffusion(betas, loss_type="mse")
    with pytest.raises(ValueError, match="unknown ModelVarType"):
        GaussianDiffusion(betas, model_var_type="learned_sigma")
    with pytest.raises(ValueError, match="betas"):
        GaussianDiffusion(np.array([0.1, 1.5]))
    d = GaussianDiffusion(betas, model_var_type="fixed_small", loss_type=LossType.MSE)
    assert d.model_var_type is ModelVarType.FIXED_SMALL and not d.learns_sigma
