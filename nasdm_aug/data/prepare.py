"""``prepare``: read a dataset, tile it and write one PatchStore with per-image splits, following
the data preparation of NASDM (Shrivastava & Fletcher 2023, Sec. 4.1: 128-px patches, stride 64, Lizard splits).
"""

from __future__ import annotations

import multiprocessing
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from nasdm_aug.config import ConfigBase
from nasdm_aug.data.magnification import NATIVE_MAGNIFICATION, microns_per_pixel, rescale_tile
from nasdm_aug.data.readers import READERS, get_reader
from nasdm_aug.data.splits import PAPER_FRACTIONS, SplitSpec, make_splits, split_counts, split_of
from nasdm_aug.data.store_writer import PatchStoreWriter
from nasdm_aug.data.tile import Tile
from nasdm_aug.data.tiling import Patches, TilingConfig, tile_image
from nasdm_aug.types import NucleiTypeTable, get_type_table
from nasdm_aug.utils import InputError, check_writable, unknown_name

__all__ = ["FORMATS", "PrepareConfig", "prepare", "format_summary"]

FORMATS = (*READERS, "toy")
_SPLIT_ROWS = ("Train", "R1", "R2", "Test")


@dataclass(frozen=True)
class PrepareConfig(ConfigBase):
    """What ``nasdm-aug prepare`` does; stored in the PatchStore it writes."""

    format: str = "toy"  # lizard | consep | conic | pannuke | toy
    src: str = ""  # the dataset folder (unused for toy)
    out: str = "patches.h5"  # the PatchStore to write
    patch_size: int = 128  # patch side in pixels
    stride: int = 64  # step between patches (64 = 50% overlap)
    min_tissue: float = 0.5  # drop patches with a smaller tissue fraction
    tissue_threshold: float = 0.05  # HSV saturation above which a pixel is tissue
    split_counts: tuple[int, int, int] | None = None  # (Test, R2, R1) images; None = fractions
    split_fractions: tuple[float, float, float] = PAPER_FRACTIONS  # (Test, R2, R1) of all images
    seed: int = 0  # seeds the split shuffle (and the toy generator)
    type_table: str = ""  # type table name; "" = the format's own
    limit: int = 0  # use only the first N images (sorted by name); 0 = all
    toy_images: int = 8  # toy: number of images to generate
    toy_size: int = 1000  # toy: image side in pixels
    keep_source: str = ""  # toy: keep the generated Lizard-layout folder here
    compression: str = "lzf"  # HDF5 filter: lzf, gzip or none
    workers: int = 1  # processes reading and tiling images (1 = in this process)
    overwrite: bool = False  # replace an existing OUT
    magnification: float = 0.0  # target objective power (e.g. 20); 0 = keep the source's
    source_magnification: float = 0.0  # the source's objective power; 0 = the format's native one
    min_nucleus_area: int = 4  # after resampling, drop pieces of nuclei smaller than this (px)
    consep_classes: str = "merged"  # consep: labels in the merged 4 classes or the original 7

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise unknown_name("format", self.format, FORMATS)
        if self.format != "toy" and not self.src:
            raise ValueError(f"format {self.format!r} needs a source folder (src)")
        if self.limit < 0 or self.toy_images < 1 or self.toy_size < 1 or self.workers < 1:
            raise ValueError("limit must be >= 0; toy_images, toy_size and workers >= 1")
        if self.compression not in ("lzf", "gzip", "none"):
            raise ValueError(f"compression must be lzf, gzip or none, got {self.compression!r}")
        if self.type_table:
            get_type_table(self.type_table)  # raises on an unknown name
        if self.magnification < 0 or self.source_magnification < 0 or self.min_nucleus_area < 0:
            raise ValueError("magnification, source_magnification and min_nucleus_area must be >= 0")
        if self.magnification and self.magnification > self.native():
            raise ValueError(f"magnification {self.magnification:g}x is above the source's {self.native():g}x "
                             "(prepare only downsamples)")
        from nasdm_aug.data.readers import CONSEP_CLASSES

        if self.consep_classes not in CONSEP_CLASSES:
            raise ValueError(f"consep_classes must be one of {CONSEP_CLASSES}, got {self.consep_classes!r}")
        self.tiling()
        self.split_spec()

    @classmethod
    def from_options(cls, paths: Sequence[str], *, fmt: str, images: int | None = None, size: int | None = None,
                     split_fractions: tuple[float, float, float] | None = None, **fields: Any) -> "PrepareConfig":
        """The config ``nasdm-aug prepare`` builds: ``paths`` are ``SRC OUT`` (``OUT`` alone for
        ``fmt`` toy), ``images`` and ``size`` the toy tissue's ``toy_images`` and ``toy_size``;
        ``**fields`` are the config's other fields, each None for its default.

        Raises:
            InputError: the wrong number of paths for ``fmt``, ``split_counts`` with
                ``split_fractions``, ``keep_source`` for a format other than toy, or a value the
                config rejects.
        """
        want = 1 if fmt == "toy" else 2
        if len(paths) != want:
            raise InputError(f"`format` {fmt} takes {'OUT.h5' if fmt == 'toy' else 'SRC OUT.h5'}, got {len(paths)} path(s)")
        if fields.get("split_counts") and split_fractions:
            raise InputError("give `split_counts` or `split_fractions`, not both")
        if fields.get("keep_source") and fmt != "toy":
            raise InputError("`keep_source` only applies to `format` toy")
        given = {"format": fmt, "src": "" if fmt == "toy" else paths[0], "out": paths[-1], "toy_images": images,
                 "toy_size": size, "split_fractions": split_fractions or None, **fields}
        try:
            return cls(**{k: v for k, v in given.items() if v is not None})
        except (TypeError, ValueError) as exc:
            raise InputError(str(exc)) from None

    def native(self) -> float:
        """The source's objective power (given, or the format's known native one)."""
        return self.source_magnification or NATIVE_MAGNIFICATION[self.format]

    def target(self) -> float:
        """The store's objective power."""
        return self.magnification or self.native()

    def scale(self) -> float:
        """Resampling factor from source pixels to store pixels (1 = none)."""
        return self.target() / self.native()

    def reader_options(self) -> dict[str, Any]:
        """Keyword options of this format's reader."""
        return {"classes": self.consep_classes} if self.format == "consep" else {}

    def tiling(self) -> TilingConfig:
        """The tiling part of the config (validated)."""
        return TilingConfig(self.patch_size, self.stride, self.min_tissue, self.tissue_threshold)

    def split_spec(self) -> SplitSpec:
        """The split part of the config (validated)."""
        return SplitSpec(self.split_counts, self.split_fractions, self.seed)

    def table(self) -> NucleiTypeTable:
        """The type table class ids are checked against and the store records."""
        if self.type_table:
            return get_type_table(self.type_table)
        return get_reader("lizard" if self.format == "toy" else self.format).type_table


