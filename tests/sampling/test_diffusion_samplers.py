"""Samplers: seeded regressions, per-sample noise (batch-size independence) and the known answer
on Gaussian-mixture data, where the optimal model is closed-form."""

from __future__ import annotations

import pytest
import torch

from nasdm_aug.diffusion import DEFAULT_MIXTURE, OptimalMixtureModel, create_diffusion, respace
from nasdm_aug.sampling import (
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    DEFAULT_STEPS_BY_SAMPLER,
    SAMPLERS,
    get_sampler,
    sample_ddim,
    sample_seed,
)

# sum of x_0 for shape (3, 1, 4, 4), 10 steps, seed 7, 100-step linear process, optimal model.
REGRESSION_SUMS = {"ddpm": 3.0872679, "ddim": 5.1738048, "dpmpp_2m": 4.5469031}
SHAPE = (3, 1, 4, 4)


@pytest.fixture(scope="module")
def small():
    diffusion = create_diffusion(steps=100)
    return diffusion, OptimalMixtureModel(DEFAULT_MIXTURE, diffusion)


@pytest.fixture(scope="module")
def paper():
    diffusion = create_diffusion()  # 1000 linear steps, learned range: the trained process
    return diffusion, OptimalMixtureModel(DEFAULT_MIXTURE, diffusion)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_seeded_regression(small, name):
    diffusion, model = small
    x = get_sampler(name)(model, SHAPE, diffusion=diffusion, steps=10, seed=7)
    assert x.shape == SHAPE and x.dtype == torch.float32
    assert x.sum().item() == pytest.approx(REGRESSION_SUMS[name], abs=1e-3)
    assert torch.equal(x, get_sampler(name)(model, SHAPE, diffusion=diffusion, steps=10, seed=7))
    assert not torch.equal(x, get_sampler(name)(model, SHAPE, diffusion=diffusion, steps=10, seed=8))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_result_does_not_depend_on_batch_size(small, name):
    diffusion, model = small
    fn = get_sampler(name)
    whole = fn(model, (5, 1, 4, 4), diffusion=diffusion, steps=8, seed=3)
    first = fn(model, (2, 1, 4, 4), diffusion=diffusion, steps=8, seed=3)
    rest = fn(model, (3, 1, 4, 4), diffusion=diffusion, steps=8, seed=3, sample_offset=2)
    torch.testing.assert_close(torch.cat([first, rest]), whole, rtol=0, atol=1e-6)
    picked = fn(model, (2, 1, 4, 4), diffusion=diffusion, steps=8, seed=3, indices=[4, 1])
    torch.testing.assert_close(picked, whole[[4, 1]], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_intermediates_run_from_noise_to_output(small, name):
    diffusion, model = small
    x, trace = get_sampler(name)(model, SHAPE, diffusion=diffusion, steps=6, seed=0, return_intermediates=True)
    assert len(trace) == 7 and torch.equal(trace[-1], x)
    g = torch.Generator().manual_seed(sample_seed(0, 1))
    torch.testing.assert_close(trace[0][1], torch.randn(SHAPE[1:], generator=g))  # x_T of sample 1


def test_steps_none_uses_the_given_process(small):
    diffusion, model = small
    spaced = respace(diffusion, 10, spacing="logsnr")
    a = sample_ddim(model, SHAPE, diffusion=spaced, seed=1)
    b = sample_ddim(model, SHAPE, diffusion=diffusion, steps=10, seed=1, spacing="logsnr")
    assert torch.equal(a, b)


def test_ddim_eta_one_adds_noise(small):
    diffusion, model = small
    a = sample_ddim(model, SHAPE, diffusion=diffusion, steps=10, seed=1)
    b = sample_ddim(model, SHAPE, diffusion=diffusion, steps=10, seed=1, eta=1.0)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="eta"):
        sample_ddim(model, SHAPE, diffusion=diffusion, steps=10, eta=-1)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"shape": (2,)}, "shape"), ({"indices": [0]}, "indices"), ({"seed": -1}, "seed"), ({"spacing": "cubic"}, "spacing")],
)
def test_bad_arguments(small, kwargs, match):
    diffusion, model = small
    args = {"shape": SHAPE, **kwargs}
    with pytest.raises(ValueError, match=match):
        sample_ddim(model, args.pop("shape"), diffusion=diffusion, steps=5, **args)


def test_registry():
    assert DEFAULT_SAMPLER in SAMPLERS and DEFAULT_STEPS <= 50
    assert DEFAULT_STEPS_BY_SAMPLER[DEFAULT_SAMPLER] == DEFAULT_STEPS and set(DEFAULT_STEPS_BY_SAMPLER) == set(SAMPLERS)
    with pytest.raises(KeyError, match="ddim"):
        get_sampler("euler")


# Known answer: data mean 0.130, std 0.4526 per coordinate; 4096 coordinates give a Monte-Carlo
# standard error of about 0.007 (mean) and 0.005 (std); the tolerance 0.02 is ~3-4 standard errors
# and well below the error of too few steps (e.g. DDIM at 10 steps: std 0.34).
TOLERANCE = 0.02


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_default_steps_reproduce_data_mean_and_std(paper, name):
    diffusion, model = paper
    x = get_sampler(name)(model, (16, 1, 16, 16), diffusion=diffusion, steps=DEFAULT_STEPS_BY_SAMPLER[name], seed=0)
    assert abs(x.mean().item() - DEFAULT_MIXTURE.mean) < TOLERANCE
    assert abs(x.std().item() - DEFAULT_MIXTURE.std) < TOLERANCE
    # Bimodality: the fraction below the dip between the modes (-0.17) matches the mixture.
    assert abs((x < -0.17).float().mean().item() - DEFAULT_MIXTURE.cdf(torch.tensor(-0.17)).item()) < TOLERANCE
