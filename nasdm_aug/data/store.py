"""PatchStore: the one HDF5 format shared by real and synthetic patches (docs/architecture.md, Contracts).

Schema (version 1): datasets ``image`` [N,H,W,3] uint8, ``inst`` [N,H,W] int32, ``type``
[N,H,W] uint8, chunked one patch per chunk, and per-patch metadata under ``meta/`` (``source``,
``y``, ``x``, ``split``, ``origin``, ``parent``, ``seed``). File attributes hold the schema
version, the type table, the producing config, the package version, the splits and extra JSON. ``PatchStoreWriter`` (``data/store_writer.py``) writes it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from nasdm_aug.types import NucleiTypeTable
from nasdm_aug.utils import InputError, unknown_name

__all__ = ["PatchStore", "StoreError", "SCHEMA_VERSION", "SPLITS", "ORIGINS", "parse_store_arg"]

SCHEMA_VERSION = 1
MAGIC = "nasdm-aug PatchStore"
SPLITS = ("Train", "R1", "R2", "Test")
ORIGINS = ("real", "synthetic")
ARRAY_KEYS = ("image", "inst", "type")
META_KEYS = ("source", "y", "x", "split", "origin", "parent", "seed")
STR_DTYPE = h5py.string_dtype("utf-8")
META_DTYPES: dict[str, Any] = {
    "source": STR_DTYPE, "y": np.int32, "x": np.int32, "split": STR_DTYPE,
    "origin": np.uint8, "parent": np.int64, "seed": np.int64,
}


class StoreError(InputError):
    """A file that is not a valid PatchStore; the message names the file and the problem."""


class PatchStore:
    """Read a PatchStore; validated on open, safe to share with DataLoader worker processes.

    The HDF5 handle opens lazily and is reopened in each process (h5py handles must not cross a
    fork), so a store object can be pickled into workers.

    Args:
        path: the ``.h5`` file.

    Raises:
        StoreError: the file is missing, unreadable, not a PatchStore, or inconsistent.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        self._meta_cache: dict[str, np.ndarray] = {}
        self._ds: dict[str, h5py.Dataset] = {}
        self._validate()

    # -- opening and validation -------------------------------------------------------------
    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
            self._ds = {}
        return self._h5

    def _dataset(self, key: str) -> h5py.Dataset:
        # dataset handles are kept per process: a fresh f[key] lookup per read (group lookup,
        # Dataset construction, h5py's fast-read checks) made single-patch reads ~2x slower than raw
        f = self._file()
        ds = self._ds.get(key)
        if ds is None:
            ds = self._ds[key] = f[key]
        return ds

    def _validate(self) -> None:
        if not self.path.is_file():
            raise StoreError(f"{self.path}: no such PatchStore file")
        try:
            f = self._file()
        except OSError as exc:
            raise StoreError(f"{self.path}: not a readable HDF5 file ({exc})") from None
        a = f.attrs
        if a.get("magic") != MAGIC:
            raise StoreError(f"{self.path}: not a PatchStore (an HDF5 file without the nasdm-aug schema)")
        version = int(a.get("schema_version", -1))
        if version != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema version {version}, this package reads {SCHEMA_VERSION}")
        missing = [k for k in (*ARRAY_KEYS, *(f"meta/{m}" for m in META_KEYS)) if k not in f]
        if missing:
            raise StoreError(f"{self.path}: missing datasets {missing}")
        n = f["image"].shape[0]
        p = int(a["patch_size"])
        for key, shape in (("image", (n, p, p, 3)), ("inst", (n, p, p)), ("type", (n, p, p))):
            if f[key].shape != shape:
                raise StoreError(f"{self.path}: dataset {key} has shape {f[key].shape}, expected {shape}")
        # the writer stores uint8 RGB, int32 ids and uint8 types; a user's own conversion that
        # stores a float image (e.g. in [0, 1]) would otherwise pass every check and train on garbage
        for key, kinds, want in (("image", "u", "uint8 RGB in 0..255"), ("inst", "iu", "integer instance ids"),
                                 ("type", "iu", "integer type ids")):
            dt = f[key].dtype
            if dt.kind not in kinds or (key == "image" and dt != np.uint8):
                raise StoreError(f"{self.path}: dataset {key} has dtype {dt}, expected {want}; convert it "
                                 "(e.g. image: (x * 255).round().astype(uint8)) or rebuild the store with "
                                 "nasdm-aug prepare")
        for m in META_KEYS:
            if f["meta"][m].shape != (n,):
                raise StoreError(f"{self.path}: meta/{m} has {f['meta'][m].shape[0]} rows for {n} patches")
        try:
            self.type_table = NucleiTypeTable.from_json(a["type_table"])
            self.config: dict = json.loads(a["config"])
            self.splits: dict[str, list[str]] = json.loads(a.get("splits", "{}"))
            self.attrs: dict[str, Any] = json.loads(a.get("extra", "{}"))
        except (KeyError, ValueError, TypeError) as exc:
            raise StoreError(f"{self.path}: corrupt attributes ({exc})") from None
        head = slice(0, min(n, 64))  # a cheap look at the first patches; reads check nothing more
        if n and (int(f["inst"][head].min()) < 0 or int(f["type"][head].max()) > self.type_table.n_types):
            raise StoreError(f"{self.path}: negative instance ids or type ids above the table's "
                             f"{self.type_table.n_types} ({self.type_table.name}) in the first patches")
        self.patch_size = p
        self.origin = str(a["origin"])
        self.package_version = str(a.get("package_version", ""))
        self._n = n

    # -- pickling for DataLoader workers ----------------------------------------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_h5"] = None
        state["_pid"] = None
        state["_ds"] = {}
        return state

    def close(self) -> None:
        """Close this process's handle (it reopens on the next read)."""
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None
        self._ds = {}

    def __enter__(self) -> "PatchStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One patch: ``image``, ``inst``, ``type`` arrays plus its metadata and ``index``."""
        i = self._check_index(index)
        item: dict[str, Any] = {k: self._dataset(k)[i] for k in ARRAY_KEYS}
        for m, rows in self._meta_rows().items():
            item[m] = rows[i]
        item["index"] = i
        return item

    def content_digest(self, split: str | None = None, samples: int = 64) -> str:
        """A short hash of what a split holds: its size, patch size, types, source images and the
        pixels of up to ``samples`` evenly spaced patches. Unlike a hash of the file it ignores
        attributes (a store re-prepared by another version keeps its digest), and it costs a few
        reads, not a pass over the whole file."""
        import hashlib

        idx = self.indices(split) if split else np.arange(len(self))
        h = hashlib.sha256(json.dumps([int(len(idx)), self.patch_size, list(self.type_table.names)]).encode())
        h.update(json.dumps([str(s) for s in self.meta("source")[idx]]).encode())
        if len(idx):
            pick = idx[np.unique(np.linspace(0, len(idx) - 1, min(samples, len(idx))).astype(np.int64))]
            for key, arr in self.read(pick).items():
                h.update(key.encode())
                h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:16]

    def read(self, indices: Sequence[int] | np.ndarray, keys: Sequence[str] = ARRAY_KEYS) -> dict[str, np.ndarray]:
        """Stacked arrays for many patches, in the order given (duplicates allowed)."""
        idx = np.asarray([self._check_index(i) for i in indices], dtype=np.int64)
        out: dict[str, np.ndarray] = {}
        order = np.argsort(idx, kind="stable")
        uniq, inverse = np.unique(idx[order], return_inverse=True)
        for key in keys:
            if key in META_KEYS:
                out[key] = self.meta(key)[idx]
                continue
            if key not in ARRAY_KEYS:
                raise unknown_name("key", key, ARRAY_KEYS + META_KEYS)
            ds = self._dataset(key)
            data = ds[uniq] if len(uniq) else np.zeros((0, *ds.shape[1:]), ds.dtype)
            res = np.empty((len(idx), *data.shape[1:]), data.dtype)
            res[order] = data[inverse]
            out[key] = res
        return out

    def meta(self, key: str) -> np.ndarray:
        """Per-patch metadata column (``source``, ``y``, ``x``, ``split``, ``origin``, ``parent``, ``seed``)."""
        if key not in META_KEYS:
            raise unknown_name("metadata", key, META_KEYS)
        if key not in self._meta_cache:
            ds = self._file()["meta"][key]
            col = ds.asstr()[:] if h5py.check_string_dtype(ds.dtype) else ds[:]
            if key == "origin":  # stored as a small code, read as its name
                col = np.asarray(ORIGINS, dtype=object)[col]
            self._meta_cache[key] = np.asarray(col)
        return self._meta_cache[key]

    def _meta_rows(self) -> dict[str, list]:
        # metadata as Python lists (str / int), built once: per-item numpy-scalar conversion
        # was ~8% of a single-patch read
        rows = self.__dict__.get("_rows")
        if rows is None:
            rows = self._rows = {m: [self._meta_value(m, v) for v in self.meta(m).tolist()] for m in META_KEYS}
        return rows

    def indices(self, split: str | None = None) -> np.ndarray:
        """Patch indices of a split (those whose source image is in it); all patches for None.

        Raises:
            StoreError: the store has no such split.
        """
        if split is None:
            return np.arange(self._n)
        if split not in self.splits:
            have = sorted(self.splits) or "none"
            raise StoreError(f"{self.path}: no split {split!r} (splits here: {have})")
        names = np.asarray(self.splits[split], dtype=object)
        return np.flatnonzero(np.isin(self.meta("source").astype(object), names))

    def _check_index(self, index: int) -> int:
        i = int(index)
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"patch index {index} out of range for {self._n} patches in {self.path}")
        return i

    @staticmethod
    def _meta_value(key: str, value: Any) -> Any:
        if key in ("source", "split", "origin"):
            return str(value)
        return int(value)

    @property
    def magnification(self) -> float | None:
        """Objective power of the patches (20.0, 40.0), or None where the store does not record it."""
        value = self.attrs.get("magnification")
        return None if value is None else float(value)

    def scale_info(self) -> dict[str, Any]:
        """``patch_size`` and ``magnification``: what a model and a store must share."""
        return {"patch_size": self.patch_size, "magnification": self.magnification}

    def __repr__(self) -> str:
        return (f"PatchStore({str(self.path)!r}, n={self._n}, patch_size={self.patch_size}, "
                f"origin={self.origin!r}, types={self.type_table.name!r})")


def parse_store_arg(arg: str | os.PathLike, default_split: str | None = None) -> tuple[str, str | None]:
    """Split ``STORE[:SPLIT]`` into (path, split); ``default_split`` when none is named.

    A colon followed by something path-like (a separator, or a name ending in ``.h5``) belongs
    to the path, so ``C:/data/x.h5`` and ``C:x.h5`` are whole paths.
    """
    path, sep, split = str(arg).rpartition(":")
    if not sep or not path or os.sep in split or "/" in split or split.endswith(".h5"):
        return str(arg), default_split
    return path, split
