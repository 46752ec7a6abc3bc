"""What every trainer here does with its run directory (the NASDM trainer and the HoVerNet
trainer alike): refuse to write over a run unless told, keep a replaced run until the new one has
its first checkpoint, resume only with the run's own config, and record config.json and data.json.

The layout inside (checkpoints, log.jsonl) is in ``training/checkpoint.py`` and docs/architecture.md.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence, TypeVar

from nasdm_aug.utils import InputError, write_text_atomic

from .checkpoint import latest_checkpoint
from .distributed import barrier, collective_errors

__all__ = ["replaced_dir", "prepare_run_dir", "drop_replaced", "restore_replaced", "resumed_config", "write_run_record"]

C = TypeVar("C")


def replaced_dir(out: str | os.PathLike) -> Path:
    """Where ``overwrite`` keeps the old run until the new one has its first checkpoint."""
    out = Path(out)
    return out.with_name(out.name + ".replaced")


def prepare_run_dir(out: str | os.PathLike, resume: bool, overwrite: bool, is_main: bool, unit: str = "step") -> None:
    """Make ``out`` ready for a run (rank 0 acts; every rank waits for it).

    A non-empty ``out`` is continued with ``resume``, moved aside to :func:`replaced_dir` with
    ``overwrite`` (so a new run that dies before its first checkpoint loses nothing), and refused
    otherwise.

    Raises:
        InputError: ``out`` holds a run and neither ``resume`` nor ``overwrite`` is given (on every
            rank: an error of rank 0 here stops all of them, see
            :func:`~nasdm_aug.training.distributed.collective_errors`).
    """
    out = Path(out)
    barrier()  # every rank has looked at the folder before rank 0 changes it
    with collective_errors():  # leaving it is the barrier after rank 0's changes
        if is_main:
            busy = out.exists() and any(out.iterdir())
            if busy and not resume:
                if not overwrite:
                    raise InputError(f"{out} already holds a run; pass `resume` to continue it or `overwrite` to replace it")
                old = replaced_dir(out)
                if old.exists() and latest_checkpoint(out, unit) is None:
                    shutil.rmtree(out)  # an earlier overwrite died before its first checkpoint: the old run waits in old
                else:
                    if old.exists():
                        shutil.rmtree(old)
                    os.replace(out, old)
            out.mkdir(parents=True, exist_ok=True)


def drop_replaced(out: str | os.PathLike) -> None:
    """The new run has a checkpoint: the run it replaced can go."""
    old = replaced_dir(out)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def restore_replaced(out: str | os.PathLike, unit: str = "step") -> None:
    """A new run stopped before its first checkpoint: the run it replaced comes back."""
    out = Path(out)
    if replaced_dir(out).exists() and latest_checkpoint(out, unit) is None:
        shutil.rmtree(out, ignore_errors=True)
        os.replace(replaced_dir(out), out)


_MISSING = object()


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dicts as one level with dotted keys (``diffusion.loss_weighting``), so a
    refused resume names the field that differs, not only its section."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resumed_config(out: str | os.PathLike, config: C | None, cls: type[C], resume: bool,
                   may_change: Sequence[str] = ()) -> C:
    """The config a run uses: on resume the run's own ``config.json``, where only the fields in
    ``may_change`` may take the given config's values.

    Raises:
        InputError: no config given and none to resume from, or a config that differs from the
            run's in other fields (named).
    """
    saved_path = Path(out) / "config.json"
    if resume and saved_path.is_file():
        saved = cls.load(saved_path)  # type: ignore[attr-defined]
        if config is None:
            return saved
        keep = {k: getattr(config, k) for k in may_change}
        mine, theirs = _flat(config.to_dict()), _flat(saved.replace(**keep).to_dict())  # type: ignore[attr-defined]
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k, _MISSING) != theirs.get(k, _MISSING))
        if diff:
            allowed = f"; only {', '.join(f'`{k}`' for k in may_change)} may change" if may_change else ""
            raise InputError(f"{saved_path}: resuming with a config that differs from the run's in {diff}{allowed}")
        return saved.replace(**keep)  # type: ignore[attr-defined]
    if config is None:
        raise InputError(f"{out}: no config given and no config.json to resume from")
    return config


def write_run_record(out: str | os.PathLike, config: Any, data_info: dict[str, Any]) -> None:
    """``config.json`` and ``data.json`` of the run, written atomically."""
    config.save(Path(out) / "config.json")
    write_text_atomic(Path(out) / "data.json", json.dumps(data_info, indent=2, sort_keys=True) + "\n")
