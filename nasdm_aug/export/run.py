"""Export a PatchStore, one of its splits, or a mixed set to the formats other trainers read.

Formats (``EXPORT_FORMATS``):

- ``hovernet``: hover_net's training tiles as its ``extract_patches.py`` writes them, one
  ``NAME.npy`` per patch, [H, W, 5] int32 = RGB, instance id, type id; plus ``type_info.json``
  (``{"0": ["background", [0, 0, 0]], "1": [name, [r, g, b]], ...}``, the file hover_net's
  ``--type_info_path`` takes).
- ``conic``: the CoNIC challenge arrays, ``images.npy`` [N, H, W, 3] uint8 and ``labels.npy``
  [N, H, W, 2] int32 (instance, class), ``counts.csv`` (nuclei per class and patch, the baseline's
  regression target, columns in Lizard's class order) and ``patch_info.csv`` (patch names
  ``<image>-<index>``). Lizard's six classes.
- ``pannuke``: the fold layout CellViT trains on (what its ``prepare_pannuke.py`` makes of PanNuke):
  ``fold<F>/images/<F>_<i>.png``, ``fold<F>/labels/<F>_<i>.npy`` (a dict with ``inst_map`` and
  ``type_map``), ``fold<F>/types.csv`` (``img,type``: the tissue), ``fold<F>/cell_count.csv``
  (``Image,Neoplastic,...``); plus ``dataset_config.yaml`` naming the nuclei and tissue types.
  PanNuke's five classes.
- ``png``: ``images/NAME.png``, ``labels/NAME.tif`` (32-bit instance ids, never 8-bit) and
  ``types.csv`` (``image,instance,type,type_name`` per nucleus), as StarDist and Cellpose read.

Every export also writes ``manifest.json`` (format, source stores and their digests, the mix
plan and seed, the fidelity filter and how many bank patches it kept, counts, type mapping) and
``manifest.csv`` (one row per patch: its file, origin real | synthetic, store, index, parent,
source image and position), so each exported patch can be traced back. The output folder is
written beside itself and renamed into place when complete.

A format with a fixed class list (conic, pannuke) takes the store's types by name; a type with no
namesake must be mapped (``type_map={"neutrophil": "inflammatory", ...}``, or ``"drop"`` to leave
those nuclei out) or the export is refused, naming the types that would be lost.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from nasdm_aug import __version__
from nasdm_aug.data.store import PatchStore
from nasdm_aug.types import NucleiTypeTable
from nasdm_aug.export.formats import EXPORT_FORMATS, ExportFormat, Writer
from nasdm_aug.utils import InputError, atomic_output, file_digest, json_safe, unknown_name

__all__ = ["EXPORT_FORMATS", "ExportFormat", "export", "resolve_type_map", "parse_type_map"]

DROP = "drop"
_CHUNK = 64  # patches read from the store at a time


# -- type mapping ----------------------------------------------------------------------------------
def parse_type_map(text: str | None) -> dict[str, str]:
    """``"a=b,c=drop"`` -> ``{"a": "b", "c": "drop"}``.

    Raises:
        InputError: an entry without ``=`` or a source named twice.
    """
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        src, sep, dst = part.partition("=")
        if not sep or not src.strip() or not dst.strip():
            raise InputError(f"`type_map` entry {part.strip()!r} is not SOURCE=TARGET (e.g. lymphocyte=inflammatory)")
        key = src.strip()
        if key in out:
            raise InputError(f"`type_map` names {key!r} twice")
        out[key] = dst.strip()
    return out


def resolve_type_map(source: NucleiTypeTable, target: NucleiTypeTable, mapping: dict[str, str] | None = None,
                     fmt: str = "") -> np.ndarray:
    """Lookup table source type id -> target type id (0: the nucleus is left out).

    A source type goes to the target type of the same name (case-insensitive) unless ``mapping``
    says otherwise (a target name, or ``"drop"``).

    Raises:
        InputError: ``mapping`` names an unknown type, or a source type has no target; the
            message lists every type that would be lost and the target's types.
    """
    mapping = dict(mapping or {})
    src_names = {n.lower(): i + 1 for i, n in enumerate(source.names)}
    dst_names = {n.lower(): i + 1 for i, n in enumerate(target.names)}
    where = f"format {fmt!r}" if fmt else f"type table {target.name!r}"
    for k, v in mapping.items():
        if k.lower() not in src_names:
            raise InputError(f"`type_map`: {k!r} is not a type of the store's table {source.name!r} "
                             f"({', '.join(source.names)})")
        if v.lower() != DROP and v.lower() not in dst_names:
            raise InputError(f"`type_map`: {v!r} is not a type of {where} ({', '.join(target.names)}; or {DROP!r})")
    lut = np.zeros(source.n_types + 1, np.int64)
    lost = []
    given = {k.lower(): v.lower() for k, v in mapping.items()}
    for name, sid in src_names.items():
        dst = given.get(name, name)
        if dst == DROP:
            continue
        if dst not in dst_names:
            lost.append(source.names[sid - 1])
            continue
        lut[sid] = dst_names[dst]
    if lost:
        raise InputError(
            f"{where} holds the types {', '.join(target.names)}; the store's types {', '.join(lost)} "
            f"({source.name!r}) have no place there and would be lost: map them with `type_map` "
            f"{lost[0]}=TYPE,... (or {lost[0]}={DROP} to leave those nuclei out)")
    return lut


def _apply_map(inst: np.ndarray, typ: np.ndarray, lut: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if lut is None:
        return inst, typ
    new = lut[typ]
    dropped = (new == 0) & (inst > 0)
    if dropped.any():
        inst = np.where(dropped, 0, inst)
    return inst, new.astype(np.uint8)


# -- what to export ----------------------------------------------------------------------------------
@dataclass
class _Item:
    origin: str
    store: PatchStore
    index: int
    parent: int


def _items(store: PatchStore, split: str | None, bank: PatchStore | None, mix: Any | None,
           min_fidelity: float | None = None,
           top_fraction: float | None = None) -> tuple[list[_Item], dict | None, dict | None]:
    """The patches to export, the plan record (None without a mix) and the fidelity filter record
    (None without a filter): the filter, what scored the bank, and how many patches it kept."""
    from nasdm_aug.mixing.fidelity_filter import describe_filter, read_score_info

    if mix is None:
        if bank is not None:
            raise InputError("a bank is exported only as part of a mix: give `mode` (add, replace, synthetic or balance)")
        if split is not None and split not in store.splits:
            raise InputError(f"{store.path}: no split {split!r} (splits: {', '.join(store.splits) or 'none'})")
        idx = store.indices(split)
        if len(idx) == 0:
            raise InputError(f"{store.path}: {'the store' if split is None else f'split {split!r}'} holds no patches")
        origin = store.origin
        filt = None
        if min_fidelity is not None or top_fraction is not None:
            from nasdm_aug.mixing.fidelity_filter import fidelity_keep

            what = describe_filter(min_fidelity, top_fraction)
            if origin != "synthetic":
                raise InputError(f"{store.path}: {what} filters the patches of a synthetic bank, but this is a "
                                 f"{origin} store; export the bank, or a mix with `mode` and `bank`")
            keep = fidelity_keep(store, min_fidelity, top_fraction)
            n_before = len(idx)
            idx = idx[keep[idx]]
            if len(idx) == 0:
                raise InputError(f"{store.path}: {what} keeps none of the {n_before} patches to export")
            filt = {"min_fidelity": min_fidelity, "top_fraction": top_fraction, "kept": int(len(idx)),
                    "of": int(n_before), "scores": read_score_info(store)}
        parents = store.meta("parent")
        items = [_Item(origin, store, int(i), int(parents[i]) if origin == "synthetic" else int(i)) for i in idx]
        return items, None, filt
    from nasdm_aug.mixing.plan import build_plan

    if min_fidelity is not None or top_fraction is not None:
        if mix.filters_bank:
            raise InputError("give the fidelity filter once: in `mix` or as `min_fidelity` / `top_fraction`")
        mix = mix.replace(min_fidelity=min_fidelity, top_fraction=top_fraction)
    plan = build_plan(store, bank, mix)
    items = []
    for o, i, m in zip(plan.origin, plan.index, plan.mask):
        items.append(_Item("synthetic", bank, int(i), int(m)) if o else _Item("real", store, int(i), int(i)))
    filt = None
    if plan.fidelity_kept is not None:
        filt = {"min_fidelity": mix.min_fidelity, "top_fraction": mix.top_fraction, "kept": plan.fidelity_kept[0],
                "of": plan.fidelity_kept[1], "scores": read_score_info(bank)}
    return items, {"config": mix.to_dict(), "counts": plan.counts(), "summary": plan.summary()}, filt


def _source_name(item: _Item, real: PatchStore) -> str:
    if item.origin == "real":
        return str(item.store.meta("source")[item.index])
    if item.parent >= 0 and item.parent < len(real):
        return f"synthetic_{real.meta('source')[item.parent]}"
    return "generated"


def _write_all(items: list[_Item], real: PatchStore, writer: Writer, lut: np.ndarray | None, rows: list,
               fmt: str, progress: bool) -> None:
    """Read the items in chunks (one store read per store and chunk) and hand each to the writer."""
    with tqdm(total=len(items), desc=f"export {fmt}", unit="patch", disable=not progress) as bar:
        for start in range(0, len(items), _CHUNK):
            chunk = items[start: start + _CHUNK]
            for st in {id(it.store): it.store for it in chunk}.values():
                pos = [k for k, it in enumerate(chunk) if it.store is st]
                data = st.read([chunk[k].index for k in pos], ("image", "inst", "type", "y", "x"))
                for j, k in enumerate(pos):
                    it = chunk[k]
                    inst, typ = _apply_map(data["inst"][j], data["type"][j], lut)
                    source = _source_name(it, real)
                    name = writer.name(start + k, source)
                    rows.append((start + k, name, writer.write(start + k, name, data["image"][j], inst, typ), it,
                                 source, int(data["y"][j]), int(data["x"][j])))
            bar.update(len(chunk))


def export(store: str | os.PathLike, out: str | os.PathLike, fmt: str, split: str | None = None,
           bank: str | os.PathLike | None = None, mix: Any | None = None, type_map: dict[str, str] | None = None,
           overwrite: bool = False, progress: bool = True, min_fidelity: float | None = None,
           top_fraction: float | None = None, **options: Any) -> dict[str, Any]:
    """Write a store (or one split, or a mixed set) in another tool's format.

    Args:
        store: the real PatchStore (or any PatchStore, exported as it is).
        out: output folder; written to ``out.partial`` and renamed when complete.
        fmt: one of ``EXPORT_FORMATS``.
        split: the split to export (None: every patch); with ``mix`` the plan's split is used.
        bank: the synthetic bank a ``mix`` draws from.
        mix: a :class:`nasdm_aug.mixing.MixConfig`: the same plan ``SyntheticMixDataset`` builds.
        type_map: source type name -> target type name or ``"drop"`` (fixed-class formats only).
        overwrite: replace an existing ``out``.
        progress: show a tqdm bar.
        min_fidelity: only patches of the bank whose fidelity score (``nasdm-aug score``) is at
            least this: the synthetic patches of ``mix`` (as its own ``min_fidelity``), or, without
            a mix, the patches of ``store`` when it is a bank.
        top_fraction: likewise, only the best this fraction of the bank's scored patches
            (:func:`nasdm_aug.mixing.fidelity_filter.select_by_fidelity`); not with ``min_fidelity``.
        **options: format options: ``fold`` and ``tissue`` (pannuke).

    Returns:
        The manifest (also written to ``out/manifest.json``); its ``fidelity_filter`` holds the
        filter, the attributes of the scores it read, and ``kept`` of ``of`` bank patches (the
        bank's for a mix, the exported split's for a bank), or None without a filter.

    Raises:
        InputError: an unknown format or option, an existing ``out``, a bad split, a plan that
            cannot be drawn, types the format cannot hold, or a fidelity filter that is out of
            range, given twice, or given for a real store or a bank without (complete) scores.
    """
    spec, given = _format_options(fmt, options)
    from nasdm_aug.mixing.fidelity_filter import check_fidelity_filter

    check_fidelity_filter(min_fidelity, top_fraction)
    real = PatchStore(store)
    bank_store = PatchStore(bank) if bank is not None else None
    table, lut = _type_lut(real, spec, fmt, type_map)
    items, plan, filt = _items(real, split, bank_store, mix, min_fidelity, top_fraction)
    with atomic_output(Path(out), overwrite) as tmp:
        tmp.mkdir(parents=True)
        writer = spec.writer(tmp, table, len(items), real.patch_size, given)
        rows = _write_patches(items, real, writer, lut, fmt, progress)
        _write_manifest_csv(tmp / "manifest.csv", rows, bank_store)
        manifest = {
            "format": fmt, "nasdm_aug_version": __version__, "patches": len(items),
            "origins": {o: sum(it.origin == o for it in items) for o in ("real", "synthetic")},
            **_sources(real, bank_store, mix.split if mix is not None else split),
            "plan": plan, "fidelity_filter": json_safe(filt), "type_table": json.loads(table.to_json()),
            "type_map": _type_map_record(real.type_table, table, lut), "options": given,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _write_patches(items: list[_Item], real: PatchStore, writer: Writer, lut: np.ndarray | None, fmt: str,
                   progress: bool) -> list:
    """Every item through ``writer`` (:func:`_write_all`), finished, or aborted on any error; the
    manifest rows."""
    rows: list = []
    try:
        _write_all(items, real, writer, lut, rows, fmt, progress)
    except BaseException:
        writer.abort()
        raise
    writer.finish()
    return rows


def _sources(real: PatchStore, bank: PatchStore | None, split: str | None) -> dict[str, Any]:
    """The manifest's ``store`` and ``bank``: paths, content digests and the split drawn from."""
    return {"store": {"path": str(real.path), "sha256_16": file_digest(real.path), "split": split},
            "bank": None if bank is None else {"path": str(bank.path), "sha256_16": file_digest(bank.path)}}


