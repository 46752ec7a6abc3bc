"""Test sets for a trained HoVerNet: a PatchStore split, or a dataset folder prepared once at the
model's own scale and tiling, checked against the model's type table, patch size and
magnification before anything is scored."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from torch.utils.data import Dataset

from nasdm_aug.data.eval_sets import (check_same_types, count_split_units, eval_prepare_config, eval_split,
                                      open_eval_store, parse_data_arg)
from nasdm_aug.types import NucleiTypeTable
from nasdm_aug.utils import InputError

from hovernet.evaluate import resolve_model_dir

__all__ = ["parse_data_arg", "eval_split", "open_eval_store", "check_same_types", "count_split_units",
           "eval_prepare_config", "open_eval_data"]


@contextlib.contextmanager
def open_eval_data(data_arg: str | os.PathLike, model_dir: str | os.PathLike, *, fmt: str | None = None,
                   consep_classes: str | None = None, magnification: float | None = None,
                   progress: bool = False) -> Iterator[tuple[Dataset, str]]:
    """The test set ``hovernet evaluate --data`` names, checked against the model.

    ``STORE.h5[:SPLIT]`` is read as it is (split: see :func:`eval_split`). A dataset folder (with
    ``fmt``) is prepared into a temporary store, removed on exit, at the model's patch size (stride
    half of it) and at ``magnification``, else the one the model's ``data.json`` records, else the
    source's own; all its images form the test set.

    Yields:
        (dataset of MONAI dicts, a description for ``metrics.json``).

    Raises:
        InputError: an unreadable store or folder, a folder without ``fmt`` (or a store with it),
            or a test set whose type table or magnification differs from the model's.
    """
    path, split, is_folder = parse_data_arg(data_arg)
    ckpt = resolve_model_dir(model_dir)
    info = json.loads((ckpt / "data.json").read_text()) if (ckpt / "data.json").is_file() else {}
    model_what = f"model {model_dir}"
    model_table = NucleiTypeTable.from_json(info["type_table"]) if info.get("type_table") else None
    model_mag = info.get("magnification")
    if not is_folder:
        if fmt:
            raise InputError(f"`fmt` {fmt} reads a dataset folder, but `data_arg` {data_arg} is a store")
        with _store_test_set(path, split, model_what, model_table, model_mag) as found:
            yield found
        return
    with _folder_test_set(path, fmt, ckpt, info, model_what, model_table, model_mag, magnification=magnification,
                          consep_classes=consep_classes, progress=progress) as found:
        yield found


@contextlib.contextmanager
def _store_test_set(path: Path, split: str | None, model_what: str, model_table: NucleiTypeTable | None,
                    model_mag: float | None) -> Iterator[tuple[Dataset, str]]:
    """:func:`open_eval_data` of a store: its ``split`` (or all of it), checked against the model
    named ``model_what`` (its type table where recorded, and magnification)."""
    from hovernet.data import store_dataset
    from nasdm_aug.data.magnification import check_same_scale

    store, split, n = open_eval_store(path, split)
    if model_table is not None:
        check_same_types(f"test store {path}", store.type_table, model_what, model_table)
    check_same_scale(f"test store {path}", {"magnification": store.magnification}, model_what,
                     {"magnification": model_mag})
    store.close()
    ds = store_dataset(path, split)
    try:
        yield ds, f"{path}:{split}" if split else f"{path} (whole store)"
    finally:
        _close(ds)


@contextlib.contextmanager
def _folder_test_set(path: Path, fmt: str | None, ckpt: Path, info: dict[str, Any], model_what: str,
                     model_table: NucleiTypeTable | None, model_mag: float | None, *, magnification: float | None,
                     consep_classes: str | None, progress: bool) -> Iterator[tuple[Dataset, str]]:
    """:func:`open_eval_data` of a dataset folder: prepared into a temporary store at the scale and
    patch size of the model (``ckpt`` and its data.json ``info``), all its images as Test."""
    from hovernet.data import store_dataset
    from nasdm_aug.data.magnification import check_same_scale
    from nasdm_aug.data.readers import READERS

    if not fmt:
        raise InputError(f"`data_arg` {path} is a dataset folder: pass `fmt` ({', '.join(sorted(READERS))})")
    if not info.get("patch_size"):
        raise InputError(f"{ckpt}/data.json records no patch size: prepare {path} with `nasdm-aug prepare` "
                         "and pass the store as `data_arg`")
    if magnification and model_mag:
        check_same_scale(f"`magnification` {magnification:g}", {"magnification": magnification}, model_what,
                         {"magnification": model_mag})
    mag = float(magnification or model_mag or 0.0)
    patch = int(info["patch_size"])
    with tempfile.TemporaryDirectory(prefix="nasdm-eval-") as tmp:
        from nasdm_aug.data.prepare import prepare

        want = eval_prepare_config(path, fmt, Path(tmp) / "test.h5", patch_size=patch, stride=max(1, patch // 2),
                                   magnification=mag, consep_classes=consep_classes or "merged")
        if model_table is not None:
            check_same_types(f"test folder {path} ({fmt})", want.table(), model_what, model_table)
        prepare(want, progress=progress)
        _, _, n = open_eval_store(want.out, "Test")
        ds = store_dataset(want.out, "Test")
        try:
            yield ds, (f"{path} ({fmt}, all {want.split_counts[0]} images as Test: {n} patches of {patch} px "
                       f"at {want.target():g}x)")
        finally:
            _close(ds)


def _close(ds: Any) -> None:
    for store in (getattr(ds, "real", None), getattr(ds, "bank", None)):
        if store is not None and hasattr(store, "close"):
            store.close()
