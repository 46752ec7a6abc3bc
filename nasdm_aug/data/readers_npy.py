"""Readers of stacked ``.npy`` datasets: CoNIC (Graham et al. 2021) and PanNuke (Gamper et al. 2020),
the latter also as CellViT's fold layout (``images/`` + ``labels/*.npy``), whose pickled label
files are read without running arbitrary code."""

from __future__ import annotations

import csv
import io
import os
import pickle
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from nasdm_aug.data.label_io import (
    IMAGE_EXTS, check_shapes, class_per_instance, int_labels, load_rgb, make_tile, relabel, rgb_array,
)
from nasdm_aug.data.tile import Tile
from nasdm_aug.data.tiling import relabel_sequential
from nasdm_aug.types import LIZARD, PANNUKE, NucleiTypeTable
from nasdm_aug.utils import InputError

__all__ = ["read_conic", "read_pannuke", "list_conic", "list_pannuke", "read_cellvit_label"]


# -- stacked .npy datasets (CoNIC, PanNuke) ----------------------------------------------------------
def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"{path.parent}: no {path.name} (expected images.npy and the label array)")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # ValueError for truncated or pickled files, OSError for unreadable ones
        raise InputError(f"{path}: unreadable or truncated .npy file ({exc})") from None


def _npy_pair(src: str | os.PathLike, label_file: str, channels: int) -> tuple[np.ndarray, np.ndarray, Path, Path]:
    """images [N,H,W,C] and labels [N,H,W,channels] memory-mapped, with their shapes checked."""
    src = Path(src)
    if not src.is_dir():
        raise InputError(f"{src}: not a folder")
    ip, lp = src / "images.npy", src / label_file
    if not ip.exists() and not lp.exists():
        raise InputError(f"{src}: empty dataset (no images.npy, no {label_file})")
    if ip.exists() and not lp.exists():
        raise InputError(f"{ip}: images without labels (no {lp})")
    if lp.exists() and not ip.exists():
        raise InputError(f"{lp}: labels without images (no {ip})")
    images, labels = _load_npy(ip), _load_npy(lp)
    if images.ndim != 4 or images.shape[3] not in (3, 4):
        raise InputError(f"{ip}: images are not RGB: shape {images.shape}, expected [N, H, W, 3]")
    if labels.ndim != 4 or labels.shape[3] != channels:
        raise InputError(f"{lp}: shape {labels.shape}, expected [N, H, W, {channels}]")
    if labels.shape[:3] != images.shape[:3]:
        raise InputError(f"{lp}: shape {labels.shape[:3]} disagrees with images {images.shape[:3]} ({ip})")
    if len(images) == 0:
        raise InputError(f"{ip}: empty dataset (0 images)")
    return images, labels, ip, lp


def _npy_names(src: Path, n: int) -> list[str]:
    """Names of a stacked dataset: CoNIC's patch_info.csv when present, else ``<folder>_<index>``."""
    info = src / "patch_info.csv"
    if info.is_file():
        with open(info, newline="") as fh:
            rows = [r[0] for r in csv.reader(fh) if r]
        if rows and rows[0] == "patch_info":  # the header of CoNIC's file
            rows = rows[1:]
        if len(rows) != n or len(set(rows)) != n:
            raise InputError(f"{info}: {len(rows)} distinct names needed for {n} patches")
        return rows
    return [f"{src.name}_{i:05d}" for i in range(n)]


def _read_npy(src, names, table: NucleiTypeTable, label_file: str, channels: int, build: Callable) -> Iterator[Tile]:
    images, labels, ip, lp = _npy_pair(src, label_file, channels)
    all_names = _npy_names(Path(src), len(images))
    index = {n: i for i, n in enumerate(all_names)}
    todo = all_names if names is None else list(names)
    missing = [n for n in todo if n not in index]
    if missing:
        raise InputError(f"{src}: no image named {missing[0]!r}")

    def gen() -> Iterator[Tile]:
        for name in todo:
            i = index[name]
            image = rgb_array(np.asarray(images[i]), f"{ip}[{i}]")
            yield build(image, np.asarray(labels[i]), f"{lp}[{i}]", name, table)
    return gen()


# -- reading CellViT's label files without running arbitrary pickles --------------------------------
class _SafeUnpickler(pickle.Unpickler):
    """Only what ``np.save`` of a dict of arrays needs: numpy's array reconstruction and dtypes."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("builtins", "dict")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cellvit_label(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(inst_map, type_map) from one of CellViT's ``labels/*.npy`` files (a pickled dict), loading
    nothing but numpy arrays.

    Raises:
        InputError: not such a file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(fh)
            if dtype != np.dtype(object) or shape != ():
                raise ValueError(f"holds a {dtype} array of shape {shape}, not a dict")
            obj = _SafeUnpickler(io.BytesIO(fh.read())).load()
        if isinstance(obj, np.ndarray):
            obj = obj[()]
        return np.asarray(obj["inst_map"]), np.asarray(obj["type_map"])
    except (ValueError, KeyError, TypeError, pickle.UnpicklingError, EOFError) as exc:
        raise InputError(f"{path}: not a CellViT label file with inst_map and type_map ({exc})") from None


def _natural_key(name: str) -> list:
    """"0_2" before "0_10", as CellViT's natsorted file lists."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _is_cellvit_fold(src: Path) -> bool:
    return (src / "images").is_dir() and (src / "labels").is_dir() and not (src / "images.npy").exists()


