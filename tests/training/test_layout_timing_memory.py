"""Layout auto-timing holds at most one throwaway copy of the model at a time, and a layout that
runs out of memory falls back to channels_last, with the reason kept."""

from __future__ import annotations

import gc
import json
import weakref

import pytest
import torch
from _trainer_helpers import small_config

from nasdm_aug.training import trainer as trainer_mod
from nasdm_aug.training.data import NASDMDataset


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("NASDM_AUG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "layouts.json"


def _measure(store_path, tmp_path, monkeypatch, fail_layout=None, error=None):
    """Trainer(layout="auto") with timing_step replaced by one that counts the live model copies."""
    from nasdm_aug.nets import build_model

    copies: list[weakref.ref] = []
    most_alive = []

    def timing_step(model, diffusion, x, cond, fmt, bf16=False, lr=1e-4):
        gc.collect()
        copies.append(weakref.ref(model))
        most_alive.append(sum(r() is not None for r in copies))
        layout = "channels_last" if fmt == torch.channels_last else "contiguous"
        if layout == fail_layout:
            raise error
        opt = torch.optim.AdamW(model.parameters(), lr=lr)  # gradients and optimizer state, as the real one

        def step():
            model.zero_grad()
            model(x, torch.zeros(x.shape[0], dtype=torch.long), cond=cond).float().mean().backward()
            opt.step()
        return step

    monkeypatch.setattr(trainer_mod, "timing_step", timing_step)
    cfg = small_config("mask", layout="auto")
    trainer = trainer_mod.Trainer(build_model(cfg.model), cfg.diffusion.build(), NASDMDataset(store_path, "mask", "Train"),
                                  cfg, tmp_path / "run", progress=False)
    return trainer, copies, most_alive


def test_one_model_copy_at_a_time(store_path, tmp_path, monkeypatch, cache):
    trainer, copies, most_alive = _measure(store_path, tmp_path, monkeypatch)
    assert len(copies) == 2 and max(most_alive) == 1, most_alive
    gc.collect()
    assert not any(r() is not None for r in copies)  # none outlives the measurement
    (entry,) = json.loads(cache.read_text()).values()
    assert entry["layout"] == trainer.layout and set(entry["seconds"]) == {"channels_last", "contiguous"}


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB\nmore"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: "
                                                "can't allocate memory: you tried to allocate 1 bytes. out of memory")])
def test_a_layout_out_of_memory_falls_back_to_channels_last(store_path, tmp_path, monkeypatch, cache, error):
    with pytest.warns(UserWarning, match="contiguous ran out of memory .*; training in channels_last"):
        trainer, copies, most_alive = _measure(store_path, tmp_path, monkeypatch, "contiguous", error)
    assert trainer.layout == "channels_last" and max(most_alive) == 1
    (entry,) = json.loads(cache.read_text()).values()
    assert entry["layout"] == "channels_last" and list(entry["seconds"]) == ["channels_last"]
    assert entry["out_of_memory"]["contiguous"].startswith(type(error).__name__ + ": ")
    assert "\n" not in entry["out_of_memory"]["contiguous"]
    cache.unlink()  # any other error is the step's own, not a reason to fall back
    with pytest.raises(RuntimeError, match="shape mismatch"):
        _measure(store_path, tmp_path, monkeypatch, "contiguous", RuntimeError("shape mismatch"))