def _per_type(tile: Tile, n_types: int) -> np.ndarray:
    """Nuclei count per type id [n_types + 1] (index 0 unused) of one image."""
    n = int(tile.inst.max()) if tile.inst.size else 0
    cls = np.zeros(n + 1, np.int64)
    cls[tile.inst] = tile.type  # every pixel of an instance has its one type
    return np.bincount(cls[1:], minlength=n_types + 1)


def _process(tile: Tile, table: NucleiTypeTable, tiling: TilingConfig | None, scale: float, min_area: int
             ) -> tuple[str, Patches | None, np.ndarray]:
    """Resample (to the store's magnification) and tile one image (``tiling`` None: count only);
    nuclei are counted after resampling."""
    if scale != 1.0:
        tile = rescale_tile(tile, scale, min_area)
    return tile.name, None if tiling is None else tile_image(tile, tiling), _per_type(tile, table.n_types)


def _job(args: tuple) -> tuple[str, Patches, np.ndarray]:
    """Read and tile one image (runs in a worker process)."""
    fmt, src, name, table, tiling, scale, min_area, options = args
    tile = next(iter(get_reader(fmt).read(src, [name], table, **options)))
    return _process(tile, table, tiling, scale, min_area)


def _results(cfg: PrepareConfig, fmt: str, src: str, names: list[str], table: NucleiTypeTable, tile: bool = True
             ) -> Iterator[tuple[str, Patches | None, np.ndarray]]:
    """(name, patches or None without ``tile``, nuclei per type) for each image, in the order of ``names``."""
    tiling, scale, options = cfg.tiling() if tile else None, cfg.scale(), cfg.reader_options()
    if cfg.workers == 1:
        for tile in get_reader(fmt).read(src, names, table, **options):
            yield _process(tile, table, tiling, scale, cfg.min_nucleus_area)
        return
    jobs = [(fmt, src, n, table, tiling, scale, cfg.min_nucleus_area, options) for n in names]
    # spawn, not fork: the parent may hold an open HDF5 file and torch's thread pools
    with multiprocessing.get_context("spawn").Pool(cfg.workers) as pool:
        yield from pool.imap(_job, jobs, chunksize=1)  # imap keeps the input order


