"""torchrun / DDP plumbing for the NASDM trainers: process-group setup (NCCL on GPUs, gloo on CPUs),
rank queries and small collectives (PyTorch DistributedDataParallel).

Every collective here takes its tensors on :func:`collective_device` (NCCL reduces only CUDA
tensors), and work that one rank can fail in runs inside :func:`collective_errors`, so a failure
stops every rank with its message instead of leaving the others waiting in a collective.

``NASDM_AUG_DIST_TIMEOUT_MIN`` (minutes, default 60) is how long a rank waits in a collective
before the job stops: long enough for rank 0 to merge a large synthetic bank or validate while
the others wait (PyTorch's own default is 10 minutes).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterator, Sequence

import torch
import torch.distributed as dist

from nasdm_aug.utils import InputError

__all__ = ["DistInfo", "init_distributed", "cleanup_distributed", "all_reduce_sum", "any_rank", "barrier", "process_rank", "pick_device",
           "rank0_choice", "collective_device", "collective_errors", "dist_timeout", "DEFAULT_DIST_TIMEOUT_MIN"]

DEFAULT_DIST_TIMEOUT_MIN = 60.0


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
    there is one, else the CPU; ``"cuda"`` without an index is this rank's GPU; anything else as given.

    Raises:
        InputError: a CUDA device on a machine without a usable GPU, or an index (given, or this
            rank's for ``"cuda"``) beyond the visible GPUs.
    """
    if device is not None and str(device) != "auto":
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise InputError(f"device {str(device)!r}: not a device name (auto, cpu, cuda, cuda:1 ...)") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise InputError(f"device {str(device)!r}: no CUDA GPU is visible on this machine; use cpu or auto")
            count = torch.cuda.device_count()
            index = local_rank if dev.index is None else dev.index
            if index >= count:
                which = f"{str(device)!r}" if dev.index is not None else f"'cuda' for local rank {local_rank}"
                raise InputError(f"device {which}: only {count} CUDA GPU{'s' if count != 1 else ''} visible "
                                 f"(cuda:0..cuda:{count - 1})")
            dev = torch.device("cuda", index)
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def dist_timeout() -> timedelta:
    """How long a rank waits in a collective: ``NASDM_AUG_DIST_TIMEOUT_MIN`` minutes (default
    :data:`DEFAULT_DIST_TIMEOUT_MIN`), the module docstring says why.

    Raises:
        InputError: the variable is not a positive number.
    """
    raw = os.environ.get("NASDM_AUG_DIST_TIMEOUT_MIN", "").strip()
    try:
        minutes = float(raw) if raw else DEFAULT_DIST_TIMEOUT_MIN
    except ValueError:
        minutes = -1.0
    if not minutes > 0 or minutes == float("inf"):
        raise InputError(f"NASDM_AUG_DIST_TIMEOUT_MIN={raw!r}: expected a positive number of minutes")
    return timedelta(minutes=minutes)


def _check_gpu_per_rank(device: str | torch.device | None, local_rank: int) -> None:
    """NCCL needs a GPU of its own for every rank on a machine; two ranks on one GPU fail deep
    inside NCCL, so say so before any work. Only for a device that means CUDA here."""
    try:
        wanted = torch.device(device) if device is not None and str(device) != "auto" else None
    except RuntimeError:
        return  # not a device name: pick_device says so
    if not torch.cuda.is_available() or (wanted is not None and wanted.type != "cuda"):
        return  # gloo on CPUs, or no GPU: pick_device says so for an explicit cuda
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(local_rank + 1)))
    count = torch.cuda.device_count()
    if max(local_world, local_rank + 1) > count:
        raise InputError(f"torchrun started {max(local_world, local_rank + 1)} ranks on this machine but only {count} "
                         f"CUDA GPU{'s are' if count != 1 else ' is'} visible; NCCL needs one GPU per rank: start at "
                         f"most {count} (--nproc-per-node {count}) or pass device cpu")
    if local_world > 1 and wanted is not None and wanted.index is not None:
        raise InputError(f"device {str(device)!r} names one GPU for all {local_world} ranks on this machine; NCCL "
                         f"needs one GPU per rank: pass cuda or auto")