def _type_map_record(source: NucleiTypeTable, target: NucleiTypeTable, lut: np.ndarray | None) -> dict[str, str] | None:
    """Store type name -> exported type name (or ``"drop"``); None when the types are kept as they are."""
    if lut is None:
        return None
    return {source.names[s - 1]: (target.names[d - 1] if d else DROP) for s, d in enumerate(lut) if s}


def _format_options(fmt: str, options: dict[str, Any]) -> tuple[ExportFormat, dict[str, Any]]:
    """The record of format ``fmt`` and its options given (not None).

    Raises:
        InputError: an unknown format, or an option it does not take.
    """
    if fmt not in EXPORT_FORMATS:
        raise unknown_name("export format", fmt, sorted(EXPORT_FORMATS))
    allowed = {"pannuke": {"fold", "tissue"}}.get(fmt, set())
    given = {k: v for k, v in options.items() if v is not None}
    if set(given) - allowed:
        raise InputError(f"format {fmt!r} takes no option {sorted(set(given) - allowed)[0]!r}")
    return EXPORT_FORMATS[fmt], given


def _type_lut(real: PatchStore, spec: ExportFormat, fmt: str,
              type_map: dict[str, str] | None) -> tuple[NucleiTypeTable, np.ndarray | None]:
    """The type table the export writes and the lookup table from the store's type ids to it (None:
    the store's own types, unchanged).

    Raises:
        InputError: a ``type_map`` for a format that keeps the store's types, or one
            :func:`resolve_type_map` refuses.
    """
    if spec.table is None:
        if type_map:
            raise InputError(f"format {fmt!r} keeps the store's own types ({real.type_table.name!r}); `type_map` is "
                             "only for formats with a fixed class list (conic, pannuke)")
        return real.type_table, None
    lut = resolve_type_map(real.type_table, spec.table, type_map, fmt)
    if np.array_equal(lut, np.arange(len(lut))) and real.type_table.n_types == spec.table.n_types:
        lut = None  # the same classes in the same order
    return spec.table, lut


def _write_manifest_csv(path: Path, rows: list, bank: PatchStore | None) -> None:
    """One row per exported patch, in export order: its name, file, origin, store, index, parent,
    source image and position."""
    rows.sort(key=lambda r: r[0])
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "file", "origin", "store", "index", "parent", "source", "y", "x"])
        for _, name, rel, it, source, y, x in rows:
            w.writerow([name, rel, it.origin, "bank" if it.store is bank else "store", it.index, it.parent,
                        source, y, x])
