"""Classifier-free guidance: one batched forward, eps-only guidance, scale 1 = conditional model."""

from __future__ import annotations

import pytest
import torch

from nasdm_aug.diffusion import create_diffusion
from nasdm_aug.sampling import SamplerOptions, classifier_free_guidance, sample


class ToyConditional:
    """A conditional 'network' with the nets' interface: forward(x, t, cond) and null_condition(cond).

    Output [N, 2C, ...]: eps = 0.5 x + cond, v = tanh(cond) - 0.1 (differs between cond and null).
    """

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []
        self.conds: list[torch.Tensor] = []

    def null_condition(self, cond: torch.Tensor) -> torch.Tensor:
        return torch.full_like(cond, -0.25)

    def __call__(self, x, t, cond, scale_map=None):
        self.batch_sizes.append(x.shape[0])
        self.conds.append(cond)
        eps = 0.5 * x + cond + (0 if scale_map is None else scale_map)
        return torch.cat([eps, torch.tanh(cond).expand_as(x) - 0.1], dim=1)


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, 4, generator=g)  # C = 2: the split must follow x, not a fixed 3
    cond = torch.randn(3, 2, 4, 4, generator=g)
    return x, torch.tensor([5, 6, 7]), cond


def test_scale_one_equals_the_conditional_model(inputs):
    x, t, cond = inputs
    model = ToyConditional()
    assert torch.equal(classifier_free_guidance(model, 1.0)(x, t, cond=cond), model(x, t, cond=cond))


@pytest.mark.parametrize("scale", [0.0, 2.5, 7.0])
def test_guides_eps_only_with_one_batched_forward(inputs, scale):
    x, t, cond = inputs
    model = ToyConditional()
    out = classifier_free_guidance(model, scale)(x, t, cond=cond)
    assert model.batch_sizes == [3 if scale == 0 else 6]  # one forward of [cond; null]
    c_out, u_out = model(x, t, cond=cond), model(x, t, cond=model.null_condition(cond))
    torch.testing.assert_close(out[:, :2], u_out[:, :2] + scale * (c_out[:, :2] - u_out[:, :2]))
    want_var = u_out[:, 2:] if scale == 0 else c_out[:, 2:]  # the conditional variance is kept
    torch.testing.assert_close(out[:, 2:], want_var)


@pytest.mark.parametrize("scale", [0.0, 2.5])
def test_two_forwards_give_the_batched_result(inputs, scale):
    x, t, cond = inputs
    model = ToyConditional()
    shift = torch.arange(3.0).reshape(3, 1, 1, 1)
    two = classifier_free_guidance(model, scale, batched=False)(x, t, cond=cond, scale_map=shift)
    assert model.batch_sizes == ([3] if scale == 0 else [3, 3])
    torch.testing.assert_close(two, classifier_free_guidance(ToyConditional(), scale)(x, t, cond=cond, scale_map=shift))


@pytest.mark.parametrize("batched", [True, False])
def test_one_condition_reaches_the_model_as_the_same_tensors_every_step(inputs, batched):
    """What lets the network keep its SPADE maps across steps (DiffusionUNet.reuse_condition)."""
    x, t, cond = inputs
    model = ToyConditional()
    fn = classifier_free_guidance(model, 2.0, batched=batched)
    a, b = fn(x, t, cond=cond), fn(x * 2, t, cond=cond)
    n = len(model.conds) // 2
    assert n == (1 if batched else 2) and all(p is q for p, q in zip(model.conds[:n], model.conds[n:]))
    cond.add_(1.0)  # changed in place: new null and doubled tensors
    c = fn(x, t, cond=cond)
    assert model.conds[-1] is not model.conds[n - 1] and not torch.equal(a, c)  # the null (or [cond; null]) is new
    torch.testing.assert_close(b, classifier_free_guidance(ToyConditional(), 2.0)(x * 2, t, cond=cond - 1.0))


