"""Dataset readers: Lizard, CoNSeP/HoVer-Net, CoNIC and PanNuke on disk -> :class:`Tile` records.

Each format (Graham et al. 2021 Lizard/CoNIC, Graham et al. 2019 HoVer-Net, Gamper et al. 2020
PanNuke) is checked as it is read; any problem stops with one :class:`InputError` line.
"""

from __future__ import annotations

import csv
import io
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import h5py
import numpy as np
import scipy.io
from PIL import Image

from nasdm_aug.data.tile import Tile
from nasdm_aug.data.tiling import relabel_sequential
from nasdm_aug.types import CONSEP, LIZARD, PANNUKE, NucleiTypeTable
from nasdm_aug.utils import InputError

__all__ = [
    "ReaderSpec", "READERS", "get_reader", "read_lizard", "read_consep", "read_conic", "read_pannuke",
    "list_lizard", "list_consep", "list_conic", "list_pannuke", "load_rgb", "CONSEP_MERGE", "CONSEP_CLASSES",
    "read_cellvit_label",
]

IMAGE_EXTS = (".png", ".tif", ".tiff")
_INT32_MAX = np.iinfo(np.int32).max

#: HoVer-Net's merge of CoNSeP's original 7 classes into 4: 1 other, 2 inflammatory,
#: 3 healthy + 4 dysplastic/malignant epithelial -> 3 epithelial, 5 fibroblast + 6 muscle +
#: 7 endothelial -> 4 spindle-shaped.
CONSEP_MERGE: dict[int, int] = {1: 1, 2: 2, 3: 3, 4: 3, 5: 4, 6: 4, 7: 4}
#: values of ``read_consep(..., classes=...)``: labels already merged (1..4) or original (1..7)
CONSEP_CLASSES = ("merged", "original")
_CONSEP_LUT = np.array([0, *(CONSEP_MERGE[k] for k in range(1, 8))], np.int64)  # index 0: unlabelled


# -- images -------------------------------------------------------------------------------------
def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 RGB [H, W, 3].

    RGB is taken as is; RGBA whose alpha is fully opaque (255 everywhere) drops the alpha channel;
    anything else (grayscale, palette, 16-bit, translucent RGBA) is refused rather than guessed.

    Raises:
        InputError: the file is unreadable or truncated, or the image is not RGB.
    """
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError) for bad files
        raise InputError(f"{path}: unreadable or truncated image ({exc})") from None
    return _rgb_array(arr, f"{path}", mode)


def _rgb_array(arr: np.ndarray, where: str, mode: str = "") -> np.ndarray:
    """uint8 [H, W, 3] from an image array; integral floats in 0..255 (PanNuke) are converted."""
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        what = f"mode {mode}" if mode else f"shape {arr.shape}"
        raise InputError(f"{where}: image is not RGB ({what}); convert it to 3-channel RGB")
    if arr.dtype != np.uint8:
        if arr.dtype.kind not in "fiu" or arr.size and (
            arr.min() < 0 or arr.max() > 255 or (arr.dtype.kind == "f" and not np.all(arr == np.round(arr)))
        ):
            raise InputError(f"{where}: image dtype {arr.dtype} is not uint8 and not integral 0..255")
        arr = arr.astype(np.uint8)
    if arr.shape[2] == 4:
        if not np.all(arr[..., 3] == 255):
            raise InputError(f"{where}: image is RGBA with transparent pixels; flatten it to RGB")
        arr = arr[..., :3]
    return np.ascontiguousarray(arr)


# -- labels ---------------------------------------------------------------------------------------
def _int_labels(arr: np.ndarray, where: str, key: str) -> np.ndarray:
    """int64 copy of an id/class array; floats must be integral, values in 0..int32 max."""
    arr = np.asarray(arr)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise InputError(f"{where}: {key} holds non-integer values")
    elif arr.dtype.kind not in "iub":
        raise InputError(f"{where}: {key} has dtype {arr.dtype}, expected integers")
    out = arr.astype(np.int64)
    if out.size and (out.min() < 0 or out.max() > _INT32_MAX):
        raise InputError(f"{where}: {key} has values outside 0..{_INT32_MAX} (min {out.min()}, max {out.max()})")
    return out


def _load_mat(path: Path, keys: Sequence[str], optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Read keys from a MATLAB v5 (scipy) or v7.3 (HDF5) .mat file.

    MATLAB stores arrays column-major, so v7.3 datasets read by h5py come back transposed;
    they are transposed back here so both versions give the same [H, W] maps and [N, 1] tables.
    """
    out: dict[str, np.ndarray] = {}
    try:
        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                for k in (*keys, *optional):
                    if k in f:
                        out[k] = np.asarray(f[k][()]).T
        else:
            m = scipy.io.loadmat(path, variable_names=[*keys, *optional])
            out = {k: np.asarray(m[k]) for k in (*keys, *optional) if k in m}
    except Exception as exc:  # scipy/h5py raise ValueError, OSError, TypeError, MatReadError...
        raise InputError(f"{path}: unreadable or truncated .mat file ({type(exc).__name__}: {exc})") from None
    missing = [k for k in keys if k not in out]
    if missing:
        raise InputError(f"{path}: missing key(s) {missing} (has {sorted(out)})")
    return out


