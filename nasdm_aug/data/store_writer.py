"""PatchStoreWriter: writes a PatchStore (schema in ``data/store.py`` and docs/architecture.md),
atomically: to ``PATH.partial``, renamed when complete."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import h5py
import numpy as np

from nasdm_aug import __version__
from nasdm_aug.data.store import ARRAY_KEYS, MAGIC, META_DTYPES, META_KEYS, ORIGINS, SCHEMA_VERSION, SPLITS
from nasdm_aug.types import NucleiTypeTable
from nasdm_aug.utils import InputError, atomic_output, unknown_name

__all__ = ["PatchStoreWriter"]


class PatchStoreWriter:
    """Create a PatchStore; patches are appended one at a time or in batches.

    The file is written to ``path + ".partial"`` and renamed onto ``path`` when the writer closes
    without error; on an exception the partial file is deleted, so an interrupted run leaves no
    output behind.

    Args:
        path: output ``.h5`` path.
        patch_size: side of the square patches in pixels.
        type_table: the nuclei type table the ``type`` maps use.
        config: the config that produced the store (stored as JSON).
        origin: ``"real"`` or ``"synthetic"``; the default origin of appended patches.
        compression: h5py compression filter (``"lzf"``, ``"gzip"`` or None).
        overwrite: replace an existing ``path``.
        attrs: extra JSON-able file attributes.

    Raises:
        InputError: ``path`` exists and ``overwrite`` is False, or an argument is invalid.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        patch_size: int,
        type_table: NucleiTypeTable,
        config: dict | None = None,
        origin: str = "real",
        compression: str | None = "lzf",
        overwrite: bool = False,
        attrs: dict | None = None,
    ) -> None:
        if origin not in ORIGINS:
            raise InputError(f"origin must be one of {ORIGINS}, got {origin!r}")
        if patch_size < 1:
            raise InputError(f"patch_size must be >= 1, got {patch_size}")
        self.path = Path(path)
        self.patch_size = int(patch_size)
        self.type_table = type_table
        self.origin = origin
        self._ctx = atomic_output(self.path, overwrite=overwrite)
        self._tmp = self._ctx.__enter__()
        self._n = 0
        self._splits: dict[str, list[str]] = {}
        self._extra: dict[str, Any] = dict(attrs or {})
        self._h5 = h5py.File(self._tmp, "w")
        a = self._h5.attrs
        a["magic"] = MAGIC
        a["schema_version"] = SCHEMA_VERSION
        a["package_version"] = __version__
        a["type_table"] = type_table.to_json()
        a["config"] = json.dumps(config or {})
        a["origin"] = origin
        a["patch_size"] = self.patch_size
        p = self.patch_size
        shapes = {"image": (p, p, 3), "inst": (p, p), "type": (p, p)}
        dtypes = {"image": np.uint8, "inst": np.int32, "type": np.uint8}
        for key in ARRAY_KEYS:
            self._h5.create_dataset(
                key, shape=(0, *shapes[key]), maxshape=(None, *shapes[key]), dtype=dtypes[key],
                chunks=(1, *shapes[key]), compression=compression,
            )
        meta = self._h5.create_group("meta")
        for key in META_KEYS:
            meta.create_dataset(key, shape=(0,), maxshape=(None,), dtype=META_DTYPES[key], chunks=(4096,))
        # handles kept open for the file's life: a dataset handle that is dropped after each append
        # flushes its chunk cache in h5py's deallocator, where a full disk's error is only printed and
        # leaves HDF5 in a state that later crashes the process; kept, the error surfaces in the write
        self._arrays = {key: self._h5[key] for key in ARRAY_KEYS}
        self._meta = {key: meta[key] for key in META_KEYS}

    def __len__(self) -> int:
        return self._n

    def append(
        self, image: np.ndarray, inst: np.ndarray, type: np.ndarray, *, source: str = "", y: int = 0,
        x: int = 0, split: str = "", parent: int = -1, seed: int = -1, origin: str | None = None,
    ) -> int:
        """Append one patch and return its index.

        Raises:
            InputError: shapes or dtypes that do not fit the store, or type ids outside the table.
        """
        return self.append_batch(
            image[None], inst[None], type[None], source=[source], y=[y], x=[x], split=[split],
            parent=[parent], seed=[seed], origin=origin,
        )[0]

    def append_batch(
        self, images: np.ndarray, insts: np.ndarray, types: np.ndarray, *, source: Sequence[str],
        y: Sequence[int], x: Sequence[int], split: Sequence[str] | None = None,
        parent: Sequence[int] | None = None, seed: Sequence[int] | None = None, origin: str | None = None,
    ) -> list[int]:
        """Append ``n`` patches ([n,H,W,3], [n,H,W], [n,H,W]) with their metadata; return indices."""
        n = len(images)
        self._check(images, insts, types)
        origin = origin or self.origin
        if origin not in ORIGINS:
            raise InputError(f"origin must be one of {ORIGINS}, got {origin!r}")
        cols = {
            "source": list(source), "y": list(y), "x": list(x), "split": list(split or [""] * n),
            "origin": [ORIGINS.index(origin)] * n, "parent": list(parent or [-1] * n),
            "seed": list(seed or [-1] * n),
        }
        for key, col in cols.items():
            if len(col) != n:
                raise InputError(f"metadata {key!r} has {len(col)} values for {n} patches")
        start, stop = self._n, self._n + n
        try:
            for key, arr in zip(ARRAY_KEYS, (images, insts, types)):
                ds = self._arrays[key]
                ds.resize(stop, axis=0)
                ds[start:stop] = arr
            for key, col in cols.items():
                ds = self._meta[key]
                ds.resize(stop, axis=0)
                ds[start:stop] = np.asarray(col, dtype=object if key in ("source", "split") else META_DTYPES[key])
        except OSError as exc:
            self._fail(exc)
        self._n = stop
        return list(range(start, stop))

    def _fail(self, exc: OSError) -> None:
        """A write failed (a full disk, a lost mount): discard the partial file, keep any earlier
        ``path``, and say so in one line."""
        kept = self.path.exists()
        h5, self._h5 = self._h5, None
        # HDF5 flushes its caches whenever a handle goes (here, in h5py's deallocators, at exit);
        # each flush fails again on the full disk and the process ends in a segfault. Pointing the
        # file's descriptor at /dev/null lets those flushes succeed into nothing and frees the space
        try:
            fd = h5.id.get_vfd_handle() if h5 is not None else None
            if isinstance(fd, int):
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, fd)
                os.close(null)
        except Exception:  # noqa: BLE001  a driver without a descriptor: close as it comes
            pass
        self._arrays, self._meta = {}, {}
        try:
            if h5 is not None:
                h5.close()
        except Exception:  # noqa: BLE001  the file is discarded either way
            pass
        try:
            self._ctx.__exit__(OSError, exc, None)
        except OSError:
            pass
        reason = os.strerror(exc.errno) if exc.errno else str(exc).splitlines()[0]
        raise InputError(f"{self.path}: writing failed ({reason}); the partial file was removed"
                         + (f" and the earlier {self.path.name} kept" if kept else "")) from None

    def _check(self, images: np.ndarray, insts: np.ndarray, types: np.ndarray) -> None:
        p = self.patch_size
        n = len(images)
        want = {"image": ((n, p, p, 3), np.uint8), "inst": ((n, p, p), np.int32), "type": ((n, p, p), np.uint8)}
        for key, arr in zip(ARRAY_KEYS, (images, insts, types)):
            shape, dtype = want[key]
            if arr.shape != shape:
                raise InputError(f"{self.path}: {key} has shape {arr.shape}, expected {shape}")
            if arr.dtype != dtype:
                raise InputError(f"{self.path}: {key} has dtype {arr.dtype}, expected {np.dtype(dtype)}")
        if n and int(types.max()) > self.type_table.n_types:
            raise InputError(
                f"{self.path}: type id {int(types.max())} is outside 0..{self.type_table.n_types} "
                f"of table {self.type_table.name!r}"
            )

    def set_splits(self, splits: dict[str, Iterable[str]]) -> None:
        """Record the per-image splits: split name -> source image names."""
        unknown = sorted(set(splits) - set(SPLITS))
        if unknown:
            raise unknown_name("split names", unknown, SPLITS)
        self._splits = {k: sorted(str(v) for v in vals) for k, vals in splits.items()}

    def set_attr(self, key: str, value: Any) -> None:
        """Record an extra JSON-able file attribute (read back from ``PatchStore.attrs``)."""
        self._extra[key] = value

    def close(self) -> None:
        """Finish the file and rename it onto ``path``."""
        if self._h5 is None:
            return
        try:
            self._h5.attrs["splits"] = json.dumps(self._splits)
            self._h5.attrs["extra"] = json.dumps(self._extra)
            self._h5.flush()
        except OSError as exc:
            self._fail(exc)
        self._arrays, self._meta = {}, {}
        try:
            self._h5.close()
        except OSError as exc:
            self._fail(exc)
        self._h5 = None
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        """Discard the partial file."""
        if self._h5 is not None:
            self._arrays, self._meta = {}, {}
            self._h5.close()
            self._h5 = None
            try:
                self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
            except RuntimeError:
                pass

    def __enter__(self) -> "PatchStoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
