"""Collectives on the process group's device (NCCL reduces only CUDA tensors) and errors that one
rank meets stopping every rank with its message, in a real two-process gloo group."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import nasdm_aug.training.distributed as distributed
from nasdm_aug.training.distributed import (DistInfo, all_reduce_sum, any_rank, collective_device, collective_errors,
                                           rank0_choice)
from nasdm_aug.training.run_dir import prepare_run_dir
from nasdm_aug.utils import InputError

WORLD = 2


def _fake_group(monkeypatch, backend: str) -> list[torch.device]:
    """This process as rank 0 of two under ``backend``; each reduction records its tensor's device."""
    seen: list[torch.device] = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: WORLD)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: backend)

    def record(t, op=None, group=None, async_op=False):
        seen.append(t.device)
        raise _Reduced
    monkeypatch.setattr(dist, "all_reduce", record)
    monkeypatch.setattr(dist, "all_gather_object", lambda out, obj, group=None: out.__setitem__(slice(None), [obj] * WORLD))
    return seen


class _Reduced(Exception):
    """Raised by the fake reduction once it has recorded the device."""


def test_collective_device_follows_the_backend(monkeypatch):
    assert collective_device() == torch.device("cpu")  # alone
    _fake_group(monkeypatch, "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert collective_device() == torch.device("cuda", 1)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    assert collective_device() == torch.device("cpu")


def test_every_reduction_takes_its_tensor_on_the_collective_device(monkeypatch):
    seen = _fake_group(monkeypatch, "nccl")
    # meta stands in for the rank's GPU: tensors made on, or left on, the CPU are the bug
    monkeypatch.setattr(distributed, "collective_device", lambda: torch.device("meta"))
    calls = [lambda: all_reduce_sum(torch.ones(3)), lambda: any_rank(True, torch.device("cpu")),
             lambda: any_rank(torch.tensor(False)), lambda: rank0_choice(lambda: "b", ["a", "b"], DistInfo(world_size=2))]
    for call in calls:
        with pytest.raises(_Reduced):
            call()
    assert seen == [torch.device("meta")] * len(calls)


def test_alone_a_section_is_a_plain_try():
    with pytest.raises(InputError, match="^bad$"):
        with collective_errors():
            raise InputError("bad")
    with collective_errors():
        pass
    assert all_reduce_sum(torch.ones(2)).tolist() == [1.0, 1.0] and any_rank(torch.tensor(True))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, folder: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), NASDM_AUG_DIST_TIMEOUT_MIN="0.5")  # old code: a 30 s wait, not a hang
    torch.set_num_threads(1)
    info = distributed.init_distributed("cpu")
    errors = []
    # rank 0 refuses a folder that holds a run, before the barrier the others wait at
    busy = Path(folder) / "run"
    try:
        prepare_run_dir(busy, resume=False, overwrite=False, is_main=info.is_main)
        errors.append("none")
    except Exception as exc:  # noqa: BLE001
        errors.append(f"{type(exc).__name__}: {exc}")
    # rank 1 fails in work of its own; rank 0 goes on to a barrier
    try:
        with collective_errors():
            if rank == 1:
                {}["missing"]
        distributed.barrier()
        errors.append("none")
    except Exception as exc:  # noqa: BLE001
        errors.append(f"{type(exc).__name__}: {exc}")
    assert distributed.any_rank(rank == 1, info.device)  # the group still works
    Path(folder, f"rank{rank}.txt").write_text("\n".join(errors))
    distributed.cleanup_distributed()


def test_an_error_on_one_rank_stops_every_rank_with_its_message(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.jsonl").write_text("{}\n")
    t0 = time.perf_counter()
    # fork: the children reuse the parent's imported torch (spawn re-imports it, ~5 s CPU per rank)
    ctx = mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=False, start_method="fork")
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the ranks hang")
    assert time.perf_counter() - t0 < 20
    lines = [(tmp_path / f"rank{r}.txt").read_text().splitlines() for r in range(WORLD)]
    refusal = f"InputError: {tmp_path / 'run'} already holds a run; pass `resume` to continue it or `overwrite` to replace it"
    assert lines[0][0] == lines[1][0] == refusal
    assert lines[1][1] == "KeyError: 'missing'"  # its own error
    assert lines[0][1] == "RuntimeError: rank 1 failed: KeyError: 'missing'"


def test_the_trainers_rank0_checkpoint_and_preview_run_inside_a_collective_section(store_path, tmp_path, monkeypatch):
    from contextlib import contextmanager

    from _trainer_helpers import small_config

    from nasdm_aug.nets import build_model
    from nasdm_aug.training import trainer as trainer_mod
    from nasdm_aug.training.data import NASDMDataset

    depth, seen = [0], []

    @contextmanager
    def section():
        depth[0] += 1
        try:
            yield
        finally:
            depth[0] -= 1

    monkeypatch.setattr(trainer_mod, "collective_errors", section)
    cfg = small_config("mask", steps=4, ckpt_every=2, sample_every=2, layout="contiguous")
    trainer = trainer_mod.Trainer(build_model(cfg.model), cfg.diffusion.build(), NASDMDataset(store_path, "mask", "Train"),
                                  cfg, tmp_path / "run", progress=False,
                                  preview=lambda model, step: seen.append(("preview", step, depth[0])))
    save = trainer.save
    monkeypatch.setattr(trainer, "save", lambda: (seen.append(("save", trainer.step, depth[0])), save())[1])
    trainer.run()
    assert sorted(seen) == [("preview", 2, 1), ("preview", 4, 1), ("save", 2, 1), ("save", 4, 1)]