def _relabel(inst: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Instance map relabelled 1..N (in order of old id) and the old ids [N] of labels 1..N."""
    inst = _int_labels(inst, where, "instance map")
    new = relabel_sequential(inst)
    old = np.zeros(int(new.max()) + 1, np.int64)
    old[new] = inst
    return new, old[1:]


def _class_per_instance(inst: np.ndarray, cls: np.ndarray, old_ids: np.ndarray, n_types: int, where: str) -> np.ndarray:
    """Each instance's one class [N] from a per-pixel class map (0 = unlabelled pixel).

    Raises:
        InputError: an unknown class id, an instance with no class, or one with two classes.
    """
    n = len(old_ids)
    cls = _int_labels(cls, where, "class map")
    m = inst > 0
    ids, c = inst[m].astype(np.int64), cls[m]
    bad = (c > n_types)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise InputError(f"{where}: unknown class id {int(c[k])} (instance {old_ids[ids[k] - 1]}); valid 1..{n_types}")
    # a (instance, class) histogram: one bincount instead of a python loop over instances
    counts = np.bincount(ids * (n_types + 1) + c, minlength=(n + 1) * (n_types + 1)).reshape(n + 1, n_types + 1)
    has = counts[1:, 1:] > 0
    _check_one_class(has.sum(1), old_ids, where)
    return has.argmax(1) + 1


def _check_one_class(n_classes: np.ndarray, old_ids: np.ndarray, where: str) -> None:
    if (n_classes == 0).any():
        raise InputError(f"{where}: instance {old_ids[np.flatnonzero(n_classes == 0)[0]]} has no class")
    if (n_classes > 1).any():
        raise InputError(f"{where}: instance {old_ids[np.flatnonzero(n_classes > 1)[0]]} has two classes")


def _make_tile(image: np.ndarray, inst: np.ndarray, classes: np.ndarray, name: str) -> Tile:
    """Tile from a relabelled inst map and classes [N] of instances 1..N."""
    lut = np.concatenate([[0], classes]).astype(np.uint8)
    return Tile(image=image, inst=inst.astype(np.int32, copy=False), type=lut[inst], name=name)


def _check_shapes(image: np.ndarray, maps: dict[str, np.ndarray], where: str) -> None:
    for key, arr in maps.items():
        if arr.shape != image.shape[:2]:
            raise InputError(f"{where}: {key} shape {arr.shape} disagrees with image shape {image.shape[:2]}")


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
    m = _load_mat(lbl_path, ("inst_map", "id", "class"))
    where = str(lbl_path)
    _check_shapes(image, {"inst_map": m["inst_map"]}, where)
    inst, old_ids = _relabel(m["inst_map"], where)
    ids = _int_labels(m["id"], where, "id").ravel()
    cls = _int_labels(m["class"], where, "class").ravel()
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
    return _make_tile(image, inst, classes, name)


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
    m = _load_mat(lbl_path, ("inst_map", "type_map"), optional=("inst_type",))
    where = str(lbl_path)
    _check_shapes(image, {"inst_map": m["inst_map"], "type_map": m["type_map"]}, where)
    inst, old_ids = _relabel(m["inst_map"], where)
    # type_map is what HoVer-Net trains on: it gives each instance its class
    type_map = _int_labels(m["type_map"], where, "type_map")
    on = inst > 0
    pix = _consep_class_ids(type_map[on], inst[on], old_ids, classes, table, where, "type_map")
    merged = np.zeros_like(type_map)
    merged[on] = pix
    n_types = table.n_types if classes == "merged" else max(CONSEP_MERGE.values())
    cls = _class_per_instance(inst, merged, old_ids, n_types, where)
    if "inst_type" in m:  # cross-checked against type_map
        listed = _int_labels(m["inst_type"], where, "inst_type").ravel()
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
    return _make_tile(image, inst, cls, name)


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
        raise InputError(f"unknown CoNSeP classes {classes!r}; valid: {', '.join(CONSEP_CLASSES)}")
    return _read_folder(src, names, type_table or CONSEP, _read_consep_one, classes=classes)


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
            image = _rgb_array(np.asarray(images[i]), f"{ip}[{i}]")
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
            _check_shapes(image, {"inst_map": inst_map, "type_map": type_map}, where)
            inst, old_ids = _relabel(inst_map, where)
            classes = _class_per_instance(inst, _int_labels(type_map, where, "type_map"), old_ids, table.n_types, where)
            yield _make_tile(image, inst, classes, name)
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
    inst, old_ids = _relabel(label[..., 0], where)
    classes = _class_per_instance(inst, label[..., 1], old_ids, table.n_types, where)
    return _make_tile(image, inst, classes, name)


def _build_pannuke(image: np.ndarray, masks: np.ndarray, where: str, name: str, table: NucleiTypeTable) -> Tile:
    # channel c < 5 holds the instance ids of class c+1; the last channel is background. Ids are
    # taken per channel (as CellViT's converter does), so equal ids in two channels are two nuclei.
    ids = _int_labels(masks[..., :-1], where, "masks")
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
    return _make_tile(image, inst, classes, name)


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


# -- registry -------------------------------------------------------------------------------------------
def _conic_group(name: str) -> str:
    """CoNIC patches of one Lizard image share a split: ``crag_1-0003`` -> ``crag_1``."""
    return name.rsplit("-", 1)[0] if "-" in name else name


@dataclass(frozen=True)
class ReaderSpec:
    """One on-disk format.

    Attributes:
        name: format name (``--format``).
        read: ``read(src, names=None, type_table=None, **options) -> Iterator[Tile]``; only the
            keyword options named in ``options`` are accepted.
        list_names: ``list_names(src) -> list[str]``: the image names, validated cheaply.
        type_table: the format's own type table.
        group: maps an image name to the source image whose split it shares.
        options: the keyword options ``read`` accepts (``("classes",)`` for CoNSeP).
    """

    name: str
    read: Callable[..., Iterator[Tile]]
    list_names: Callable[[str | os.PathLike], list[str]]
    type_table: NucleiTypeTable
    group: Callable[[str], str] = str
    options: tuple[str, ...] = ()

    def read_with(self, src: str | os.PathLike, names: Sequence[str] | None = None,
                  type_table: NucleiTypeTable | None = None, **options) -> Iterator[Tile]:
        """``read`` with reader options; options given as None are left out (the reader's default).

        Raises:
            InputError: an option this format does not declare (the message lists the declared ones).
        """
        given = {k: v for k, v in options.items() if v is not None}
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            valid = ", ".join(self.options) or "none"
            raise InputError(f"format {self.name!r} takes no option {unknown[0]!r} (its options: {valid})")
        return self.read(src, names, type_table, **given)


READERS: dict[str, ReaderSpec] = {
    "lizard": ReaderSpec("lizard", read_lizard, list_lizard, LIZARD),
    "consep": ReaderSpec("consep", read_consep, list_consep, CONSEP, options=("classes",)),
    "conic": ReaderSpec("conic", read_conic, list_conic, LIZARD, _conic_group),
    "pannuke": ReaderSpec("pannuke", read_pannuke, list_pannuke, PANNUKE),
}


def get_reader(name: str) -> ReaderSpec:
    """Return a registered reader.

    Raises:
        KeyError: unknown format; the message lists the valid ones.
    """
    if name not in READERS:
        raise KeyError(f"unknown format {name!r}; valid: {', '.join(sorted(READERS))}")
    return READERS[name]