def test_batched_kwargs_are_doubled(inputs):
    x, t, cond = inputs
    model = ToyConditional()
    shift = torch.arange(3.0).reshape(3, 1, 1, 1)
    out = classifier_free_guidance(model, 3.0)(x, t, cond=cond, scale_map=shift)
    torch.testing.assert_close(out[:, :2] - shift, classifier_free_guidance(ToyConditional(), 3.0)(x, t, cond=cond)[:, :2])


def test_rejects_bad_scale_and_models_without_null():
    with pytest.raises(ValueError, match="scale"):
        classifier_free_guidance(ToyConditional(), -1.0)
    with pytest.raises(ValueError, match="scale"):
        classifier_free_guidance(ToyConditional(), float("nan"))
    with pytest.raises(TypeError, match="null_condition"):
        classifier_free_guidance(lambda x, t, cond: x, 2.0)


def test_guided_model_fn_drives_a_sampler(inputs):
    _, _, cond = inputs
    diffusion = create_diffusion(steps=50)
    guided = classifier_free_guidance(ToyConditional(), 2.0)
    x = sample(guided, (3, 2, 4, 4), {"cond": cond}, diffusion=diffusion, options=SamplerOptions("dpmpp_2m", steps=5),
               seed=0)
    assert x.shape == (3, 2, 4, 4) and torch.isfinite(x).all() and x.abs().max() <= 1


def test_guided_timesteps_follow_the_noise_level_of_each_step():
    from nasdm_aug.sampling import guided_timesteps

    d = create_diffusion(1000, "linear")
    ab = torch.as_tensor(d.alphas_cumprod, dtype=torch.float64)
    sigma = ((1 - ab) / ab).sqrt()
    steps = guided_timesteps(d.alphas_cumprod, (0.5, 5.0))
    # sigma rises with t, so the guided steps are one run: the first above 0.5 up to the last at <= 5
    inside = torch.nonzero(steps).flatten()
    assert torch.equal(inside, torch.arange(int(inside[0]), int(inside[-1]) + 1))
    assert sigma[inside[0]] > 0.5 >= sigma[inside[0] - 1] and sigma[inside[-1]] <= 5.0 < sigma[inside[-1] + 1]
    # the linear schedule's sigma_t by hand at one step: beta_t = 1e-4 + (0.02 - 1e-4) t / 999
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    ab_hand = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(sigma[300], ((1 - ab_hand[300]) / ab_hand[300]).sqrt())
    assert guided_timesteps(d.alphas_cumprod, None).all()


def test_outside_the_interval_the_conditional_model_runs_alone(inputs):
    x, _, cond = inputs
    model = ToyConditional()
    guided = torch.zeros(10, dtype=torch.bool)
    guided[5:8] = True
    fn = classifier_free_guidance(model, 2.5, guided=guided)
    outside, inside = torch.tensor([2, 2, 2]), torch.tensor([6, 6, 6])
    torch.testing.assert_close(fn(x, outside, cond=cond), model(x, outside, cond=cond), rtol=0, atol=0)
    model.batch_sizes.clear()
    fn(x, outside, cond=cond)
    assert model.batch_sizes == [3]  # no unconditional half
    model.batch_sizes.clear()
    torch.testing.assert_close(fn(x, inside, cond=cond), classifier_free_guidance(model, 2.5)(x, inside, cond=cond))
    assert model.batch_sizes[0] == 6
    # a batch whose rows stand at different steps: each row as its own step would have it
    mixed = torch.tensor([2, 6, 9])
    out = fn(x, mixed, cond=cond)
    full = classifier_free_guidance(model, 2.5)(x, mixed, cond=cond)
    plain = model(x, mixed, cond=cond)
    torch.testing.assert_close(out[1], full[1])
    torch.testing.assert_close(out[[0, 2]], plain[[0, 2]])


def test_guidance_interval_is_checked():
    from nasdm_aug.sampling import check_guidance_interval

    assert check_guidance_interval(None) is None and check_guidance_interval([0, 3]) == (0.0, 3.0)
    for bad in ((2, 1), (-1, 1), (1, 1), (1,), "ab", (float("nan"), 1)):
        with pytest.raises(ValueError, match="guidance interval"):
            check_guidance_interval(bad)