def init_distributed(device: str | torch.device | None = None) -> DistInfo:
    """Join the torchrun job described by the environment, or run alone.

    With ``WORLD_SIZE`` > 1 (set by torchrun, or by a test that spawns processes and sets
    ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) the default process
    group starts with NCCL on CUDA and gloo otherwise. Calling it again in the same process
    reuses the existing group.

    The group waits :func:`dist_timeout` in a collective before it gives up.

    Args:
        device: ``None``/``"auto"`` (this rank's GPU if any, else CPU), or an explicit device.

    Returns:
        The :class:`DistInfo` of this process.

    Raises:
        InputError: a device this machine does not have (:func:`pick_device`), more ranks on this
            machine than GPUs under NCCL, or a bad ``NASDM_AUG_DIST_TIMEOUT_MIN``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if world > 1 and not dist.is_initialized():
        _check_gpu_per_rank(device, local_rank)
    dev = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        timeout = dist_timeout()
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world,
                                timeout=timeout)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def cleanup_distributed() -> None:
    """Leave the process group if one was started."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def collective_device() -> torch.device:
    """The device the process group reduces on: this rank's GPU under NCCL (which takes only CUDA
    tensors; :func:`init_distributed` made it the current one), the CPU under gloo or alone."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over ranks (``x`` itself alone), on ``x``'s device.

    ``x`` is reduced in place when it already lies on :func:`collective_device`; otherwise a copy
    is reduced there and the result comes back on ``x``'s device, so callers use the return value.
    """
    if not _active():
        return x
    y = x.to(collective_device())
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y.to(x.device)


def rank0_choice(choose: Callable[[], str], options: Sequence[str], info: DistInfo) -> str:
    """``choose()`` on rank 0 only, its answer (one of ``options``) returned on every rank.

    For settings every rank must share, such as a memory layout that rank 0 measures. An error in
    ``choose()`` stops every rank with its message (:func:`collective_errors`).
    """
    with collective_errors():
        choice = choose() if info.is_main else options[0]
    if _active():
        index = torch.tensor([float(options.index(choice) if info.is_main else 0)], device=collective_device())
        dist.all_reduce(index, op=dist.ReduceOp.SUM)  # the other ranks add 0
        choice = options[int(index.item())]
    return choice


def any_rank(flag: bool | torch.Tensor, device: torch.device | None = None) -> bool:
    """True when ``flag`` is true on at least one rank (so every rank takes the same branch).

    Args:
        flag: a bool, or a one-element tensor on any device (read after the reduction, so a flag
            computed on the GPU costs one host sync, not two).
        device: not used; the reduction runs on :func:`collective_device`. Kept so that older
            calls that pass the model's device still work.
    """
    t = flag.detach().reshape(1).float() if isinstance(flag, torch.Tensor) else torch.tensor([1.0 if flag else 0.0])
    if _active():
        t = t.to(collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


@contextmanager
def collective_errors() -> Iterator[None]:
    """Make an error that one rank meets in the body stop every rank, with its message.

    Every rank enters the block at the same point (wrap ``if info.is_main: ...`` work in it, not
    the other way round) and, on leaving, learns whether any rank failed: the rank that failed
    raises its own exception, the others an error with the same message (an :class:`InputError`
    when it was one, else a ``RuntimeError`` naming the rank and the exception type). Without
    this, the other ranks would wait in their next collective until the timeout and die without
    the real error. Leaving the block is a barrier. The body must not run collectives itself.
    Alone, the block is a plain ``try``.
    """
    failure: BaseException | None = None
    try:
        yield
    except BaseException as exc:  # noqa: BLE001  KeyboardInterrupt too: the others must not wait for it
        failure = exc
    if not _active():
        if failure is not None:
            raise failure
        return
    mine = None if failure is None else (type(failure).__name__, isinstance(failure, InputError),
                                         (str(failure).splitlines() or [""])[0])
    reports: list = [None] * dist.get_world_size()
    try:
        dist.all_gather_object(reports, mine)
    except Exception:
        if failure is not None:
            raise failure  # the group is broken as well; this rank's own error says more
        raise
    if failure is not None:
        raise failure
    for rank, report in enumerate(reports):
        if report is not None:
            name, user_error, message = report
            if user_error:
                raise InputError(message)
            raise RuntimeError(f"rank {rank} failed: {name}: {message}")


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
