"""Shared plumbing: the one-line user error, atomic file output and seeding."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import random
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = ["InputError", "atomic_output", "check_writable", "seed_everything", "file_digest", "file_sha256"]


class InputError(ValueError):
    """Bad user input: a file, value or option that cannot be used.

    The CLI prints the message as one line (``Error: <message>``) without a traceback, so the
    message must name the offending file or value and say what is wrong.
    """


def check_writable(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse to replace an existing output unless ``overwrite`` is set.

    Raises:
        InputError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists; pass --overwrite to replace it")
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False, suffix: str = ".partial") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    An exception (or a kill) leaves no file at ``path``; a stale temporary from an earlier
    interrupted run is removed first. Works for files and directories.

    Raises:
        InputError: ``path`` exists and ``overwrite`` is False.
    """
    path = check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + suffix)
    _remove(tmp)
    try:
        yield tmp
        if path.exists():
            _remove(path)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=32)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)[:16]


def file_digest(path: str | os.PathLike) -> str:
    """The first 16 hex digits of a file's SHA-256, computed once per file version in a process
    (keyed by path, size and modification time)."""
    p = Path(path).resolve()
    st = p.stat()
    return _digest(str(p), st.st_size, st.st_mtime_ns)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch global generators (for scripts; library code takes generators)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
