"""Shared plumbing: the one-line user error (and its form for unknown names), atomic file
output, strict JSON and file digests."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

__all__ = ["InputError", "unknown_name", "atomic_output", "write_text_atomic", "json_safe", "check_writable",
           "file_digest"]


class InputError(ValueError):
    """Bad user input: a file, value or option that cannot be used.

    The CLI prints the message as one line (``Error: <message>``) without a traceback, so the
    message must name the offending file or value and say what is wrong.
    """


def unknown_name(kind: str, name: object, valid: Iterable[object], *, extra: str = "") -> InputError:
    """The error for a name that no registry entry has: ``unknown {kind} {name!r}; valid: a, b, c``.

    Args:
        kind: what was looked up (``"sampler"``, ``"export format"``).
        name: the name given.
        valid: the names that exist, listed in the order given.
        extra: appended after the list (e.g. ``", all"`` for an alternative the registry lacks).

    Returns:
        The InputError, for the caller to raise.
    """
    return InputError(f"unknown {kind} {name!r}; valid: {', '.join(str(v) for v in valid)}{extra}")


def check_writable(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse to replace an existing output unless ``overwrite`` is set.

    Raises:
        InputError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists; pass `overwrite` to replace it")
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


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary beside it and a rename: a reader never sees
    half a file, and a kill or a failed write leaves the old one (for files rewritten in place:
    logs, records, reports). Several writers of one path at once each finish, the last one's text
    kept.

    The temporary's name is this writer's own (``path.PID.RANDOM.partial``): with one fixed name, a
    second process writing the same file (two study processes sharing an ``--out`` both save its
    config.json) truncated the first one's temporary or renamed it away under it.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def json_safe(x):
    """A copy of ``x`` that ``json.dumps`` writes as strict JSON: non-finite floats become None
    (JSON has no NaN), numpy scalars Python numbers, tuples lists, keys strings."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


@functools.lru_cache(maxsize=32)
def _sha256(files: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for path, _size, _mtime in files:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def file_digest(path: str | os.PathLike, *more: str | os.PathLike, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of a file (of several files' bytes read one
    after the other, in the order given), computed once per file version in a process (keyed by
    path, size and modification time).

    Args:
        path: the file.
        *more: further files, hashed after ``path`` as if appended to it.
        length: hex digits kept; 16 for fingerprints, 64 for the whole SHA-256.

    Raises:
        OSError: a file is missing or unreadable.
    """
    files = []
    for p in (path, *more):
        p = Path(p).resolve()
        st = p.stat()
        files.append((str(p), st.st_size, st.st_mtime_ns))
    return _sha256(tuple(files))[:length]
