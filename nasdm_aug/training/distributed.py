"""torchrun / DDP plumbing for the NASDM trainers: process-group setup (NCCL on GPUs, gloo on CPUs),
rank queries and small collectives (PyTorch DistributedDataParallel)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "cleanup_distributed", "all_reduce_sum", "any_rank", "barrier", "process_rank", "pick_device",
           "rank0_choice"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Args:
        rank: global rank, 0..world_size-1.
        world_size: number of processes (1 without torchrun).
        local_rank: rank on this machine (picks the GPU).
        device: the device this rank trains on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes logs, samples and checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when more than one process trains together."""
        return self.world_size > 1


def pick_device(device: str | torch.device | None = None, local_rank: int = 0) -> torch.device:
    """The one meaning of a device argument everywhere: None or ``"auto"`` is this rank's GPU when
    there is one, else the CPU; ``"cuda"`` without an index is this rank's GPU; anything else as given."""
    if device is not None and str(device) != "auto":
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local_rank)
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(device: str | torch.device | None = None) -> DistInfo:
    """Join the torchrun job described by the environment, or run alone.

    With ``WORLD_SIZE`` > 1 (set by torchrun, or by a test that spawns processes and sets
    ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) the default process
    group starts with NCCL on CUDA and gloo otherwise. Calling it again in the same process
    reuses the existing group.

    Args:
        device: ``None``/``"auto"`` (this rank's GPU if any, else CPU), or an explicit device.

    Returns:
        The :class:`DistInfo` of this process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def cleanup_distributed() -> None:
    """Leave the process group if one was started."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over ranks in place (a no-op alone) and return it."""
    if _active():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def rank0_choice(choose: Callable[[], str], options: Sequence[str], info: DistInfo) -> str:
    """``choose()`` on rank 0 only, its answer (one of ``options``) returned on every rank.

    For settings every rank must share, such as a memory layout that rank 0 measures.
    """
    choice = choose() if info.is_main else options[0]
    if _active():
        index = torch.tensor([float(options.index(choice) if info.is_main else 0)], device=info.device)
        dist.all_reduce(index, op=dist.ReduceOp.SUM)  # the other ranks add 0
        choice = options[int(index.item())]
    return choice


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on at least one rank (so every rank takes the same branch)."""
    if not _active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier() -> None:
    """Wait for every rank (a no-op alone)."""
    if _active():
        dist.barrier()


def process_rank() -> int:
    """This process's global rank: the process group's while one is joined, else the one torchrun
    gave it (0 when run alone), so a caller that reports after the group is left still knows."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))
