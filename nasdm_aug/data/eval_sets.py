"""Test sets as PatchStores: parse ``STORE.h5[:SPLIT]`` or a dataset folder, pick the split to score,
check type tables, and the PrepareConfig that makes a whole folder one Test split.

It lives in ``nasdm_aug.data`` because both HoVerNet's ``evaluate`` and the studies use it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nasdm_aug.types import NucleiTypeTable
from nasdm_aug.utils import InputError

__all__ = ["parse_data_arg", "eval_split", "open_eval_store", "check_same_types", "count_split_units",
           "eval_prepare_config"]


# -- test sets: a PatchStore split or a dataset folder prepared at the model's scale -----------------
def parse_data_arg(arg: str | os.PathLike) -> tuple[Path, str | None, bool]:
    """``STORE.h5[:SPLIT]`` or ``DATASET_FOLDER`` as (path, split or None, is_folder).

    Raises:
        InputError: neither an existing store nor a folder, or a folder given a ``:SPLIT``.
    """
    from nasdm_aug.data.store import parse_store_arg

    arg = str(arg)
    if os.path.isdir(arg):
        return Path(arg), None, True
    path, split = parse_store_arg(arg, None)
    if os.path.isdir(path):
        raise InputError(f"{arg}: {path} is a dataset folder; it takes no :SPLIT (all its images are the test set)")
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such test store (STORE.h5[:SPLIT]) or dataset folder")
    return Path(path), split, False


def eval_split(store, split: str | None) -> str | None:
    """The split of ``store`` to score: the one given, else the whole store (None) when it has at
    most one split, else ``Test``.

    Raises:
        InputError: an unknown split, or no split given and several without a ``Test`` one; the
            message names the store and its splits.
    """
    have = ", ".join(f"{k}={len(store.indices(k))}" for k in store.splits) or "none"
    if split is not None:
        if split not in store.splits:
            raise InputError(f"{store.path}: no split {split!r} (splits here: {have})")
        return split
    if len(store.splits) <= 1:
        return None
    if "Test" not in store.splits:
        raise InputError(f"{store.path}: no 'Test' split to default to (splits here: {have}); pass STORE:SPLIT")
    return "Test"


def open_eval_store(path: str | os.PathLike, split: str | None = None):
    """Open a test store and pick its split (see :func:`eval_split`).

    Returns:
        (PatchStore, split or None for the whole store, number of patches).

    Raises:
        InputError: not a PatchStore, an unknown split, or no patches in it.
    """
    from nasdm_aug.data.store import PatchStore

    store = PatchStore(path)
    split = eval_split(store, split)
    n = len(store) if split is None else len(store.indices(split))
    if n == 0:
        raise InputError(f"{store.path}: the test set ({'the whole store' if split is None else f'split {split!r}'}) "
                         "holds no patches")
    return store, split, n


def check_same_types(what: str, table: NucleiTypeTable, other: str, other_table: NucleiTypeTable) -> None:
    """Refuse to score ``what`` against ``other`` when their nuclei types differ (names, in order).

    Raises:
        InputError: one line naming both sides and both tables.
    """
    if tuple(table.names) != tuple(other_table.names):
        raise InputError(f"{what} has type table {table.name!r} ({', '.join(table.names)}) but {other} has "
                         f"{other_table.name!r} ({', '.join(other_table.names)})")


def count_split_units(fmt: str, folder: str | os.PathLike) -> int:
    """How many images a dataset folder holds, counted as the splits count them (CoNIC: source images).

    Raises:
        InputError: an unknown format, or a folder that does not read as ``fmt`` or holds no images.
    """
    from nasdm_aug.data.readers import get_reader

    spec = get_reader(fmt)
    names = spec.list_names(folder)
    if not names:
        raise InputError(f"{folder}: empty dataset (no images)")
    return len({spec.group(n) for n in names})


_LIKE_KEYS = ("min_tissue", "tissue_threshold", "min_nucleus_area", "compression")


def eval_prepare_config(folder: str | os.PathLike, fmt: str, out: str | os.PathLike, *, patch_size: int,
                        stride: int, magnification: float = 0.0, consep_classes: str = "merged",
                        like: dict[str, Any] | None = None):
    """The PrepareConfig that makes a test set of a whole dataset folder: every image in ``Test``.

    Args:
        folder: the dataset folder (recorded resolved, so a rerun can tell it from another).
        fmt: its reader format.
        out: the store to write.
        patch_size, stride, magnification, consep_classes: as the data the model was trained on
            (magnification 0 = the source's own).
        like: a PrepareConfig dict to copy the tissue filter, ``min_nucleus_area``, compression and
            a forced type table from (the study store's).

    Raises:
        InputError: the folder does not read as ``fmt``, or the settings do not fit it (one line).
    """
    from nasdm_aug.data.prepare import PrepareConfig

    like = like or {}
    extra = {k: like[k] for k in _LIKE_KEYS if k in like}
    if like.get("type_table"):
        extra["type_table"] = like["type_table"]
    n = count_split_units(fmt, folder)
    try:
        return PrepareConfig(format=fmt, src=str(Path(folder).resolve()), out=str(out), patch_size=int(patch_size),
                             stride=int(stride), magnification=float(magnification or 0.0),
                             consep_classes=consep_classes, split_counts=(n, 0, 0), **extra)
    except ValueError as exc:
        raise InputError(f"{folder}: cannot prepare it as a {fmt} test set ({exc})") from None