def _cellvit_pairs(src: Path) -> dict[str, tuple[Path, Path]]:
    """name -> (images/NAME.png, labels/NAME.npy) of a CellViT fold folder, natural order."""
    images = {p.stem: p for p in (src / "images").iterdir() if p.suffix.lower() in IMAGE_EXTS}
    labels = {p.stem: p for p in (src / "labels").iterdir() if p.suffix == ".npy"}
    if not images:
        raise InputError(f"{src / 'images'}: no images (a CellViT fold holds images/*.png and labels/*.npy)")
    for name, path in images.items():
        if name not in labels:
            raise InputError(f"{path}: image without labels (no {src / 'labels' / (name + '.npy')})")
    return {n: (images[n], labels[n]) for n in sorted(images, key=_natural_key)}


def _read_cellvit(src: Path, names, table: NucleiTypeTable) -> Iterator[Tile]:
    pairs = _cellvit_pairs(src)
    todo = list(pairs) if names is None else list(names)
    missing = [n for n in todo if n not in pairs]
    if missing:
        raise InputError(f"{src}: no image named {missing[0]!r}")

    def gen() -> Iterator[Tile]:
        for name in todo:
            img_path, lbl_path = pairs[name]
            image = load_rgb(img_path)
            inst_map, type_map = read_cellvit_label(lbl_path)
            where = str(lbl_path)
            check_shapes(image, {"inst_map": inst_map, "type_map": type_map}, where)
            inst, old_ids = relabel(inst_map, where)
            classes = class_per_instance(inst, int_labels(type_map, where, "type_map"), old_ids, table.n_types, where)
            yield make_tile(image, inst, classes, name)
    return gen()


def list_conic(src: str | os.PathLike) -> list[str]:
    """Patch names of a CoNIC folder (validates the two arrays' shapes)."""
    return _npy_names(Path(src), len(_npy_pair(src, "labels.npy", 2)[0]))


def list_pannuke(src: str | os.PathLike) -> list[str]:
    """Patch names of a PanNuke fold folder (validates the two arrays' shapes), or of a CellViT
    fold folder (``images/`` + ``labels/``)."""
    if _is_cellvit_fold(Path(src)):
        return list(_cellvit_pairs(Path(src)))
    return _npy_names(Path(src), len(_npy_pair(src, "masks.npy", 6)[0]))


def _build_conic(image: np.ndarray, label: np.ndarray, where: str, name: str, table: NucleiTypeTable) -> Tile:
    inst, old_ids = relabel(label[..., 0], where)
    classes = class_per_instance(inst, label[..., 1], old_ids, table.n_types, where)
    return make_tile(image, inst, classes, name)


def _build_pannuke(image: np.ndarray, masks: np.ndarray, where: str, name: str, table: NucleiTypeTable) -> Tile:
    # channel c < 5 holds the instance ids of class c+1; the last channel is background. Ids are
    # taken per channel (as CellViT's converter does), so equal ids in two channels are two nuclei.
    ids = int_labels(masks[..., :-1], where, "masks")
    n_cls = ids.shape[-1]
    if n_cls > table.n_types:
        raise InputError(f"{where}: {n_cls} class channels but table {table.name!r} has {table.n_types} types")
    on = ids > 0
    overlap = on.sum(-1) > 1
    if overlap.any():
        y, x = np.argwhere(overlap)[0]
        raise InputError(f"{where}: pixel ({y}, {x}) belongs to instances of two classes")
    cls = np.where(on.any(-1), on.argmax(-1), -1)
    key = np.where(cls >= 0, ids.max(-1) * n_cls + cls, 0)  # one key per (id, class); ids >= 1
    inst = relabel_sequential(key)
    old = np.zeros(int(inst.max()) + 1, np.int64)
    old[inst] = key
    classes = old[1:] % n_cls + 1
    return make_tile(image, inst, classes, name)


def read_conic(src: str | os.PathLike, names: Sequence[str] | None = None,
               type_table: NucleiTypeTable | None = None) -> Iterator[Tile]:
    """Read CoNIC: ``images.npy`` [N, H, W, 3] + ``labels.npy`` [N, H, W, 2].

    Channel 0 holds instance ids, channel 1 the class of each pixel (Lizard's six types). Names
    come from ``patch_info.csv`` when present (CoNIC's ``<image>-<index>``), else ``<folder>_<index>``.

    Args:
        src: the folder with the two arrays.
        names: patch names to read (default: all, in file order).
        type_table: the table class ids are checked against (default Lizard's).

    Returns:
        iterator of Tile, one per patch.

    Raises:
        InputError: missing or unreadable arrays, shapes, classes.
    """
    return _read_npy(src, names, type_table or LIZARD, "labels.npy", 2, _build_conic)


def read_pannuke(src: str | os.PathLike, names: Sequence[str] | None = None,
                 type_table: NucleiTypeTable | None = None) -> Iterator[Tile]:
    """Read a PanNuke fold: ``images.npy`` [N, H, W, 3] + ``masks.npy`` [N, H, W, 6], or the same
    fold in CellViT's layout (``images/NAME.png`` + ``labels/NAME.npy`` dicts of ``inst_map`` and
    ``type_map``, as ``nasdm-aug export --format pannuke`` writes).

    Channels 0-4 hold instance ids of neoplastic, inflammatory, connective, dead and epithelial
    nuclei; channel 5 (background) is ignored. PanNuke ships float64 arrays: integral values in
    0..255 are converted to uint8. Names are ``<folder>_<index>`` (CellViT: the file stems).

    Args:
        src: the folder with the two arrays.
        names: patch names to read (default: all, in file order).
        type_table: the table class ids are checked against (default PanNuke's five types).

    Returns:
        iterator of Tile, one per patch.

    Raises:
        InputError: missing or unreadable arrays, shapes, a pixel claimed by two classes.
    """
    if _is_cellvit_fold(Path(src)):
        return _read_cellvit(Path(src), names, type_table or PANNUKE)
    return _read_npy(src, names, type_table or PANNUKE, "masks.npy", 6, _build_pannuke)
