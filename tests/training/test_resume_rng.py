"""A checkpoint resumes on any number of GPUs, or none: what of its CUDA RNG state does not fit
this machine is said in one warning, and training goes on (every step reseeds its generators)."""

from __future__ import annotations

import warnings

import torch
from _trainer_helpers import small_config

from nasdm_aug.training import trainer as trainer_mod
from nasdm_aug.training.checkpoint import latest_checkpoint
from nasdm_aug.training.data import NASDMDataset


def _trainer(cfg, ds, out):
    from nasdm_aug.nets import build_model

    return trainer_mod.Trainer(build_model(cfg.model), cfg.diffusion.build(), ds, cfg, out, progress=False)


def test_more_saved_cuda_states_than_devices_resume_with_one_warning(store_path, tmp_path, monkeypatch):
    cfg = small_config("mask", steps=1, layout="contiguous")
    ds = NASDMDataset(store_path, "mask", "Train")
    _trainer(cfg, ds, tmp_path).run()
    ckpt = latest_checkpoint(tmp_path)
    real_load = trainer_mod.load_trainer_state

    def two_gpu_states(path):  # as written on a 2-GPU machine by the per-GPU format of older runs
        state = real_load(path)
        state["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)]
        return state

    monkeypatch.setattr(trainer_mod, "load_trainer_state", two_gpu_states)
    # this machine: no GPU at all; the old code restored every saved state wherever CUDA was there
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    fresh = _trainer(cfg, ds, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh.load(ckpt)
    lines = [str(w.message) for w in caught if "RNG" in str(w.message)]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "2 saved CUDA RNG state(s) not restored (resumed on cpu)" in lines[0] and "reseeds" in lines[0]
    assert fresh.step == 1
    fresh.config = fresh.config.replace(steps=2)
    assert fresh.run()["step"] == 2  # and it trains on


def test_cuda_states_restored_as_far_as_the_gpus_go(monkeypatch):
    """On a machine with one GPU: a state of this rank's GPU is restored there; of an old per-GPU list
    only the state of this GPU's index is, and the rest is named."""
    set_calls = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)

    def set_rng_state(state, device):
        if torch.device(device).index >= torch.cuda.device_count():  # what torch raises, at its first use
            raise IndexError("list index out of range")
        set_calls.append((int(state[0]), torch.device(device)))

    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    gpu0 = torch.device("cuda", 0)
    states = [torch.full((4,), i, dtype=torch.uint8) for i in range(2)]
    msg = trainer_mod._restore_cuda_rng(states, gpu0)
    assert set_calls == [(0, gpu0)] and msg is not None and "cuda:0 only, of 2 saved" in msg
    set_calls.clear()
    assert trainer_mod._restore_cuda_rng(states[1], gpu0) is None and set_calls == [(1, gpu0)]
    assert trainer_mod._restore_cuda_rng(None, gpu0) is None
    assert "not restored (resumed on cpu)" in trainer_mod._restore_cuda_rng(states[0], torch.device("cpu"))


def test_the_state_saved_is_this_ranks_own_device_only(store_path, tmp_path):
    cfg = small_config("mask", steps=1, layout="contiguous")
    trainer = _trainer(cfg, NASDMDataset(store_path, "mask", "Train"), tmp_path)
    state = trainer.state_dict()
    assert "cuda" not in state["rng"] and state["precision"] in ("fp32", "bf16")
