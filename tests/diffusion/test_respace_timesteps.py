"""Respacing (improved DDPM section 4) and the training timestep samplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasdm_aug.diffusion import (
    GaussianDiffusion,
    LossSecondMomentResampler,
    SpacedDiffusion,
    UniformSampler,
    create_diffusion,
    create_named_schedule_sampler,
    get_named_beta_schedule,
    logsnr_timesteps,
    respace,
    space_timesteps,
)
from nasdm_aug.utils import InputError

T = 100


def _model(x_t, t, **_):
    # Depends on t so a wrong timestep map changes the output.
    s = (t.float() / 1000).reshape(-1, *([1] * (x_t.ndim - 1)))
    return torch.cat([torch.sin(x_t + s), torch.tanh(x_t * s)], 1)


@pytest.mark.parametrize(
    "spec, want",
    [
        ("10", set(range(0, 100, 11))),
        ("1,1", {0, 50}),
        ("ddim25", set(range(0, 100, 4))),
        ("2,3", {0, 49, 50, 74, 99}),
        ([2, 3], {0, 49, 50, 74, 99}),
    ],
)
def test_space_timesteps_table(spec, want):
    assert space_timesteps(T, spec) == want


def test_space_timesteps_counts_and_ends():
    steps = space_timesteps(1000, "50")
    assert len(steps) == 50 and min(steps) == 0 and max(steps) == 999
    assert len(space_timesteps(1000, "10,15,20")) == 45


@pytest.mark.parametrize("spec, match", [("60,60", "cannot take 60"), ("ddim33", "exactly 33"), ("ten", "cannot parse"), ("0", "positive")])
def test_space_timesteps_rejects(spec, match):
    with pytest.raises(ValueError, match=match):
        space_timesteps(T, spec)


def test_all_steps_equal_the_base_process():
    base = GaussianDiffusion(get_named_beta_schedule("linear", T))
    spaced = SpacedDiffusion(range(T), get_named_beta_schedule("linear", T))
    np.testing.assert_allclose(spaced.betas, base.betas, rtol=1e-10)
    x0, xt, t = torch.rand(4, 2, 4, 4) * 2 - 1, torch.randn(4, 2, 4, 4), torch.tensor([0, 1, 50, 99])
    a, b = base.p_mean_variance(_model, xt, t), spaced.p_mean_variance(_model, xt, t)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    noise = torch.randn_like(x0)
    la, lb = base.training_losses(_model, x0, t, noise=noise), spaced.training_losses(_model, x0, t, noise=noise)
    for key in la:
        torch.testing.assert_close(la[key], lb[key])


def test_respaced_process_keeps_alphas_cumprod_and_maps_timesteps():
    base = create_diffusion(steps=T)
    spaced = respace(base, "10")
    kept = sorted(space_timesteps(T, "10"))
    np.testing.assert_allclose(spaced.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-10)
    seen = []
    spaced.p_mean_variance(lambda x, t, **_: (seen.append(t.tolist()), _model(x, t))[1], torch.randn(2, 1, 2, 2), torch.tensor([0, 9]))
    assert seen == [[kept[0], kept[9]]]
    # Learned variance bounds are those of the respaced process, not the base one.
    assert spaced.betas[-1] == pytest.approx(1 - base.alphas_cumprod[99] / base.alphas_cumprod[kept[-2]])


def test_create_diffusion_with_respacing_and_nested_respace():
    d = create_diffusion(steps=T, schedule="cosine", timestep_respacing="20")
    assert d.num_timesteps == 20 and d.original_num_steps == T
    nested = respace(d, 5)
    assert set(nested.use_timesteps) <= set(d.use_timesteps) and nested.num_timesteps == 5


@pytest.mark.parametrize("count", [1, 2, 10, 50, 1000])
def test_logsnr_timesteps_exact_count(count):
    ab = create_diffusion().alphas_cumprod
    steps = sorted(logsnr_timesteps(ab, count))
    assert len(steps) == count and steps[-1] == 999 and (count == 1 or steps[0] == 0)
    lam = 0.5 * np.log(ab[steps] / (1 - ab[steps]))
    if count == 10:  # evenly spaced in log-SNR to within one discrete step
        assert np.ptp(np.diff(lam)) < 0.1


def test_uniform_sampler_is_seeded_and_unweighted():
    sampler = UniformSampler(create_diffusion(steps=T))
    t1, w1 = sampler.sample(64, "cpu", generator=torch.Generator().manual_seed(3))
    t2, _ = sampler.sample(64, "cpu", generator=torch.Generator().manual_seed(3))
    assert torch.equal(t1, t2) and t1.dtype == torch.long and 0 <= t1.min() and t1.max() < T
    assert torch.equal(w1, torch.ones(64))


def test_loss_aware_sampler_prefers_high_loss_steps_and_stays_unbiased():
    d = create_diffusion(steps=T)
    sampler = LossSecondMomentResampler(d, history_per_term=2)
    assert np.allclose(sampler.weights(), 1.0)  # uniform until warmed up
    ts = torch.arange(T).repeat(2)
    sampler.update_with_local_losses(ts, torch.where(ts < 10, 10.0, 1.0))
    p = sampler.weights() / sampler.weights().sum()
    assert p[:10].sum() == pytest.approx(10 * 10 / (10 * 10 + 90) * 0.999 + 0.001 * 0.1, rel=1e-6)
    t, w = sampler.sample(4000, "cpu", generator=torch.Generator().manual_seed(0))
    assert (t < 10).float().mean() > 0.45
    torch.testing.assert_close(w, torch.as_tensor(1 / (T * p[t.numpy()]), dtype=torch.float32))


def test_named_schedule_sampler_registry():
    d = create_diffusion(steps=T)
    assert isinstance(create_named_schedule_sampler("loss-second-moment", d), LossSecondMomentResampler)
    with pytest.raises(InputError, match="uniform"):
        create_named_schedule_sampler("importance", d)
