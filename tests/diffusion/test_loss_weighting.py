"""The MSE term's per-timestep weights (Min-SNR-gamma, P2) against their closed forms, and the
variational-bound term that trains the variance left unweighted."""

import numpy as np
import pytest
import torch

from nasdm_aug.diffusion.respace import create_diffusion, respace
from nasdm_aug.training.config import DiffusionSettings


def _losses(weighting, t, **kw):
    d = create_diffusion(steps=1000, loss_weighting=weighting, **kw)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(len(t), 3, 8, 8, generator=gen) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen)
    out = torch.randn(len(t), 6, 8, 8, generator=gen)  # a fixed "model" output: eps part, then v
    return d, d.training_losses(lambda *a, **k: out, x0, t, noise=noise)


def test_min_snr_weights_are_the_closed_form():
    d = create_diffusion(loss_weighting="min-snr", snr_gamma=5.0)
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))  # the linear schedule at T = 1000
    snr = abar / (1 - abar)
    np.testing.assert_allclose(d.snr, snr, rtol=1e-12)
    np.testing.assert_allclose(d.mse_weights, np.minimum(snr, 5.0) / snr, rtol=1e-12)
    # high noise (SNR <= gamma): weight exactly 1; low noise: gamma / SNR, far below 1 at t = 0
    high = snr <= 5.0
    assert high.any() and (~high).any()
    np.testing.assert_allclose(d.mse_weights[high], 1.0, rtol=1e-12)
    assert d.mse_weights[0] == pytest.approx(5.0 / snr[0]) and d.mse_weights[0] < 1e-3
    # x_0 prediction takes min(SNR, gamma) itself
    d0 = create_diffusion(loss_weighting="min-snr", mean_type="start_x", snr_gamma=2.0)
    np.testing.assert_allclose(d0.mse_weights, np.minimum(snr, 2.0), rtol=1e-12)


def test_p2_weights_are_the_closed_form():
    d = create_diffusion(loss_weighting="p2", p2_gamma=0.5, p2_k=2.0)
    np.testing.assert_allclose(d.mse_weights, 1.0 / (2.0 + d.snr) ** 0.5, rtol=1e-12)


def test_weighting_scales_the_mse_term_only():
    t = torch.tensor([0, 10, 300, 999])
    d0, plain = _losses("none", t)
    for weighting in ("min-snr", "p2"):
        d, w = _losses(weighting, t)
        weights = torch.as_tensor(d.mse_weights[t.numpy()], dtype=torch.float32)
        torch.testing.assert_close(w["mse"], plain["mse"])  # reported unweighted
        torch.testing.assert_close(w["vb"], plain["vb"])  # the variance's bound term is untouched
        torch.testing.assert_close(w["loss"] - plain["loss"], (weights - 1) * plain["mse"], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(w["loss"], plain["loss"])


def test_weighting_survives_respacing_and_settings():
    d = create_diffusion(loss_weighting="min-snr", snr_gamma=3.0)
    r = respace(d, 25)
    assert (r.loss_weighting, r.snr_gamma) == ("min-snr", 3.0)
    s = DiffusionSettings(loss_weighting="p2", p2_gamma=0.5)
    built = s.build()
    assert (built.loss_weighting, built.p2_gamma, built.p2_k) == ("p2", 0.5, 1.0)
    # a config written before the weighting existed loads as the paper's unweighted loss
    old = DiffusionSettings.from_dict({"steps": 1000, "schedule": "linear", "var_type": "learned_range",
                                       "loss_type": "hybrid", "mean_type": "epsilon", "vb_weight": 0.001})
    assert old.loss_weighting == "none" and np.all(old.build().mse_weights == 1.0)


def test_bad_weighting_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"^unknown diffusion loss_weighting 'snr'; valid: none, min-snr, p2$"):
        DiffusionSettings(loss_weighting="snr")
    with pytest.raises(ValueError, match=r"^unknown loss weighting 'snr'; valid: none, min-snr, p2$"):
        create_diffusion(loss_weighting="snr")
    with pytest.raises(ValueError, match="snr_gamma must be a finite number > 0, got 0"):
        DiffusionSettings(snr_gamma=0.0)


