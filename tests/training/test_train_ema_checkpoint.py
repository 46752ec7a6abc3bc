"""EMA closed form; checkpoint write/read round trip, atomicity, pruning and weights-only state."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from nasdm_aug.training.checkpoint import (
    list_checkpoints,
    load_optimizer_state,
    load_trainer_state,
    load_weights,
    resolve_checkpoint,
    save_checkpoint,
)
from nasdm_aug.training.config import get_train_preset
from nasdm_aug.training.ema import EMA
from nasdm_aug.utils import InputError


def test_ema_closed_form():
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(3.0)
    for _ in range(5):
        ema.update()
    # e_k = w + (e_0 - w) * decay^k with e_0 = 1, w = 3
    want = 3.0 + (1.0 - 3.0) * 0.9**5
    assert torch.allclose(ema.module.weight, torch.full((2, 3), want))
    assert not ema.module.weight.requires_grad


def test_ema_warmup_closed_form():
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.9, warmup=True)
    with torch.no_grad():
        model.weight.fill_(3.0)
    decays = [ema.decay_at(n) for n in range(4)]
    assert decays == pytest.approx([0.1, 2 / 11, 0.25, 4 / 13])  # (1 + n) / (10 + n), under 0.9
    assert ema.decay_at(1000) == 0.9 and EMA(model, decay=0.9).decay_at(0) == 0.9
    for n in range(4):
        ema.update(n)
    want = 3.0 + (1.0 - 3.0) * float(torch.tensor(decays, dtype=torch.float64).prod())
    assert torch.allclose(ema.module.weight, torch.full((2, 3), want))


def test_ema_rejects_bad_decay():
    with pytest.raises(ValueError, match="decay"):
        EMA(nn.Linear(1, 1), decay=1.0)


def _save(run, step, model, keep_every=0):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    state = {"step": step, "optimizer": opt.state_dict(), "rng": {"torch": torch.get_rng_state()}}
    cfg = get_train_preset("patch", "tiny")
    return save_checkpoint(
        run, step, model_state=model.state_dict(), ema_state=model.state_dict(), trainer_state=state,
        config=cfg, data_info={"split": "Train"}, keep_every=keep_every,
    )


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    ckpt = _save(tmp_path, 5, model)
    assert ckpt.name == "step_00000005" and resolve_checkpoint(tmp_path) == ckpt
    assert {p.name for p in ckpt.iterdir()} == {
        "config.json", "data.json", "model.safetensors", "ema.safetensors", "trainer_state.pt"
    }
    weights = load_weights(ckpt, ema=False)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    state = load_trainer_state(ckpt)  # weights_only=True inside
    assert state["step"] == 5 and "exp_avg" in state["optimizer"]["state"][0]
    assert json.loads((ckpt / "data.json").read_text()) == {"split": "Train"}
    assert not list(tmp_path.glob("checkpoints/*.partial"))


def test_pruning_keeps_latest_and_every_k(tmp_path):
    model = nn.Linear(4, 3)
    for step in (10, 20, 30, 40, 50):
        _save(tmp_path, step, model, keep_every=20)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [20, 40, 50]


def test_partial_checkpoint_is_ignored(tmp_path):
    model = nn.Linear(4, 3)
    _save(tmp_path, 3, model)
    (tmp_path / "checkpoints" / "step_00000009.partial").mkdir()  # a write killed midway
    assert resolve_checkpoint(tmp_path).name == "step_00000003"


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no NASDM checkpoint"):
        resolve_checkpoint(tmp_path)


@pytest.mark.parametrize("saved, now", [("channels_last", "contiguous"), ("contiguous", "channels_last")])
def test_optimizer_state_follows_the_parameters_layout(saved, now):
    """A fused AdamW state saved in one memory layout and resumed for parameters in the other steps
    exactly as an optimizer that never changed layout (the raw load_state_dict does not)."""
    fmt = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
    torch.manual_seed(0)
    w0, g1, g2 = torch.randn(8, 4, 3, 3), torch.randn(8, 4, 3, 3), torch.randn(8, 4, 3, 3)

    def first_step(layout):
        p = nn.Parameter(w0.clone().contiguous(memory_format=fmt[layout]))
        opt = torch.optim.AdamW([p], lr=0.1, fused=True)
        p.grad = g1.clone().contiguous(memory_format=fmt[layout])
        opt.step()
        return p, opt

    def second_step(p, opt):  # p is laid out as `now`, and autograd gives gradients in its layout
        p.grad = g2.clone().contiguous(memory_format=fmt[now])
        opt.step()
        return p.detach().clone()

    reference = second_step(*first_step(now))
    p_saved, opt_saved = first_step(saved)
    p = nn.Parameter(p_saved.detach().clone().contiguous(memory_format=fmt[now]))
    raw = torch.optim.AdamW([p], lr=0.1, fused=True)
    raw.load_state_dict(copy.deepcopy(opt_saved.state_dict()))  # loading shares the tensors, raw's step would move them
    assert not torch.allclose(second_step(p, raw), reference)  # what the helper is for
    p = nn.Parameter(p_saved.detach().clone().contiguous(memory_format=fmt[now]))
    fixed = torch.optim.AdamW([p], lr=0.1, fused=True)
    load_optimizer_state(fixed, copy.deepcopy(opt_saved.state_dict()))
    assert fixed.state[p]["exp_avg"].stride() == p.stride()
    assert torch.allclose(second_step(p, fixed), reference, atol=1e-6)
