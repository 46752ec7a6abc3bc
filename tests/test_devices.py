"""Devices this machine does not have are refused in one line before any work: ``cuda`` without a
GPU, ``cuda:N`` beyond the visible GPUs, and more torchrun ranks on a machine than GPUs under NCCL.
The process group waits ``NASDM_AUG_DIST_TIMEOUT_MIN`` in a collective."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from nasdm_aug.training.distributed import init_distributed, pick_device
from nasdm_aug.utils import InputError


def _gpus(monkeypatch, n: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def _torchrun(monkeypatch, world: int, local_rank: int = 0) -> list[dict]:
    """The environment of one of ``world`` ranks on this machine; process-group starts are recorded."""
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(world))
    monkeypatch.setenv("RANK", str(local_rank))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    started: list[dict] = []
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: started.append(kw))
    return started


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_a_gpu_is_one_line(monkeypatch, device):
    _gpus(monkeypatch, 0)
    with pytest.raises(InputError, match=rf"^device '{device}': no CUDA GPU is visible on this machine; use cpu or auto$"):
        pick_device(device)


def test_a_gpu_index_beyond_the_visible_ones(monkeypatch):
    _gpus(monkeypatch, 2)
    with pytest.raises(InputError, match=r"^device 'cuda:3': only 2 CUDA GPUs visible \(cuda:0\.\.cuda:1\)$"):
        pick_device("cuda:3")
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    assert pick_device("cuda", local_rank=1) == torch.device("cuda", 1)  # this rank's GPU
    assert pick_device("auto", local_rank=1) == torch.device("cuda", 1)
    with pytest.raises(InputError, match="device 'cuda' for local rank 2: only 2 CUDA GPUs"):
        pick_device("cuda", local_rank=2)
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="not a device name"):
        pick_device("gpu0")


@pytest.mark.parametrize("device", [None, "auto", "cuda"])
@pytest.mark.parametrize("rank", [0, 3])
def test_more_ranks_than_gpus_under_nccl_before_the_group_starts(monkeypatch, device, rank):
    _gpus(monkeypatch, 2)
    started = _torchrun(monkeypatch, world=4, local_rank=rank)
    with pytest.raises(InputError, match=r"^torchrun started 4 ranks on this machine but only 2 CUDA GPUs are "
                                         r"visible; NCCL needs one GPU per rank"):
        init_distributed(device)
    assert started == []


def test_one_gpu_named_for_several_ranks(monkeypatch):
    _gpus(monkeypatch, 2)
    started = _torchrun(monkeypatch, world=2)
    with pytest.raises(InputError, match=r"^device 'cuda:0' names one GPU for all 2 ranks on this machine"):
        init_distributed("cuda:0")
    assert started == []
    assert init_distributed("cuda").device == torch.device("cuda", 0)
    assert started[0]["backend"] == "nccl"


def test_cpu_ranks_need_no_gpu_and_the_group_waits_long_enough(monkeypatch):
    _gpus(monkeypatch, 1)
    started = _torchrun(monkeypatch, world=4)
    monkeypatch.delenv("NASDM_AUG_DIST_TIMEOUT_MIN", raising=False)
    assert init_distributed("cpu").device == torch.device("cpu")
    assert started[-1]["backend"] == "gloo" and started[-1]["timeout"] == timedelta(minutes=60)
    monkeypatch.setenv("NASDM_AUG_DIST_TIMEOUT_MIN", "90")
    init_distributed("cpu")
    assert started[-1]["timeout"] == timedelta(minutes=90)
    for bad in ("soon", "0", "-5", "inf"):
        monkeypatch.setenv("NASDM_AUG_DIST_TIMEOUT_MIN", bad)
        with pytest.raises(InputError, match=rf"^NASDM_AUG_DIST_TIMEOUT_MIN='{bad}': expected a positive number"):
            init_distributed("cpu")