def test_v_prediction_round_trips_and_its_weights():
    d = create_diffusion(mean_type="v", loss_weighting="min-snr", snr_gamma=5.0)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 3, 8, 8, generator=gen) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.tensor([0, 100, 500, 999])
    xt = d.q_sample(x0, t, noise)
    v = d.v_target(x0, t, noise)
    # the exact v gives back x_0 and eps
    torch.testing.assert_close(d.predict_xstart_from_v(xt, t, v), x0, rtol=1e-4, atol=1e-4)
    out = d.p_mean_variance(lambda x, ts: torch.cat([v, torch.zeros_like(v)], 1), xt, t, clip_denoised=False)
    torch.testing.assert_close(out["pred_xstart"], x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["eps"][1:], noise[1:], rtol=1e-3, atol=1e-3)
    # v = sqrt(abar) eps - sqrt(1 - abar) x_0 at one point, by hand
    ab = d.alphas_cumprod[500]
    torch.testing.assert_close(v[2], (np.sqrt(ab) * noise[2] - np.sqrt(1 - ab) * x0[2]).float())
    # a perfect v model has zero MSE; Min-SNR on v is min(SNR, gamma) / (SNR + 1)
    losses = d.training_losses(lambda x, ts: torch.cat([v, torch.zeros_like(v)], 1), x0, t, noise=noise)
    assert losses["mse"].abs().max() < 1e-10
    np.testing.assert_allclose(d.mse_weights, np.minimum(d.snr, 5.0) / (d.snr + 1.0), rtol=1e-12)
    # the weights are one x_0-loss weighting expressed per target: eps and x_0 agree with v
    for mean_type, per_x0 in (("epsilon", 1.0 / d.snr), ("start_x", np.ones_like(d.snr))):
        other = create_diffusion(mean_type=mean_type, loss_weighting="min-snr", snr_gamma=5.0)
        np.testing.assert_allclose(other.mse_weights / per_x0, d.mse_weights * (d.snr + 1.0), rtol=1e-10)
    assert DiffusionSettings(mean_type="v").build().model_mean_type.value == "v"


@pytest.mark.parametrize("weighting", ["none", "min-snr"])
def test_pixel_weight_scales_each_pixels_error_in_the_loss_only(weighting):
    t = torch.tensor([0, 10, 300, 999])
    d = create_diffusion(steps=1000, loss_weighting=weighting, mean_type="start_x")
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 3, 8, 8, generator=gen) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen)
    out = torch.randn(4, 6, 8, 8, generator=gen)
    model = lambda *a, **k: out  # noqa: E731
    plain = d.training_losses(model, x0, t, noise=noise)
    ones = d.training_losses(model, x0, t, noise=noise, pixel_weight=torch.ones(4, 1, 8, 8))
    torch.testing.assert_close(ones["loss"], plain["loss"])
    w = torch.ones(4, 1, 8, 8)
    w[:, :, 2:4, 5] = 7.0  # a few "gap" pixels weigh 7
    weighted = d.training_losses(model, x0, t, noise=noise, pixel_weight=w)
    torch.testing.assert_close(weighted["mse"], plain["mse"])  # reported unweighted
    torch.testing.assert_close(weighted["vb"], plain["vb"])  # the variance's bound term is untouched
    sq = (x0 - out[:, :3]) ** 2  # start_x: the MSE target is x_0 itself
    step_w = torch.as_tensor(d.mse_weights[t.numpy()], dtype=torch.float32) if weighting != "none" else 1.0
    expected = (sq * w).mean(dim=(1, 2, 3)) * step_w + d.vb_weight * 1000 * plain["vb"]
    torch.testing.assert_close(weighted["loss"], expected, rtol=1e-5, atol=1e-6)
    assert (weighted["loss"] > plain["loss"]).all()
