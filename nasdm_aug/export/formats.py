"""The export formats: one :class:`ExportFormat` a format in ``EXPORT_FORMATS``, each with the
writer that lays patches out as that format's own tools read them (``nasdm_aug/export/run.py`` has
the layouts in its docstring, and the type mapping and manifests every format shares)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from nasdm_aug.types import LIZARD, PANNUKE, NucleiTypeTable

__all__ = ["ExportFormat", "EXPORT_FORMATS", "Writer"]


@dataclass(frozen=True)
class ExportFormat:
    """One target format.

    Attributes:
        name: ``--format`` value.
        table: the class list the format holds (None: any; the store's own table is written).
        writer: ``writer(out_dir, table, n, patch_size, options) -> Writer``.
        summary: one line for ``--help``.
    """

    name: str
    table: NucleiTypeTable | None
    writer: Callable[..., "Writer"]
    summary: str


# -- writers ---------------------------------------------------------------------------------------
class Writer:
    """Writes patches into a folder; ``files(name)`` are the paths a patch produced (manifest)."""

    def __init__(self, out: Path, table: NucleiTypeTable, n: int, patch_size: int, options: dict[str, Any]) -> None:
        self.out, self.table, self.n, self.patch_size, self.options = out, table, n, patch_size, options

    def name(self, k: int, source: str) -> str:
        # hover_net's extract_patches names tiles <image>_<index>; the index keeps names unique
        return f"{_safe(source)}_{k:06d}"

    def write(self, k: int, name: str, image: np.ndarray, inst: np.ndarray, typ: np.ndarray) -> str:
        raise NotImplementedError

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        """Release open files after a failure (the folder itself is removed by the caller)."""


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "patch"


def _counts(inst: np.ndarray, typ: np.ndarray, n_types: int) -> np.ndarray:
    """Nuclei per type (index t-1 is type t) of one patch."""
    on = inst > 0
    if not on.any():
        return np.zeros(n_types, np.int64)
    ids, first = np.unique(inst[on], return_index=True)
    t = typ[on][first]
    return np.bincount(t, minlength=n_types + 1)[1: n_types + 1]


class _HoverNetWriter(Writer):
    def write(self, k, name, image, inst, typ):
        # extract_patches.py concatenates the uint8 image with the int32 annotation: int32 [H, W, 5]
        tile = np.concatenate([image.astype(np.int32), inst[..., None].astype(np.int32),
                               typ[..., None].astype(np.int32)], axis=-1)
        rel = f"{name}.npy"
        np.save(self.out / rel, tile)
        return rel

    def finish(self):
        info = {"0": ["background", [0, 0, 0]]}
        for i, (n, c) in enumerate(zip(self.table.names, self.table.colours), start=1):
            info[str(i)] = [n, [int(v) for v in c]]
        (self.out / "type_info.json").write_text(json.dumps(info, indent=1) + "\n")


class _ConicWriter(Writer):
    def __init__(self, *args):
        super().__init__(*args)
        s = self.patch_size
        self.images = np.lib.format.open_memmap(self.out / "images.npy", "w+", np.uint8, (self.n, s, s, 3))
        self.labels = np.lib.format.open_memmap(self.out / "labels.npy", "w+", np.int32, (self.n, s, s, 2))
        self.names: list[str] = []
        self.count_rows: list[np.ndarray] = []

    def name(self, k, source):
        # CoNIC's patch names are <image>-<index>; patches of one image share a split
        return f"{_safe(source).replace('-', '_')}-{k:06d}"

    def write(self, k, name, image, inst, typ):
        self.images[k] = image
        self.labels[k, ..., 0] = inst
        self.labels[k, ..., 1] = typ
        self.names.append(name)
        self.count_rows.append(_counts(inst, typ, self.table.n_types))
        return f"images.npy[{k}]"

    def abort(self):
        self.images = self.labels = None  # drop the memory maps before the folder goes

    def finish(self):
        self.images.flush()
        self.labels.flush()
        self.images = self.labels = None
        with open(self.out / "counts.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(self.table.names)
            w.writerows(r.tolist() for r in self.count_rows)
        with open(self.out / "patch_info.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["patch_info"])
            w.writerows([n] for n in self.names)


class _PanNukeWriter(Writer):
    def __init__(self, *args):
        super().__init__(*args)
        self.fold = int(self.options.get("fold", 0))
        self.root = self.out / f"fold{self.fold}"
        (self.root / "images").mkdir(parents=True)
        (self.root / "labels").mkdir()
        self.tissue = str(self.options.get("tissue") or "unknown")
        self.rows: list[tuple[str, np.ndarray]] = []

    def name(self, k, source):
        return f"{self.fold}_{k}"

    def write(self, k, name, image, inst, typ):
        Image.fromarray(image).save(self.root / "images" / f"{name}.png")
        # CellViT loads np.load(path, allow_pickle=True)[()]["inst_map" / "type_map"]
        np.save(self.root / "labels" / f"{name}.npy",
                {"inst_map": inst.astype(np.int32), "type_map": typ.astype(np.int32)}, allow_pickle=True)
        self.rows.append((f"{name}.png", _counts(inst, typ, self.table.n_types)))
        return f"fold{self.fold}/images/{name}.png"

    def finish(self):
        with open(self.root / "types.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["img", "type"])
            w.writerows([img, self.tissue] for img, _ in self.rows)
        with open(self.root / "cell_count.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["Image", *(n.capitalize() for n in self.table.names)])
            w.writerows([img, *c.tolist()] for img, c in self.rows)
        # a JSON string is a valid YAML scalar, whatever the tissue name holds
        lines = ["tissue_types:", f"  {json.dumps(self.tissue)}: 0", "nuclei_types:", "  Background: 0"]
        lines += [f"  {n.capitalize()}: {i}" for i, n in enumerate(self.table.names, start=1)]
        (self.out / "dataset_config.yaml").write_text("\n".join(lines) + "\n")


class _PngWriter(Writer):
    def __init__(self, *args):
        super().__init__(*args)
        (self.out / "images").mkdir()
        (self.out / "labels").mkdir()
        self.fh = open(self.out / "types.csv", "w", newline="")
        self.csv = csv.writer(self.fh)
        self.csv.writerow(["image", "instance", "type", "type_name"])

    def write(self, k, name, image, inst, typ):
        Image.fromarray(image).save(self.out / "images" / f"{name}.png")
        # a 32-bit TIFF ("I" mode): ids above 255 or 65535 survive, unlike 8- or 16-bit PNGs
        Image.fromarray(inst.astype(np.int32)).save(self.out / "labels" / f"{name}.tif", compression="tiff_deflate")
        on = inst > 0
        ids, first = np.unique(inst[on], return_index=True)
        for i, t in zip(ids.tolist(), typ[on][first].tolist()):
            self.csv.writerow([name, i, t, self.table.names[t - 1] if t else "background"])
        return f"images/{name}.png"

    def finish(self):
        self.fh.close()

    def abort(self):
        self.fh.close()


EXPORT_FORMATS: dict[str, ExportFormat] = {
    "hovernet": ExportFormat("hovernet", None, _HoverNetWriter, "hover_net training tiles (.npy RGB+inst+type) + type_info.json"),
    "conic": ExportFormat("conic", LIZARD, _ConicWriter, "CoNIC images.npy + labels.npy + counts.csv (Lizard's 6 classes)"),
    "pannuke": ExportFormat("pannuke", PANNUKE, _PanNukeWriter, "CellViT's PanNuke fold layout (PanNuke's 5 classes)"),
    "png": ExportFormat("png", None, _PngWriter, "images/*.png + labels/*.tif (32-bit) + types.csv, for StarDist / Cellpose"),
}
