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
    PerSampleNoise,
    SamplerOptions,
    get_sampler,
    sample,
    sample_seed,
)
from nasdm_aug.utils import InputError


def run(name, model, shape, diffusion, steps, **kwargs):
    eta = kwargs.pop("eta", 0.0)
    return sample(model, shape, diffusion=diffusion, options=SamplerOptions(name, steps=steps, eta=eta), **kwargs)

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
    x = run(name, model, SHAPE, diffusion, 10, seed=7)
    assert x.shape == SHAPE and x.dtype == torch.float32
    assert x.sum().item() == pytest.approx(REGRESSION_SUMS[name], abs=1e-3)
    assert torch.equal(x, run(name, model, SHAPE, diffusion, 10, seed=7))
    assert not torch.equal(x, run(name, model, SHAPE, diffusion, 10, seed=8))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_result_does_not_depend_on_batch_size(small, name):
    diffusion, model = small
    whole = run(name, model, (5, 1, 4, 4), diffusion, 8, seed=3)
    first = run(name, model, (2, 1, 4, 4), diffusion, 8, seed=3)
    rest = run(name, model, (3, 1, 4, 4), diffusion, 8, seed=3, sample_offset=2)
    torch.testing.assert_close(torch.cat([first, rest]), whole, rtol=0, atol=1e-6)
    picked = run(name, model, (2, 1, 4, 4), diffusion, 8, seed=3, indices=[4, 1])
    torch.testing.assert_close(picked, whole[[4, 1]], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_intermediates_run_from_noise_to_output(small, name):
    diffusion, model = small
    x, trace = run(name, model, SHAPE, diffusion, 6, seed=0, return_intermediates=True)
    assert len(trace) == 7 and torch.equal(trace[-1], x)
    g = torch.Generator().manual_seed(sample_seed(0, 1))
    torch.testing.assert_close(trace[0][1], torch.randn(SHAPE[1:], generator=g))  # x_T of sample 1


def test_a_process_with_the_asked_steps_is_not_respaced_again(small):
    diffusion, model = small
    spaced = respace(diffusion, 10, spacing="logsnr")
    a = run("ddim", model, SHAPE, spaced, 10, seed=1)
    b = run("ddim", model, SHAPE, diffusion, 10, seed=1)
    assert torch.equal(a, b)
    c = sample(model, SHAPE, diffusion=diffusion, options=SamplerOptions("ddim", steps=10, spacing="uniform"), seed=1)
    assert not torch.allclose(a, c)  # the spacing reaches the respacing


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_the_caller_owns_noise_and_timesteps(small, name):
    """The signature in the style of k-diffusion: the sampler walks every step of the process it is
    handed, from the x it is handed, drawing later noise only from the noise source it is handed;
    sample() is exactly that set-up."""
    diffusion, model = small
    spaced = respace(diffusion, 6, spacing="logsnr")
    noise = PerSampleNoise(SHAPE[1:], range(3), seed=4)
    calls, seen = [], []
    x = get_sampler(name)(model, noise(), spaced, lambda: calls.append(1) or noise(), SamplerOptions(name, steps=6),
                          callback=lambda info: seen.append(info["i"]))
    assert seen == [5, 4, 3, 2, 1, 0]
    assert len(calls) == {"ddpm": 5, "ddim": 0, "dpmpp_2m": 0}[name]  # no noise on the last step; ODE solvers none
    torch.testing.assert_close(x, run(name, model, SHAPE, diffusion, 6, seed=4), rtol=0, atol=0)


def test_ddim_eta_one_adds_noise(small):
    diffusion, model = small
    a = run("ddim", model, SHAPE, diffusion, 10, seed=1)
    b = run("ddim", model, SHAPE, diffusion, 10, seed=1, eta=1.0)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"shape": (2,)}, "shape"), ({"indices": [0]}, "indices"), ({"seed": -1}, "seed")],
)
def test_bad_arguments(small, kwargs, match):
    diffusion, model = small
    args = {"shape": SHAPE, **kwargs}
    with pytest.raises(ValueError, match=match):
        run("ddim", model, args.pop("shape"), diffusion, 5, **args)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"sampler": "euler"}, "unknown sampler 'euler'; valid: ddim, ddpm, dpmpp_2m"),
     ({"steps": -3}, "steps must be an integer >= 1, got -3"), ({"spacing": "cubic"}, "spacing"),
     ({"sampler": "ddim", "eta": -1.0}, "eta must be >= 0"),
     ({"sampler": "ddpm", "eta": 0.5}, "eta is an option of the ddim sampler, not of 'ddpm'")],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplerOptions(**kwargs)


def test_options_resolve_each_samplers_default_steps_and_read_old_flat_records():
    for name, spec in SAMPLERS.items():
        assert SamplerOptions(name).steps == spec.default_steps == DEFAULT_STEPS_BY_SAMPLER[name]
    assert SamplerOptions("ddim").steps == 250 and SamplerOptions().steps == DEFAULT_STEPS == 50
    old = {"sampler": "ddim", "steps": 0, "eta": 0.3, "seed": 2}
    assert SamplerOptions.nest_flat_keys(old) == {"seed": 2, "sampling": {"sampler": "ddim", "eta": 0.3}}
    assert SamplerOptions.nest_flat_keys({"seed": 2}) == {"seed": 2}


def test_registry():
    assert DEFAULT_SAMPLER in SAMPLERS and DEFAULT_STEPS <= 50
    with pytest.raises(InputError, match="ddim"):
        get_sampler("euler")


# Known answer: data mean 0.130, std 0.4526 per coordinate; 4096 coordinates give a Monte-Carlo
# standard error of about 0.007 (mean) and 0.005 (std); the tolerance 0.02 is ~3-4 standard errors
# and well below the error of too few steps (e.g. DDIM at 10 steps: std 0.34).
TOLERANCE = 0.02


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_default_steps_reproduce_data_mean_and_std(paper, name):
    diffusion, model = paper
    x = sample(model, (16, 1, 16, 16), diffusion=diffusion, options=SamplerOptions(name), seed=0)  # its default steps
    assert abs(x.mean().item() - DEFAULT_MIXTURE.mean) < TOLERANCE
    assert abs(x.std().item() - DEFAULT_MIXTURE.std) < TOLERANCE
    # Bimodality: the fraction below the dip between the modes (-0.17) matches the mixture.
    assert abs((x < -0.17).float().mean().item() - DEFAULT_MIXTURE.cdf(torch.tensor(-0.17)).item()) < TOLERANCE