def _type_counts(cfg: PrepareConfig, fmt: str, src: str, names: list[str], table: NucleiTypeTable,
                 progress: bool) -> np.ndarray:
    """Nuclei per type [len(names), n_types] of each image, as the store will hold them."""
    out = np.zeros((len(names), table.n_types), np.int64)
    bar = tqdm(_results(cfg, fmt, src, names, table, tile=False), total=len(names), desc="count types",
               unit="img", disable=not progress)
    for k, (_, _, per_type) in enumerate(bar):
        out[k] = per_type[1:]
    return out


def _new_summary(cfg: PrepareConfig, table: NucleiTypeTable) -> dict[str, Any]:
    row = lambda: {"images": 0, "patches": 0, "nuclei": dict.fromkeys(table.names, 0)}  # noqa: E731
    return {"out": cfg.out, "format": cfg.format, "type_table": table.name, "magnification": cfg.target(),
            "source_magnification": cfg.native(), "patch_size": cfg.patch_size, "images": 0,
            "images_without_patches": [], "patches": 0, "nuclei": dict.fromkeys(table.names, 0),
            "splits": {s: row() for s in _SPLIT_ROWS}}


def _count(summary: dict, name: str, splits: list[str], n_patches: int, per_type: np.ndarray,
           table: NucleiTypeTable) -> None:
    summary["images"] += 1
    summary["patches"] += n_patches
    if n_patches == 0:
        summary["images_without_patches"].append(name)
    for row in [summary, *(summary["splits"][s] for s in splits)]:
        if row is not summary:
            row["images"] += 1
            row["patches"] += n_patches
        for t, type_name in enumerate(table.names, start=1):
            row["nuclei"][type_name] += int(per_type[t])


def prepare(config: PrepareConfig, progress: bool = True) -> dict[str, Any]:
    """Read ``config.src`` (or generate toy tissue), tile it and write the PatchStore ``config.out``.

    Steps: 1. list and pair the images (cheap checks first), 2. assign per-image splits,
    3. read, check and tile each image, appending its patches, 4. rename the finished store.
    Any error removes the partial file, so a failed or interrupted run leaves no ``out``.

    Args:
        config: what to read and how to tile and split it.
        progress: show tqdm bars.

    Returns:
        summary dict: ``out``, ``format``, ``type_table``, ``images``, ``patches``, ``nuclei``
        (type name -> count), ``images_without_patches`` (names), ``splits`` (split ->
        ``images``, ``patches``, ``nuclei``), ``seconds``, ``images_per_s``, ``patches_per_s``.

    Raises:
        InputError: bad input data, no patch from any image, or ``out`` exists without ``overwrite``.
    """
    check_writable(config.out, config.overwrite)
    if config.format != "toy":
        return _prepare_from(config, config.format, config.src, progress)
    from nasdm_aug.data.toy import write_toy_dataset

    size = (config.toy_size, config.toy_size)
    if config.keep_source:
        write_toy_dataset(config.keep_source, config.toy_images, config.seed, size=size,
                          progress=progress, overwrite=config.overwrite)
        return _prepare_from(config, "lizard", config.keep_source, progress)
    with tempfile.TemporaryDirectory(prefix="nasdm-toy-") as tmp:
        src = str(Path(tmp) / "toy")
        write_toy_dataset(src, config.toy_images, config.seed, size=size, progress=progress)
        return _prepare_from(config, "lizard", src, progress)


