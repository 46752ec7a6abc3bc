"""HoVerNet's epoch statistics: kept on the training device and read once per epoch, reduced on the
process group's device (NCCL reduces only CUDA tensors), a non-finite loss on any rank stopping
every rank; and the DataLoader workers a run uses when the config leaves them open."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist

import hovernet.trainer as trainer_mod
import nasdm_aug.training.distributed as distributed
from hovernet.config import HoVerNetConfig, ModelConfig, get_hovernet_preset
from hovernet.data import HoVerNetTrainDataset
from hovernet.losses import HoVerNetLoss
from hovernet.model import HoVerNet
from nasdm_aug.training.distributed import DistInfo
from nasdm_aug.utils import InputError

SMALL = ModelConfig(encoder="resnet18", decoder_channels=(8, 8, 8, 8, 8), dense_units=0, growth=4, n_types=2)


pytestmark = pytest.mark.usefixtures("one_thread")


def _items(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        inst = np.zeros((1, 32, 32), np.int32)
        inst[0, 8:14, 8:14], inst[0, 20:27, 18:25] = 1, 2
        typ = np.where(inst > 0, 1 + inst % 2, 0).astype(np.uint8)
        out.append({"image": rng.random((3, 32, 32), dtype=np.float32), "inst": inst, "type": typ})
    return out


def _epoch(n_items: int, dev: DistInfo = DistInfo()) -> dict[str, float]:
    cfg = HoVerNetConfig(model=SMALL, batch_size=2, augment=False, precision="fp32", layout="contiguous")
    torch.manual_seed(0)
    model = HoVerNet(cfg.model)
    loader = torch.utils.data.DataLoader(HoVerNetTrainDataset(_items(n_items), augment=False), batch_size=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    return trainer_mod._train_epoch(model, loader, opt, HoVerNetLoss(cfg.loss), dev, cfg, 0, False,
                                    torch.contiguous_format)


def _fake_group(monkeypatch, backend: str, all_reduce) -> None:
    """This process as one rank of two, under ``backend``, with ``all_reduce`` as the reduction."""
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: backend)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)


class _Reduced(Exception):
    """Raised by the fake reduction once it has recorded its tensor's device."""


def test_epoch_statistics_are_reduced_on_the_process_groups_device(monkeypatch):
    # meta stands in for the rank's GPU: a CPU tensor handed to NCCL is the bug
    seen: list[torch.device] = []

    def record(t, op=None, group=None, async_op=False):
        seen.append(t.device)
        raise _Reduced

    _fake_group(monkeypatch, "nccl", record)
    monkeypatch.setattr(distributed, "collective_device", lambda: torch.device("meta"))
    with pytest.raises(_Reduced):
        _epoch(4, DistInfo(rank=0, world_size=2))
    assert seen == [torch.device("meta")]


def test_loss_statistics_are_read_once_per_epoch_not_per_step(monkeypatch):
    # reads on the host wait for the GPU; count those the trainer and its collectives make (the
    # data pipeline's own reads are of CPU tensors)
    callers = {"hovernet.trainer", "nasdm_aug.training.distributed"}
    reads = {"n": 0}
    for name in ("item", "tolist", "__float__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            reads["n"] += sys._getframe(1).f_globals.get("__name__") in callers
            return _original(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)

    counts = []
    for n_items in (2, 8):  # 1 and 4 steps
        reads["n"] = 0
        out = _epoch(n_items)
        counts.append(reads["n"])
        assert set(out) >= {"loss", "np_ce", "hv_mse"} and all(math.isfinite(v) for v in out.values())
    assert counts[0] == counts[1] <= 1, f"host reads of the loss per epoch of 1 and 4 steps: {counts}"


def test_a_non_finite_loss_on_another_rank_stops_this_one(monkeypatch):
    def other_rank_diverged(t, op=None, group=None, async_op=False):
        t[0] += math.nan  # what the other rank's loss sum adds

    _fake_group(monkeypatch, "gloo", other_rank_diverged)
    with pytest.raises(InputError, match=r"^non-finite HoVerNet loss in epoch 1; lower the learning rate"):
        _epoch(4, DistInfo(rank=0, world_size=2))


def test_a_non_finite_loss_stops_at_the_next_check(monkeypatch):
    monkeypatch.setattr(trainer_mod, "_CHECK_EVERY", 1)
    real_forward = HoVerNetLoss.forward

    def diverged(self, pred, target):
        terms = real_forward(self, pred, target)
        return {**terms, "loss": terms["loss"] * math.inf}
    monkeypatch.setattr(HoVerNetLoss, "forward", diverged)
    with pytest.raises(InputError, match="non-finite HoVerNet loss in epoch 1"):
        _epoch(8)


def test_workers_default_to_none_on_cpu_and_some_per_rank_on_cuda(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.setattr(trainer_mod.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert trainer_mod.resolve_workers(None, cpu) == 0
    assert trainer_mod.resolve_workers(None, gpu) == 8  # capped
    assert trainer_mod.resolve_workers(None, gpu, local_world_size=4) == 4  # 16 CPUs shared by 4 ranks
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert trainer_mod.resolve_workers(None, gpu) == 2
    monkeypatch.setattr(trainer_mod.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert trainer_mod.resolve_workers(None, gpu) == 1  # at least one: the GPU must not wait on the main thread
    assert trainer_mod.resolve_workers(3, gpu) == 3 and trainer_mod.resolve_workers(0, gpu) == 0  # as set
    assert trainer_mod.resolve_workers(2, cpu) == 2


def test_presets_leave_workers_open_and_older_configs_load():
    assert get_hovernet_preset("paper").num_workers is None and get_hovernet_preset("tiny").num_workers is None
    old = HoVerNetConfig().to_dict()
    old["num_workers"] = 0  # as every run before recorded it
    assert HoVerNetConfig.from_dict(old).num_workers == 0
    assert HoVerNetConfig.from_dict(HoVerNetConfig().to_dict()).num_workers is None
    with pytest.raises(ValueError, match="num_workers"):
        HoVerNetConfig(num_workers=-1)
