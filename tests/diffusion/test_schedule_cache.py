"""The schedule arrays become device tensors once per device and are reused: a training or sampling
step on a GPU copies nothing from the host. The values are the float64 numpy path's, bit for bit."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

from nasdm_aug.diffusion import GaussianDiffusion, ModelVarType, create_diffusion, extract_into_tensor, respace
from nasdm_aug.diffusion.gaussian import ModelMeanType


@pytest.fixture
def host_copies(monkeypatch):
    """Count every tensor made from host data for another device (or from a numpy array at all): the
    conversions the schedule cache exists to avoid. Meta tensors stand in for a GPU's."""
    calls: list[str] = []
    as_tensor, to = torch.as_tensor, torch.Tensor.to

    def counting_as_tensor(data, *args, **kwargs):
        out = as_tensor(data, *args, **kwargs)
        if isinstance(data, np.ndarray) or (isinstance(data, torch.Tensor) and out.device != data.device):
            calls.append("as_tensor")
        return out

    def counting_to(self, *args, **kwargs):
        out = to(self, *args, **kwargs)
        if out.device != self.device:
            calls.append("to")
        return out

    monkeypatch.setattr(torch, "as_tensor", counting_as_tensor)
    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    return calls


def _numpy_path(d: GaussianDiffusion, arr: np.ndarray, t: torch.Tensor, nd: int) -> torch.Tensor:
    """What every schedule lookup computed before the cache: a fresh tensor of the float64 array."""
    return extract_into_tensor(np.asarray(arr), t, nd)


@pytest.mark.parametrize("var_type", list(ModelVarType))
@pytest.mark.parametrize("mean_type", list(ModelMeanType))
def test_steps_convert_each_schedule_once_and_match_the_numpy_path(host_copies, var_type, mean_type):
    loss_type = "mse" if var_type in (ModelVarType.FIXED_SMALL, ModelVarType.FIXED_LARGE) else "hybrid"
    d = create_diffusion(steps=40, var_type=var_type, mean_type=mean_type, loss_type=loss_type,
                         loss_weighting="min-snr")
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 2, 4, 4, generator=gen) * 2 - 1
    t = torch.tensor([0, 17, 39])
    channels = 4 if d.learns_sigma else 2
    out = torch.randn(3, channels, 4, 4, generator=gen)
    model = lambda x, tt: out  # noqa: E731
    noise = torch.randn(3, 2, 4, 4, generator=gen)
    first = d.training_losses(model, x0, t, noise=noise), d.p_mean_variance(model, x0, t)
    made = len(host_copies)
    assert made > 0  # the first step makes the CPU tensors
    again = d.training_losses(model, x0, t, noise=noise), d.p_mean_variance(model, x0, t)
    assert len(host_copies) == made, "a later step converted a schedule array again"
    for a, b in zip(first, again):
        assert all(torch.equal(a[k], b[k]) for k in a)

    # bit-identical to the float64 numpy path
    nd = x0.ndim
    log_var = {
        ModelVarType.FIXED_SMALL: _numpy_path(d, d.posterior_log_variance_clipped, t, nd).expand_as(x0),
        ModelVarType.FIXED_LARGE: _numpy_path(
            d, np.log(np.append(d.posterior_variance[1], d.betas[1:])), t, nd).expand_as(x0),
        ModelVarType.LEARNED: out[:, 2:],
    }.get(var_type)
    if var_type is ModelVarType.LEARNED_RANGE:
        frac = (out[:, 2:] + 1) / 2
        log_var = (frac * _numpy_path(d, np.log(d.betas), t, nd)
                   + (1 - frac) * _numpy_path(d, d.posterior_log_variance_clipped, t, nd))
    assert torch.equal(first[1]["log_variance"], log_var)
    mean, var, lv = d.q_mean_variance(x0, t)
    assert torch.equal(mean, _numpy_path(d, d.sqrt_alphas_cumprod, t, nd) * x0)
    assert torch.equal(var, _numpy_path(d, 1.0 - d.alphas_cumprod, t, nd).expand_as(x0))
    assert torch.equal(lv, _numpy_path(d, np.log(1.0 - d.alphas_cumprod), t, nd).expand_as(x0))
    x_t = d.q_sample(x0, t, noise)
    assert torch.equal(x_t, _numpy_path(d, d.sqrt_alphas_cumprod, t, nd) * x0
                       + _numpy_path(d, d.sqrt_one_minus_alphas_cumprod, t, nd) * noise)
    pm, pv, plv = d.q_posterior_mean_variance(x0, x_t, t)
    assert torch.equal(pm, _numpy_path(d, d.posterior_mean_coef1, t, nd) * x0
                       + _numpy_path(d, d.posterior_mean_coef2, t, nd) * x_t)
    assert torch.equal(pv, _numpy_path(d, d.posterior_variance, t, nd).expand_as(x0))
    eps = d.predict_eps_from_xstart(x_t, t, x0)
    assert torch.equal(eps, (_numpy_path(d, d.sqrt_recip_alphas_cumprod, t, nd) * x_t - x0)
                       / _numpy_path(d, d.sqrt_recipm1_alphas_cumprod, t, nd))
    weighted = first[0]["mse"] * _numpy_path(d, d.mse_weights, t, 1)
    expected = weighted + d.vb_weight * d.num_timesteps * first[0]["vb"] if d.learns_sigma else weighted
    assert torch.equal(first[0]["loss"], expected)


def test_a_device_gets_its_own_tensors_made_once(host_copies):
    """On another device (meta here, a GPU in use) the schedules and the respaced timestep map are
    copied on the first step only; the CPU's tensors stay separate."""
    d = respace(create_diffusion(steps=100), 10)
    meta = torch.device("meta")
    x = torch.empty(2, 3, 4, 4, device=meta)
    t = torch.tensor([0, 9], device=meta)
    seen = []

    def model(x, tt):
        seen.append(tt)
        return torch.cat([x, x], dim=1)

    d.p_mean_variance(model, x, t)
    d.training_losses(model, x, t, noise=x)
    made = len(host_copies)
    assert made > 0 and seen[0].device == meta
    for _ in range(3):
        d.p_mean_variance(model, x, t)
        d.training_losses(model, x, t, noise=x)
    assert len(host_copies) == made, "a later step copied a schedule or the timestep map to the device again"
    on_meta = d.schedule_tensor("sqrt_alphas_cumprod", meta)
    assert on_meta.device == meta and on_meta.dtype == torch.float64
    assert d.schedule_tensor("sqrt_alphas_cumprod", "meta") is on_meta
    on_cpu = d.schedule_tensor("sqrt_alphas_cumprod", "cpu")
    assert on_cpu is not on_meta and on_cpu.device.type == "cpu"
    assert d.schedule_tensor("timestep_map", meta).device == meta
    assert torch.equal(d.schedule_tensor("timestep_map", "cpu"), torch.tensor(d.use_timesteps))


def test_the_cache_follows_its_array_and_is_not_carried_by_copies():
    d = create_diffusion(steps=50)
    first = d.schedule_tensor("betas", "cpu")
    assert d.schedule_tensor("betas", "cpu") is first
    d.betas = d.betas * 0.5  # a new array gets a new tensor, never a stale one
    assert torch.equal(d.schedule_tensor("betas", "cpu"), torch.as_tensor(d.betas))
    for other in (copy.deepcopy(d), pickle.loads(pickle.dumps(d))):
        assert other._device_schedules == {}
        assert torch.equal(other.schedule_tensor("betas", "cpu"), torch.as_tensor(d.betas))
