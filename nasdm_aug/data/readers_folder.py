"""Readers of ``Images/`` + ``Labels/`` folders: Lizard (Graham et al. 2021) and CoNSeP as HoVer-Net
releases it (Graham et al. 2019), each label file checked as it is read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from nasdm_aug.data.label_io import (
    IMAGE_EXTS, check_shapes, class_per_instance, int_labels, load_mat, load_rgb, make_tile, relabel,
)
from nasdm_aug.data.tile import Tile
from nasdm_aug.types import CONSEP, LIZARD, NucleiTypeTable
from nasdm_aug.utils import InputError, unknown_name

__all__ = ["read_lizard", "read_consep", "list_lizard", "list_consep", "CONSEP_MERGE", "CONSEP_CLASSES"]

#: HoVer-Net's merge of CoNSeP's original 7 classes into 4: 1 other, 2 inflammatory,
#: 3 healthy + 4 dysplastic/malignant epithelial -> 3 epithelial, 5 fibroblast + 6 muscle +
#: 7 endothelial -> 4 spindle-shaped.
CONSEP_MERGE: dict[int, int] = {1: 1, 2: 2, 3: 3, 4: 3, 5: 4, 6: 4, 7: 4}
#: values of ``read_consep(..., classes=...)``: labels already merged (1..4) or original (1..7)
CONSEP_CLASSES = ("merged", "original")
_CONSEP_LUT = np.array([0, *(CONSEP_MERGE[k] for k in range(1, 8))], np.int64)  # index 0: unlabelled


# -- Images/ + Labels/ folders (Lizard, CoNSeP) -----------------------------------------------------
def _pair_folder(src: str | os.PathLike) -> dict[str, tuple[Path, Path]]:
    """Map image name -> (image path, label path) for ``src/Images/*.png`` + ``src/Labels/*.mat``.

    Raises:
        InputError: a missing folder, an empty folder, an image without labels or labels without an image.
    """
    src = Path(src)
    img_dir, lbl_dir = src / "Images", src / "Labels"
    for d in (img_dir, lbl_dir):
        if not d.is_dir():
            raise InputError(f"{src}: no {d.name}/ folder (expected Images/*.png and Labels/*.mat)")
    images = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTS}
    labels = {p.stem: p for p in sorted(lbl_dir.iterdir()) if p.suffix.lower() == ".mat"}
    if not images and not labels:
        raise InputError(f"{src}: empty dataset (no images in {img_dir}, no .mat files in {lbl_dir})")
    for name, path in images.items():
        if name not in labels:
            raise InputError(f"{path}: image without labels (no {lbl_dir / (name + '.mat')})")
    for name, path in labels.items():
        if name not in images:
            raise InputError(f"{path}: labels without an image (no {img_dir / name}.png)")
    return {n: (images[n], labels[n]) for n in sorted(images)}


def _read_folder(src, names, table: NucleiTypeTable, read_one: Callable[..., Tile], **options) -> Iterator[Tile]:
    pairs = _pair_folder(src)  # pairing errors surface at the call, before any image is read
    todo = list(pairs) if names is None else list(names)
    missing = [n for n in todo if n not in pairs]
    if missing:
        raise InputError(f"{src}: no image named {missing[0]!r}")
    return (read_one(*pairs[n], n, table, **options) for n in todo)


def list_lizard(src: str | os.PathLike) -> list[str]:
    """Sorted image names of a Lizard/CoNSeP folder (validates the image/label pairing)."""
    return list(_pair_folder(src))


list_consep = list_lizard


def _read_lizard_one(img_path: Path, lbl_path: Path, name: str, table: NucleiTypeTable) -> Tile:
    image = load_rgb(img_path)
    m = load_mat(lbl_path, ("inst_map", "id", "class"))
    where = str(lbl_path)
    check_shapes(image, {"inst_map": m["inst_map"]}, where)
    inst, old_ids = relabel(m["inst_map"], where)
    ids = int_labels(m["id"], where, "id").ravel()
    cls = int_labels(m["class"], where, "class").ravel()
    if ids.shape != cls.shape:
        raise InputError(f"{where}: 'id' has {ids.size} entries but 'class' has {cls.size}")
    order = np.argsort(ids, kind="stable")
    ids, cls = ids[order], cls[order]
    dup = (ids[1:] == ids[:-1]) & (cls[1:] != cls[:-1])
    if dup.any():
        raise InputError(f"{where}: instance {ids[1:][dup][0]} has two classes ({cls[:-1][dup][0]} and {cls[1:][dup][0]})")
    pos = np.minimum(np.searchsorted(ids, old_ids), max(len(ids) - 1, 0))
    found = (ids[pos] == old_ids) if len(ids) else np.zeros(len(old_ids), bool)
    if not found.all():
        raise InputError(f"{where}: instance {old_ids[~found][0]} has no class (not in 'id')")
    classes = cls[pos] if len(ids) else np.zeros(0, np.int64)
    bad = (classes < 1) | (classes > table.n_types)
    if bad.any():
        raise InputError(f"{where}: unknown class id {classes[bad][0]} (instance {old_ids[bad][0]}); "
                         f"valid 1..{table.n_types} of table {table.name!r}")
    return make_tile(image, inst, classes, name)


def _consep_class_ids(values: np.ndarray, owner: np.ndarray, old_ids: np.ndarray, classes: str,
                      table: NucleiTypeTable, where: str, key: str) -> np.ndarray:
    """Check class ids ``values`` (0 = unlabelled) of ``key`` and merge them when needed.

    ``owner`` holds the relabelled instance (1..N) of each value, ``old_ids`` the file's id of
    each instance (for messages). ``classes="original"``: ids must be in 0..7 and are merged with
    :data:`CONSEP_MERGE`; ``"merged"``: ids must be in 0..table.n_types and are returned as they are.
    """
    what = "class id" if key == "type_map" else f"{key} class id"
    if classes == "original":
        bad = values > 7
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise InputError(f"{where}: {what} {values[k]} (instance {old_ids[owner[k] - 1]}) is outside CoNSeP's "
                             f"original classes (valid 1..7)")
        return _CONSEP_LUT[values]
    bad = values > table.n_types
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        hint = ("; labels in CoNSeP's original 7 classes need --consep-classes original"
                if values[k] <= 7 else "")
        raise InputError(f"{where}: {what} {values[k]} (instance {old_ids[owner[k] - 1]}) is outside table "
                         f"{table.name!r} (valid 1..{table.n_types}){hint}")
    return values


def _read_consep_one(img_path: Path, lbl_path: Path, name: str, table: NucleiTypeTable,
                     classes: str = "merged") -> Tile:
    image = load_rgb(img_path)
    m = load_mat(lbl_path, ("inst_map", "type_map"), optional=("inst_type",))
    where = str(lbl_path)
    check_shapes(image, {"inst_map": m["inst_map"], "type_map": m["type_map"]}, where)
    inst, old_ids = relabel(m["inst_map"], where)
    # type_map is what HoVer-Net trains on: it gives each instance its class
    type_map = int_labels(m["type_map"], where, "type_map")
    on = inst > 0
    pix = _consep_class_ids(type_map[on], inst[on], old_ids, classes, table, where, "type_map")
    merged = np.zeros_like(type_map)
    merged[on] = pix
    n_types = table.n_types if classes == "merged" else max(CONSEP_MERGE.values())
    cls = class_per_instance(inst, merged, old_ids, n_types, where)
    if "inst_type" in m:  # cross-checked against type_map
        listed = int_labels(m["inst_type"], where, "inst_type").ravel()
        n, top = len(old_ids), int(old_ids.max()) if len(old_ids) else 0
        if len(listed) == n:  # one row per nucleus in sorted-id order (ids 1..N or cropped, e.g. 15..759)
            given = listed
        elif len(listed) == top:  # one row per id 1..max id, rows of absent ids unused
            given = listed[old_ids - 1]
        else:
            raise InputError(f"{where}: inst_type has {len(listed)} rows but inst_map has {n} instances "
                             f"(max id {top}); expected {n} rows (one per instance) or {top} (one per id)")
        given = _consep_class_ids(given, np.arange(1, n + 1), old_ids, classes, table, where, "inst_type")
        differ = given != cls
        if differ.any():
            k = int(np.flatnonzero(differ)[0])
            raise InputError(f"{where}: instance {old_ids[k]}: type_map says {cls[k]}, inst_type says {given[k]}")
    if classes == "original" and cls.size and cls.max() > table.n_types:
        k = int(np.argmax(cls > table.n_types))
        raise InputError(f"{where}: merged class id {cls[k]} (instance {old_ids[k]}) is outside table "
                         f"{table.name!r} (valid 1..{table.n_types})")
    return make_tile(image, inst, cls, name)


def read_lizard(src: str | os.PathLike, names: Sequence[str] | None = None,
                type_table: NucleiTypeTable | None = None) -> Iterator[Tile]:
    """Read a Lizard folder: ``Images/<name>.png`` + ``Labels/<name>.mat``.

    The .mat files (MATLAB v5 or v7.3/HDF5) hold ``inst_map`` [H, W], ``id`` [N, 1] and ``class``
    [N, 1] (the class of each id); ``bbox`` and ``centroid`` are not needed and are ignored. The
    Lizard download splits images over two folders: put them together under ``Images/``.

    Args:
        src: the dataset folder.
        names: image names to read (default: all, sorted).
        type_table: the table class ids are checked against (default Lizard's six types).

    Returns:
        iterator of Tile, inst relabelled 1..N in the order of the original ids.

    Raises:
        InputError: pairing, shapes, classes, unreadable files (one line naming the file).
    """
    return _read_folder(src, names, type_table or LIZARD, _read_lizard_one)


def read_consep(src: str | os.PathLike, names: Sequence[str] | None = None,
                type_table: NucleiTypeTable | None = None, *, classes: str = "merged") -> Iterator[Tile]:
    """Read a CoNSeP / HoVer-Net folder: ``Images/<name>.png`` + ``Labels/<name>.mat``.

    The .mat files hold ``inst_map`` and ``type_map`` [H, W] and optionally ``inst_type``;
    ``inst_centroid`` is ignored. Instance ids need not be 1..N (cropped HoVer-Net files carry
    e.g. 15..759); they are relabelled 1..N in order of the old id. ``type_map`` gives each
    instance its class (it is what HoVer-Net trains on); ``inst_type``, when present, is
    cross-checked against it. ``inst_type`` may hold one row per instance in sorted-id order
    (row k = the k-th smallest id; with ids 1..N that is row id-1) or one row per id 1..max id
    (row id-1; rows of ids absent from ``inst_map`` are not used); any other row count is refused.

    Args:
        src: the dataset folder.
        names: image names to read (default: all, sorted).
        type_table: the table class ids are checked against (default CoNSeP's four types).
        classes: ``"merged"`` (default): labels already hold HoVer-Net's merged classes, checked
            against ``type_table``; ``"original"``: labels hold CoNSeP's 7 original classes (1..7),
            merged with :data:`CONSEP_MERGE` (3, 4 -> 3 epithelial; 5, 6, 7 -> 4 spindle-shaped) in
            both ``type_map`` and ``inst_type`` before the cross-check.

    Returns:
        iterator of Tile.

    Raises:
        InputError: pairing, shapes, a class id outside the table (or outside 1..7 with
            ``classes="original"``), an instance with no class or two classes in ``type_map``,
            ``inst_type`` with the wrong row count or disagreeing with ``type_map``, unreadable
            files (one line naming the file); an unknown ``classes`` value.
    """
    if classes not in CONSEP_CLASSES:
        raise unknown_name("CoNSeP classes", classes, CONSEP_CLASSES)
    return _read_folder(src, names, type_table or CONSEP, _read_consep_one, classes=classes)