def _prepare_from(config: PrepareConfig, fmt: str, src: str, progress: bool) -> dict[str, Any]:
    start = time.perf_counter()
    spec, table = get_reader(fmt), config.table()
    names = spec.list_names(src)
    if config.limit:
        names = names[: config.limit]
    if not names:
        raise InputError(f"{src}: empty dataset (no images)")
    # a first pass (read and resample, no tiling) counts nuclei per type, so that every held-out
    # split can hold every type; it is skipped where the whole store is one split
    try:
        n_groups = len({spec.group(n) for n in names})
        sizes = split_counts(n_groups, config.split_spec())
        held_out = sizes["Test"] + sizes["R2"] + sizes["R1"] > 0 and sizes["Test"] < n_groups
        counts = _type_counts(config, fmt, src, names, table, progress) if held_out else None
        splits = make_splits(names, config.split_spec(), groups=[spec.group(n) for n in names], type_counts=counts)
    except ValueError as exc:
        raise InputError(f"{src}: {exc}") from None
    meta_split = split_of(splits)
    member = _membership(splits)
    summary = _new_summary(config, table)
    compression = None if config.compression == "none" else config.compression
    with PatchStoreWriter(config.out, patch_size=config.patch_size, type_table=table, config=config.to_dict(),
                          compression=compression, overwrite=config.overwrite,
                          attrs={"source_format": fmt, "source_dir": _source_dir(config, src),
                                 "magnification": config.target(),
                                 "microns_per_pixel": microns_per_pixel(config.target()),
                                 "source_magnification": config.native(),
                                 "class_merge": _class_merge(config)}) as writer:
        writer.set_splits(splits)
        bar = tqdm(_results(config, fmt, src, names, table), total=len(names), desc="prepare",
                   unit="img", disable=not progress)
        for name, patches, per_type in bar:
            n = len(patches)
            if n:
                writer.append_batch(patches.image, patches.inst, patches.type, source=[name] * n,
                                    y=patches.y.tolist(), x=patches.x.tolist(), split=[meta_split[name]] * n)
            _count(summary, name, member.get(name, []), n, per_type, table)
            bar.set_postfix(patches=summary["patches"], refresh=False)
        if summary["patches"] == 0:  # raised inside the writer: the partial store is removed
            raise InputError(f"{_source_dir(config, src)}: none of the {len(names)} images gave a patch ({config.patch_size}-px patches at "
                             f"{config.target():g}x, at least {config.min_tissue:.0%} tissue): the images are "
                             "smaller than a patch or hold too little tissue; lower `patch_size`")
        seconds = time.perf_counter() - start
        summary.update(seconds=round(seconds, 3), images_per_s=round(summary["images"] / seconds, 3),
                       patches_per_s=round(summary["patches"] / seconds, 3))
        writer.set_attr("summary", summary)
    return summary


def _class_merge(config: PrepareConfig) -> dict[str, int] | None:
    """The class map applied while reading (CoNSeP's 7 -> 4 merge), recorded in the store."""
    if config.format == "consep" and config.consep_classes == "original":
        from nasdm_aug.data.readers import CONSEP_MERGE

        return {str(k): int(v) for k, v in CONSEP_MERGE.items()}
    return None


def _source_dir(config: PrepareConfig, src: str) -> str:
    """Where the images came from; generated toy tissue in a temporary folder is not kept."""
    if config.format == "toy" and not config.keep_source:
        return f"(toy tissue, seed {config.seed}, not kept)"
    return str(Path(src).resolve())


def _membership(splits: dict[str, list[str]]) -> dict[str, list[str]]:
    """Image name -> the split rows it counts in (an R1 image counts in Train and R1)."""
    out: dict[str, list[str]] = {}
    for s in _SPLIT_ROWS:
        for n in splits.get(s, []):
            out.setdefault(n, []).append(s)
    return out


def _scale_text(summary: dict[str, Any]) -> str:
    mag, native = summary.get("magnification"), summary.get("source_magnification")
    if mag is None:
        return ""
    size = f"{summary['patch_size']} px " if "patch_size" in summary else ""
    was = f" from {native:g}x" if native and native != mag else ""
    return f"{size}at {mag:g}x{was}, {microns_per_pixel(mag):g} um/px, "


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a plain-text table: one row per split, nuclei per type in columns."""
    types = list(summary["nuclei"])
    head = ["split", "images", "patches", "nuclei", *types]
    rows = [[s, r["images"], r["patches"], sum(r["nuclei"].values()), *r["nuclei"].values()]
            for s, r in summary["splits"].items()]
    rows.append(["all", summary["images"], summary["patches"], sum(summary["nuclei"].values()),
                 *summary["nuclei"].values()])
    widths = [max(len(str(v)) for v in col) for col in zip(head, *rows)]
    fmt = lambda r: "  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
    lines = [f"{summary['out']}: {summary['images']} images -> {summary['patches']} patches "
             f"(format {summary['format']}, types {summary['type_table']}, {_scale_text(summary)}"
             f"{summary.get('seconds', 0):.1f} s)",
             fmt(head), *(fmt(r) for r in rows)]
    lines.append("R1 is a subset of Train; nuclei are counted once per source image.")
    present = [t for t, n in summary["nuclei"].items() if n]
    for split, row in summary["splits"].items():
        missing = [t for t in present if row["images"] and not row["nuclei"][t]]
        if missing:
            lines.append(f"warning: {split} holds no {', '.join(missing)} nuclei (too few images hold them); its "
                         "per-type metrics will be undefined")
    if summary["images_without_patches"]:
        lines.append(f"{len(summary['images_without_patches'])} image(s) gave no patches "
                     f"(too small or too little tissue): {', '.join(summary['images_without_patches'][:5])}")
    return "\n".join(lines)
