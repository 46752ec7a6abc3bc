"""Timestep samplers save and restore what their next draws depend on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasdm_aug.diffusion import LossSecondMomentResampler, UniformSampler, create_diffusion


def _diffusion(steps: int = 8):
    # cosine: the linear schedule, scaled to so few steps, has betas above 1
    return create_diffusion(steps=steps, schedule="cosine")


def _fed(diffusion, history_per_term: int = 2, seed: int = 0) -> LossSecondMomentResampler:
    sampler = LossSecondMomentResampler(diffusion, history_per_term=history_per_term)
    rng = np.random.default_rng(seed)
    ts = [t for t in range(diffusion.num_timesteps) for _ in range(history_per_term + 1)]
    sampler.update_with_all_losses(ts, rng.uniform(0.1, 2.0, len(ts)).tolist())
    return sampler


def test_loss_aware_round_trip_draws_the_same_timesteps():
    d = _diffusion()
    src = _fed(d)
    assert not np.allclose(src.weights(), src.weights()[0])  # warmed up: no longer uniform
    state = src.state_dict()
    assert set(state) == {"loss_history", "loss_counts"} and all(isinstance(v, torch.Tensor) for v in state.values())
    dst = LossSecondMomentResampler(d, history_per_term=2)
    dst.load_state_dict(state)
    np.testing.assert_array_equal(dst.weights(), src.weights())
    a = src.sample(64, "cpu", generator=torch.Generator().manual_seed(3))
    b = dst.sample(64, "cpu", generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    # the state is a copy: later losses change the sampler, not the saved dict
    src.update_with_all_losses([0], [100.0])
    assert not torch.equal(src.state_dict()["loss_history"], state["loss_history"])


def test_old_checkpoint_state_loads(tmp_path):
    """What the trainer wrote before samplers had a state_dict: the two arrays as tensors, read
    back with weights_only=True."""
    d = _diffusion()
    src = _fed(d, seed=1)
    expected = np.array(src.weights())
    old = {"schedule_sampler": {"loss_history": torch.from_numpy(src._loss_history.copy()),
                                "loss_counts": torch.from_numpy(src._loss_counts.copy())}}
    torch.save(old, tmp_path / "trainer_state.pt")
    loaded = torch.load(tmp_path / "trainer_state.pt", weights_only=True)
    dst = LossSecondMomentResampler(d, history_per_term=2)
    dst.load_state_dict(loaded["schedule_sampler"])
    np.testing.assert_array_equal(dst.weights(), expected)


def test_bad_states_are_refused():
    d = _diffusion()
    state = _fed(d).state_dict()
    with pytest.raises(ValueError, match=r"loss_history has shape \(8, 2\), this sampler needs \(8, 3\)"):
        LossSecondMomentResampler(d, history_per_term=3).load_state_dict(state)
    with pytest.raises(ValueError, match=r"needs keys \['loss_counts', 'loss_history'\], got \['loss_history'\]"):
        LossSecondMomentResampler(d, history_per_term=2).load_state_dict({"loss_history": state["loss_history"]})
    uniform = UniformSampler(d)
    assert uniform.state_dict() == {}
    uniform.load_state_dict({})
    with pytest.raises(ValueError, match="UniformSampler keeps no state"):
        uniform.load_state_dict(state)
