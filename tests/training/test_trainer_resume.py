"""Exact resume after a kill, NaN stops with the last good checkpoint kept, and the run directory
that ``load_checkpoint`` rebuilds the model from."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _trainer_helpers import small_config
from PIL import Image
from safetensors.torch import load_file

from nasdm_aug import hardware
from nasdm_aug.training import trainer as trainer_mod
from nasdm_aug.training.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_trainer_state,
    load_type_table,
)
from nasdm_aug.training.data import NASDMDataset
from nasdm_aug.training.metric_log import read_log
from nasdm_aug.training.run import train
from nasdm_aug.types import CONSEP
from nasdm_aug.utils import InputError


def _final(run):
    ckpt = latest_checkpoint(run)
    return load_file(str(ckpt / "model.safetensors")), load_file(str(ckpt / "ema.safetensors")), load_trainer_state(ckpt)


def test_resume_after_kill_matches_uninterrupted_run(store_path, tmp_path, monkeypatch):
    # flips, condition dropout, a grid at step 3 and a warm-up all in play: none may break exactness
    cfg = small_config("mask", warmup_steps=2, sample_every=3, sample_count=2, sample_steps=2)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train("mask", store_path, "Train", cfg, straight, progress=False)

    original = trainer_mod.Trainer.train_step

    def dies_at_step_5(self, batch):
        if self.step == 4:  # after the checkpoint at 3 and the log record of step 4
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train("mask", store_path, "Train", cfg, killed, progress=False)
    assert [r["step"] for r in read_log(killed)] == [1, 2, 3, 4]
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", original)
    # were the layout measured again now, it would come out the other one: the run keeps its own
    measured = load_trainer_state(latest_checkpoint(straight))["layout"]
    other = [x for x in ("channels_last", "contiguous") if x != measured][0]
    monkeypatch.setattr(hardware, "fastest_layout", lambda *a, **k: (other, {}))
    train("mask", store_path, "Train", None, killed, resume=True, progress=False)

    (raw_a, ema_a, state_a), (raw_b, ema_b, state_b) = _final(straight), _final(killed)
    assert state_a["step"] == state_b["step"] == 6 and state_a["layout"] == state_b["layout"] == measured
    grid = np.asarray(Image.open(straight / "samples" / "step_00000006.png"))
    assert grid.shape == (2 + 2 * 34, 2 + 2 * 34, 3)  # 2 samples x (real mask | decoded sample)
    for a, b in ((raw_a, raw_b), (ema_a, ema_b)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    moments_a, moments_b = state_a["optimizer"]["state"], state_b["optimizer"]["state"]
    assert all(torch.equal(moments_a[i]["exp_avg_sq"], moments_b[i]["exp_avg_sq"]) for i in moments_a)
    log_a, log_b = read_log(straight), read_log(killed)
    assert [r["step"] for r in log_b] == list(range(1, 7))  # the orphan record of step 4 was replaced
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    assert not all(torch.equal(raw_a[k], ema_a[k]) for k in raw_a)  # EMA lags the raw weights


def test_log_grid_and_load_checkpoint(store_path, tmp_path):
    cfg = small_config("patch", steps=4, ckpt_every=2, keep_every=2, log_every=2, sample_every=4, sample_count=2, sample_steps=2)
    run = train("patch", store_path, "Train", cfg, tmp_path / "run", progress=False)
    records = read_log(run)
    assert [r["step"] for r in records] == [2, 4]
    for key in ("loss", "mse", "vb", "lr", "grad_norm", "it_per_s"):
        assert np.isfinite(records[-1][key])
    assert any(k.startswith("loss_q") for k in records[-1])
    assert [s for s, _ in list_checkpoints(run)] == [2, 4]
    grid = np.asarray(Image.open(run / "samples" / "step_00000004.png"))
    assert grid.shape == (2 + 2 * 34, 2 + 3 * 34, 3)  # 2 samples x (condition | real | sample)
    model, config = load_checkpoint(run, ema=True)
    assert config == cfg and type(model).__name__ == "PatchUNet" and not model.training
    ema = load_file(str(latest_checkpoint(run) / "ema.safetensors"))
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())
    data = json.loads((run / "data.json").read_text())
    assert data["split"] == "Train" and data["n_items"] == 4 and data["patch_size"] == 32
    assert load_type_table(run) == CONSEP


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(store_path, tmp_path, stand_in):
    from nasdm_aug.training.trainer import NonFiniteLossError, Trainer

    class GoesNaN(stand_in):
        calls = 0

        def forward(self, x, t, cond):
            GoesNaN.calls += 1
            out = super().forward(x, t, cond)
            return out * float("nan") if GoesNaN.calls > 4 else out

    cfg = small_config("patch", ckpt_every=2)
    ds = NASDMDataset(store_path, "patch", "Train")
    trainer = Trainer(GoesNaN(3, 6), cfg.diffusion.build(), ds, cfg, tmp_path, progress=False)
    with pytest.raises(NonFiniteLossError, match=r"step 4: non-finite .*last good checkpoint: .*step_00000004"):
        trainer.run()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # the bad step was not applied


def test_fresh_run_refuses_an_existing_one(store_path, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    with pytest.raises(InputError, match="`resume`"):
        train("patch", store_path, "Train", small_config("patch"), tmp_path / "run", progress=False)


def test_model_must_fit_the_store(store_path, tmp_path):
    cfg = small_config("patch").replace(model=small_config("patch").model.replace(n_types=6))
    with pytest.raises(InputError, match="model.n_types is 6"):
        train("patch", store_path, "Train", cfg, tmp_path / "run", progress=False)


def test_bf16_channels_last_and_loss_aware_sampler_state(store_path, tmp_path):
    from nasdm_aug.nets import build_model
    from nasdm_aug.training.trainer import Trainer

    cfg = small_config("mask", steps=2, precision="bf16", layout="channels_last", schedule_sampler="loss-second-moment")
    ds = NASDMDataset(store_path, "mask", "Train")
    trainer = Trainer(build_model(cfg.model), cfg.diffusion.build(), ds, cfg, tmp_path, progress=False)
    record = trainer.run()
    assert np.isfinite(record["loss"]) and record["step"] == 2
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # autocast, not a cast
    saved = trainer.schedule_sampler.state_dict()
    assert saved["loss_counts"].sum() == 2 * cfg.batch_size  # both steps' losses were recorded
    fresh = Trainer(build_model(cfg.model), cfg.diffusion.build(), ds, cfg, tmp_path, progress=False)
    fresh.load(latest_checkpoint(tmp_path))
    restored = fresh.schedule_sampler.state_dict()
    assert fresh.step == 2 and all(torch.equal(restored[k], saved[k]) for k in ("loss_history", "loss_counts"))
    assert all(torch.equal(a, b) for a, b in zip(fresh.ema.module.parameters(), trainer.ema.module.parameters()))
    # the on-disk keys are the ones checkpoints have always had
    state_path = latest_checkpoint(tmp_path) / "trainer_state.pt"
    state = torch.load(state_path, weights_only=True)
    assert set(state["schedule_sampler"]) == {"loss_history", "loss_counts"}
    # a checkpoint without the sampler's history resumes with a fresh one
    torch.save({k: v for k, v in state.items() if k != "schedule_sampler"}, state_path)
    older = Trainer(build_model(cfg.model), cfg.diffusion.build(), ds, cfg, tmp_path, progress=False)
    older.load(latest_checkpoint(tmp_path))
    assert older.step == 2 and older.schedule_sampler.state_dict()["loss_counts"].sum() == 0
    state["schedule_sampler"]["loss_counts"] = torch.zeros(3, dtype=torch.int64)
    torch.save(state, state_path)
    with pytest.raises(InputError, match=r"trainer_state.pt: loss-second-moment sampler state: loss_counts has shape \(3,\)"):
        older.load(latest_checkpoint(tmp_path))


def test_resume_in_another_layout_continues_the_same_run(store_path, tmp_path):
    """A layout given anew on resume is taken (it is a speed setting); the optimizer state follows
    the parameters into it, so the run ends where the uninterrupted one does, up to rounding."""
    cfg = small_config("mask", layout="channels_last")
    straight, switched = tmp_path / "straight", tmp_path / "switched"
    train("mask", store_path, "Train", cfg, straight, progress=False)
    train("mask", store_path, "Train", cfg.replace(steps=3), switched, progress=False)
    train("mask", store_path, "Train", cfg.replace(layout="contiguous"), switched, resume=True, progress=False)
    (raw_a, _, state_a), (raw_b, _, state_b) = _final(straight), _final(switched)
    assert state_b["step"] == 6 and state_a["layout"] == "channels_last" and state_b["layout"] == "contiguous"
    assert json.loads((switched / "config.json").read_text())["layout"] == "contiguous"
    # AdamW moves each weight by about lr a step: a state paired with the wrong elements would
    # leave whole steps of difference, rounding leaves a small fraction of one
    lr = cfg.lr
    assert all(torch.allclose(raw_a[k], raw_b[k], rtol=0, atol=lr) for k in raw_a)
