"""Synthesis of patch banks (NASDM 4.3): one synthetic patch per real mask (S1 / S2), or patches
for generated masks; resumable after any kill and sharded over torchrun ranks.

Work is cut into chunks of ``batch_size`` patches. Each finished chunk is a small PatchStore in
``OUT.parts/`` (written atomically), so a rerun with the same arguments skips it; ranks take every
``world_size``-th chunk. When all chunks exist, rank 0 merges them in order into ``OUT`` and
removes the parts. Patch i draws all its noise from (seed, i), so the bank does not depend on
the batch size, on kills, or on the number of ranks.
"""

from __future__ import annotations

import enum
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from nasdm_aug.config import ConfigBase
from nasdm_aug.data.magnification import check_same_scale
from nasdm_aug.data.store import PatchStore
from nasdm_aug.data.store_writer import PatchStoreWriter
from nasdm_aug.generator import DEFAULT_GUIDANCE, DEFAULT_MARKER_THRESHOLD, NASDMGenerator, resolve_model_dirs, resolve_types
from nasdm_aug.hardware import DTYPES, LAYOUT_CHOICES, LAYOUTS, resolve_dtype, resolve_sampling_layout
from nasdm_aug.mixing.balance import parse_combination, parse_target, resolve_target, split_combination
from nasdm_aug.mixing.paste import PasteOptions
from nasdm_aug.sampling import SamplerOptions, sample_seed
from nasdm_aug.training.distributed import cleanup_distributed, collective_errors, init_distributed
from nasdm_aug.utils import InputError, check_writable, file_digest, write_text_atomic
from nasdm_aug.viz import colour_mask, contact_sheet

__all__ = ["SynthesizeConfig", "RecombineOptions", "Source", "synthesize", "plan_jobs", "combination_presence"]


class Source(str, enum.Enum):
    """Where a bank's masks come from (exactly one of the config's four source fields is set)."""

    MASKS = "masks"  # a real store's masks: one synthetic patch per mask (S1 / S2)
    TYPES = "types"  # generated masks for a choice of types ("all", "random", names), num of them
    COMBINATIONS = "combinations"  # generated masks per explicit type combination, with counts
    RECOMBINE = "recombine"  # real masks of a split with real nuclei of its rare types added


@dataclass(frozen=True)
class RecombineOptions(ConfigBase):
    """How ``recombine`` masks are made (:func:`nasdm_aug.mixing.recombine_masks`, seeded by the run's seed).

    Args:
        store: the real PatchStore whose masks and nuclei are recombined.
        split: its split.
        target: ``"uniform"``, ``"sqrt"`` or ``"name=weight,..."``: the type shares to move toward.
        n: masks to make (0: one per mask of the split).
        max_per_mask: most nuclei added to one mask.
        paste: area bounds, flips, scale, margin and tries of the placement.
    """

    store: str = ""
    split: str = "Train"
    target: str = "sqrt"
    n: int = 0
    max_per_mask: int = 8
    paste: PasteOptions = field(default_factory=PasteOptions)

    def __post_init__(self) -> None:
        if not self.store:
            raise ValueError("recombine needs a real store (recombine.store)")
        if self.n < 0 or self.max_per_mask < 1:
            raise ValueError(f"recombine needs n >= 0 and max_per_mask >= 1, got n={self.n}, "
                             f"max_per_mask={self.max_per_mask}")
        parsed = parse_target(self.target)
        if isinstance(parsed, str):  # "Uniform" and "uniform" are one configuration
            object.__setattr__(self, "target", parsed)
        if isinstance(self.paste, dict):
            object.__setattr__(self, "paste", PasteOptions.from_dict(self.paste))
        if self.paste.allow_overlap:
            raise ValueError("recombine keeps every real nucleus whole: paste.allow_overlap must be false")

    def resolved_target(self) -> str | dict[str, float]:
        """The target as :func:`~nasdm_aug.mixing.recombine_masks` takes it."""
        return parse_target(self.target)


@dataclass(frozen=True)
class SynthesizeConfig(ConfigBase):
    """What to synthesize and how; saved in the bank and beside its parts for resuming."""

    model: tuple[str, ...] = ("toy",)  # "toy" (embedded models) or the mask and/or patch run dirs
    masks: str = ""  # a real PatchStore: one synthetic patch per real mask (S1 / S2)
    split: str = ""  # with masks: the split whose masks are used ("" = all patches)
    indices: tuple[int, ...] = ()  # with masks: explicit patch indices (instead of a split)
    types: str = ""  # generated masks: "all", "random" or comma-separated type names
    num: int = 0  # generated masks: how many patches
    # generated masks for explicit type combinations, "name+name:count" each, made in this order
    # (nasdm-aug synthesize --balance-for works them out; see nasdm_aug.mixing.balance)
    combinations: tuple[str, ...] = ()
    # real masks of a split with real nuclei of its rare types added (nasdm-aug synthesize --recombine)
    recombine: RecombineOptions | None = None
    sampling: SamplerOptions = field(default_factory=SamplerOptions)  # sampler, steps and its options
    guidance: float = DEFAULT_GUIDANCE  # classifier-free guidance scale (1 = none)
    seed: int = 0  # run seed; patch i is seeded by (seed, i)
    batch_size: int = 8  # patches per forward, and per resumable chunk
    ema: bool = True  # sample with the EMA weights
    min_size: int = 10  # generated masks: smallest nucleus kept, in pixels
    # generated masks: decode_mask's distance-peak markers (generator.DEFAULT_MARKER_THRESHOLD says why)
    marker_threshold: float = DEFAULT_MARKER_THRESHOLD
    dtype: str = "auto"  # "auto" (bfloat16 where it is native, else float32), "float32" or "bfloat16" (autocast)
    # memory layout of the models and samples: "auto" (contiguous on a CUDA GPU, channels_last
    # elsewhere: hardware.resolve_sampling_layout), "channels_last" or "contiguous"
    layout: str = "auto"
    compile: bool = False  # sample through torch.compile of the networks (NASDMGenerator's compile)

    def __post_init__(self) -> None:
        if isinstance(self.recombine, dict):  # as written in a study's or a user's options
            object.__setattr__(self, "recombine", RecombineOptions.from_dict(self.recombine))
        given = [s.value for s in Source if getattr(self, s.value)]
        if len(given) != 1:
            raise ValueError(f"give exactly one source, not {' and '.join(given) or 'none'}: masks (a real store) "
                             "or types (generated masks) or combinations (generated masks per type combination) "
                             "or recombine (real masks with added nuclei)")
        if self.recombine and (self.split or self.indices or self.num):
            raise ValueError("recombine carries its own split and count (recombine.split, recombine.n); "
                             "split, indices and num apply to masks and types")
        if self.combinations and self.num:
            raise ValueError(f"num ({self.num}) applies to types; combinations carry their own counts")
        for combo in self.combinations:
            split_combination(combo)
        if self.types and self.num < 1:
            raise ValueError(f"num must be >= 1 with types {self.types!r}, got {self.num}")
        if self.masks and self.num:
            raise ValueError(f"num ({self.num}) applies to generated masks (types), not to masks {self.masks}")
        if self.split and self.indices:
            raise ValueError(f"give split ({self.split!r}) or indices, not both")
        if not isinstance(self.sampling, SamplerOptions):
            raise ValueError(f"sampling must be SamplerOptions, got {type(self.sampling).__name__}")
        if self.batch_size < 1 or self.seed < 0 or self.min_size < 0:
            raise ValueError(
                f"batch_size must be >= 1, seed and min_size >= 0; got "
                f"batch_size={self.batch_size}, seed={self.seed}, min_size={self.min_size}"
            )
        if not self.guidance >= 0:
            raise ValueError(f"guidance must be >= 0, got {self.guidance}")
        if not 0 <= self.marker_threshold < 1:
            raise ValueError(f"marker_threshold must lie in [0, 1), got {self.marker_threshold}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.layout not in LAYOUT_CHOICES:
            raise ValueError(f"layout must be one of {', '.join(LAYOUT_CHOICES)}, got {self.layout!r}")

    @property
    def source(self) -> Source:
        """Which of ``masks``, ``types``, ``combinations`` and ``recombine`` this config draws its masks from."""
        return next(s for s in Source if getattr(self, s.value))

    @property
    def mask_store(self) -> str:
        """The real store the masks come from (``masks`` or ``recombine.store``); "" for generated masks."""
        return self.masks or (self.recombine.store if self.recombine else "")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SynthesizeConfig":
        """As :meth:`ConfigBase.from_dict`; a record written before the sampler options were one
        object (top-level ``sampler``, ``steps``, ``eta``) is read into ``sampling``."""
        return super().from_dict(SamplerOptions.nest_flat_keys(data))


def combination_presence(combinations: tuple[str, ...], table) -> np.ndarray:
    """Presence vectors float32 [N, n_types] for ``("name+name:count", ...)``, in order.

    Raises:
        InputError: a type name the table lacks.
    """
    rows = [parse_combination(c, table) for c in combinations]
    return np.concatenate([np.tile(row, (n, 1)) for row, n in rows]).astype(np.float32)


def plan_jobs(config: SynthesizeConfig) -> np.ndarray:
    """Parent index of every patch to make (-1 for generated masks; for recombined ones the real
    mask they started from), in output order.

    Raises:
        InputError: an unreadable store, a split it lacks, indices out of range, or no masks at all.
    """
    if config.source is Source.TYPES:
        return np.full(config.num, -1, np.int64)
    if config.source is Source.COMBINATIONS:
        return np.full(sum(split_combination(c)[1] for c in config.combinations), -1, np.int64)
    if config.source is Source.RECOMBINE:
        from nasdm_aug.mixing.recombine import recombine_parents

        r = config.recombine
        return recombine_parents(r.store, r.split, r.n or None, config.seed)
    store = PatchStore(config.masks)
    if config.indices:
        bad = [i for i in config.indices if not 0 <= i < len(store)]
        if bad:
            raise InputError(f"{config.masks}: indices {bad[:5]} are outside 0..{len(store) - 1}")
        jobs = np.asarray(config.indices, np.int64)
    else:
        jobs = store.indices(config.split or None).astype(np.int64)
    if len(jobs) == 0:
        where = f"split {config.split!r} of " if config.split else ""
        raise InputError(f"{config.masks}: {where}the store holds no masks to synthesize from")
    return jobs


def synthesize(
    config: SynthesizeConfig,
    out: str | Path,
    *,
    device: str | None = None,
    overwrite: bool = False,
    preview: int = 0,
    progress: bool = True,
    attrs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Make a synthetic PatchStore at ``out`` (see the module docstring for resuming and sharding).

    Args:
        config: what to make.
        out: the bank's path (``.h5``).
        device: "cpu", "cuda", "cuda:1" ...; default this rank's GPU when there is one.
        overwrite: replace an existing bank and discard parts of an earlier, different run.
        preview: write ``out`` with suffix ``.preview.png``: a contact sheet of the first N patches.
        progress: show a tqdm bar over chunks.
        attrs: extra JSON-able bank attributes (e.g. ``{"balance_plan": ...}``); a ``recombine``
            config adds ``"recombine"``: the record of how its masks were made.

    Returns:
        dict with ``out``, ``n_patches``, ``n_chunks``, ``chunks_done_before`` (resumed work),
        ``model_hash`` and, when asked, ``preview``.

    Raises:
        InputError: bad input (see :class:`SynthesizeConfig`, :func:`plan_jobs`), an existing ``out``
            without ``overwrite``, or parts left by a run with other arguments.
    """
    out = Path(out)
    dist = init_distributed(device)
    # work that one rank does, or can fail in alone, runs in collective_errors: its error stops
    # every rank with its message instead of leaving the others waiting at the next collective
    with collective_errors():
        if dist.is_main:
            check_writable(out, overwrite)
    jobs = plan_jobs(config)
    mask_run, patch_run = resolve_model_dirs(config.model)
    gen = NASDMGenerator.from_pretrained(mask_run, patch_run, ema=config.ema, device=dist.device,
                                         dtype=resolve_dtype(config.dtype, dist.device), layout=config.layout,
                                         compile=config.compile)
    real = _check_fit(config, gen)
    masks = None
    if config.source is Source.RECOMBINE:
        from nasdm_aug.mixing.recombine import recombine_masks

        r = config.recombine
        inst, type_map, record = recombine_masks(real, r.split, target=r.resolved_target(), n=r.n or None,
                                                 seed=config.seed, max_per_mask=r.max_per_mask, paste=r.paste,
                                                 progress=progress and dist.is_main)
        masks = (inst, type_map)
        attrs = {**(attrs or {}), "recombine": record}
    parts = out.with_name(out.name + ".parts")
    masks_sha = file_digest(config.mask_store) if real is not None else ""
    with collective_errors():
        if dist.is_main:
            _prepare_parts(parts, config, overwrite, gen.model_hash, masks_sha, _dtype_name(gen.dtype), gen.layout)
    chunks = [(s, min(len(jobs), s + config.batch_size)) for s in range(0, len(jobs), config.batch_size)]
    done_before = sum(_part(parts, c).is_file() for c in range(len(chunks)))
    mine = [c for c in range(dist.rank, len(chunks), dist.world_size) if not _part(parts, c).is_file()]
    with collective_errors():
        for c in tqdm(mine, desc=f"synthesize (rank {dist.rank})", disable=not progress, unit="chunk"):
            _make_chunk(gen, config, real, jobs, chunks[c], _part(parts, c), masks)
    result = {"out": str(out), "n_patches": int(len(jobs)), "n_chunks": len(chunks),
              "chunks_done_before": int(done_before), "model_hash": gen.model_hash}
    # the others wait for rank 0's merge (NASDM_AUG_DIST_TIMEOUT_MIN covers a large bank)
    with collective_errors():
        if dist.is_main:
            _merge(parts, len(chunks), out, config, gen, real, overwrite, attrs)
            shutil.rmtree(parts)
            if preview:
                result["preview"] = str(write_preview(out, preview, real))
    cleanup_distributed()
    return result


def _check_fit(config: SynthesizeConfig, gen: NASDMGenerator) -> PatchStore | None:
    if not config.mask_store:
        if gen.mask_model is None:
            raise InputError("generated masks need a mask model: pass the mask run as well as the patch run "
                             "to `model`")
        if config.source is Source.TYPES:
            resolve_types(config.types, 1, gen.type_table)  # unknown names fail before any work
        else:
            combination_presence(config.combinations, gen.type_table)
        return None
    path = config.mask_store
    real = PatchStore(path)
    check_same_scale(f"mask store {path}", real.scale_info(), f"the model ({', '.join(config.model)})",
                     gen.scale_info())
    if real.type_table.names != gen.type_table.names:
        raise InputError(f"{path}: types {real.type_table.names} differ from the model's {gen.type_table.names}")
    if config.recombine:  # a target naming a type the table lacks fails before any work
        resolve_target(config.recombine.resolved_target(), real.type_table, np.ones(real.type_table.n_types), path)
    return real


def _part(parts: Path, chunk: int) -> Path:
    return parts / f"part_{chunk:06d}.h5"


def _as_current(recorded: Any) -> Any:
    """A recorded config read as this version writes it: fields added since are filled with their
    defaults, so an older bank or interrupted run compares by what it was made with. A record this
    version cannot read stays as it is (and so compares unequal)."""
    if not isinstance(recorded, dict):
        return recorded
    if "layout" not in recorded:  # made before the layout was a choice: in NCHW
        recorded = {**recorded, "layout": "contiguous"}
    if "dtype" not in recorded:  # made before the dtype was a choice: in float32
        recorded = {**recorded, "dtype": "float32"}
    if "marker_threshold" not in recorded:  # generated masks were decoded with edge markers alone;
        # a bank of real masks decodes none, so the threshold is whatever today's default is
        recorded = {**recorded, "marker_threshold": DEFAULT_MARKER_THRESHOLD if recorded.get("masks") else 0.0}
    try:
        return json.loads(SynthesizeConfig.from_dict(recorded).to_json())
    except (ValueError, TypeError, KeyError):
        return recorded


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The fields in which two config records differ, nested ones dotted (``sampling.steps``)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [prefix.rstrip(".") or "config"]
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a != b:
            out += _changed_keys(a, b, f"{prefix}{k}.") if isinstance(a, dict) and isinstance(b, dict) else [prefix + k]
    return out


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _prepare_parts(parts: Path, config: SynthesizeConfig, overwrite: bool, model_hash: str, masks_sha: str,
                   dtype: str, layout: str) -> None:
    """Keep the parts of an interrupted run only if it used the same arguments, weights, masks,
    sampling dtype and layout. The record keeps the dtype and layout ``config`` resolved to
    (``dtype``, ``layout``), not ``"auto"``, which can mean another one on another machine: one
    bank is sampled in one dtype and one layout. So parts recorded with an explicit layout (such as
    ``"channels_last"``, the default before ``"auto"``) resume under that layout, and under
    ``"auto"`` wherever it means that layout."""
    record_path = parts / "config.json"
    record = {"config": {**json.loads(config.to_json()), "dtype": dtype, "layout": layout},
              "model_hash": model_hash, "masks_sha256": masks_sha}
    if parts.is_dir() and record_path.is_file():
        try:
            old = json.loads(record_path.read_text())
        except ValueError:
            old = {}
        if isinstance(old, dict) and "config" in old:
            old = {**old, "config": _as_current(old["config"])}
        if old == record:
            return  # same arguments and weights: resume
        if not overwrite:
            if not isinstance(old, dict) or "model_hash" not in old:
                why = "by a version that did not record the model's weights"
            elif old["model_hash"] != model_hash:
                why = f"with other model weights (hash {old['model_hash']}, now {model_hash})"
            elif old.get("masks_sha256") != masks_sha:
                why = f"from a mask store of other contents (hash {old.get('masks_sha256')}, now {masks_sha})"
            else:
                changed = _changed_keys(old["config"], record["config"])
                if changed == ["dtype"]:
                    made = old["config"].get("dtype")
                    raise InputError(f"{parts} holds an interrupted run sampled in {made}, but dtype {config.dtype!r} "
                                     f"means {dtype} on this machine; rerun with `dtype` {made} to finish it, or "
                                     "pass `overwrite` to discard it")
                if changed == ["layout"] and config.layout == "auto":
                    made = old["config"].get("layout")
                    raise InputError(f"{parts} holds an interrupted run sampled in layout {made}, but layout 'auto' "
                                     f"means {layout} on this device; rerun with `layout` {made} "
                                     "to finish it, or pass `overwrite` to discard it")
                why = f"with other arguments ({', '.join(changed)})"
            raise InputError(f"{parts} holds an interrupted run made {why}; rerun with those, or pass `overwrite` "
                             "to discard it")
    if parts.exists():
        shutil.rmtree(parts)
    parts.mkdir(parents=True)
    write_text_atomic(record_path, json.dumps(record, indent=2) + "\n")


def finished_bank_problem(out: str | Path, config: SynthesizeConfig, device: str | None = None) -> str | None:
    """Why ``out`` is not the finished bank ``config`` makes (None when it is).

    A finished bank is a readable synthetic PatchStore made with the same arguments, by models
    with the same weights, holding every planned patch. A bank made with ``dtype="auto"`` counts
    for ``"auto"`` wherever it was made; one made with an explicit dtype counts for ``"auto"``
    where ``"auto"`` means that dtype on ``device`` (as ``synthesize`` picks it). The same holds
    for the layout: a bank made in ``"channels_last"``, the default before ``"auto"``, counts for
    ``"auto"`` on a CPU.
    """
    from nasdm_aug.generator import model_weights_hash

    try:
        bank = PatchStore(out)
    except Exception as exc:  # noqa: BLE001  StoreError, or whatever h5py raises on a damaged file
        msg = (str(exc).splitlines() or [type(exc).__name__])[0]
        return msg.split(": ", 1)[1] if msg.startswith(str(out)) and ": " in msg else f"not a readable bank ({msg})"
    try:
        if bank.origin != "synthetic":
            return f"a {bank.origin} store, not a synthetic bank"
        want, have = json.loads(config.to_json()), _as_current(bank.config)
        if config.dtype == "auto" and isinstance(have, dict) and have.get("dtype") in ("float32", "bfloat16"):
            from nasdm_aug.training.distributed import pick_device

            if have["dtype"] == _dtype_name(resolve_dtype("auto", pick_device(device))):
                want = {**want, "dtype": have["dtype"]}
        if config.layout == "auto" and isinstance(have, dict) and have.get("layout") in LAYOUTS:
            from nasdm_aug.training.distributed import pick_device

            if have["layout"] == resolve_sampling_layout("auto", pick_device(device)):
                want = {**want, "layout": have["layout"]}
        if have != want:
            return f"made with other arguments ({', '.join(_changed_keys(have, want))})"
        mask_run, patch_run = resolve_model_dirs(config.model)
        made_by = (bank.attrs.get("provenance") or {}).get("model_hash")
        if made_by != model_weights_hash(mask_run, patch_run, config.ema):
            return f"made by models with other weights (hash {made_by})"
        made_from = (bank.attrs.get("provenance") or {}).get("parent_sha256")
        if config.mask_store and made_from is not None and made_from != file_digest(config.mask_store):
            return f"made from a mask store of other contents (hash {made_from})"
        n_jobs = len(plan_jobs(config))
        if len(bank) != n_jobs:
            return f"holds {len(bank)} of the {n_jobs} planned patches"
    finally:
        bank.close()
    return None


def _make_chunk(gen: NASDMGenerator, config: SynthesizeConfig, real: PatchStore | None, jobs: np.ndarray,
                span: tuple[int, int], path: Path, masks: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Sample one chunk's patches into ``path``: generated masks, the real masks of ``jobs``, or
    the given ``masks`` (all patches' inst and type, for recombined masks) with the metadata of
    their parents in ``real``."""
    start, stop = span
    n = stop - start
    opts = dict(sampling=config.sampling, guidance=config.guidance, seed=config.seed, sample_offset=start,
                batch_size=config.batch_size)
    if real is None:
        # explicit combinations: this chunk's rows of the presence vectors (resolve_types' array form)
        types = config.types if config.source is Source.TYPES else combination_presence(config.combinations, gen.type_table)[start:stop]
        inst, type_map = gen.generate_masks(types, n, min_size=config.min_size,
                                            marker_threshold=config.marker_threshold, **opts)
        meta = {"source": ["generated"] * n, "y": [0] * n, "x": [0] * n, "split": [""] * n}
    else:
        data = real.read(jobs[start:stop], keys=("inst", "type", "source", "y", "x", "split"))
        inst, type_map = (data["inst"], data["type"]) if masks is None else (masks[0][start:stop], masks[1][start:stop])
        meta = {k: list(data[k]) for k in ("source", "y", "x", "split")}
    image = gen.generate_patches(inst, type_map, **opts)
    with PatchStoreWriter(path, patch_size=gen.patch_size, type_table=gen.type_table, origin="synthetic",
                          overwrite=True) as writer:
        writer.append_batch(image, inst.astype(np.int32), type_map.astype(np.uint8), **meta,
                            parent=list(jobs[start:stop]), seed=[sample_seed(config.seed, i) for i in range(start, stop)])


def _merge(parts: Path, n_chunks: int, out: Path, config: SynthesizeConfig, gen: NASDMGenerator,
           real: PatchStore | None, overwrite: bool, attrs: dict[str, Any] | None = None) -> None:
    provenance = {"model": list(config.model), "model_hash": gen.model_hash, "sampler": config.sampling.sampler,
                  "steps": config.sampling.steps, "guidance": config.guidance, "seed": config.seed, "ema": config.ema,
                  "dtype": _dtype_name(gen.dtype), "layout": gen.layout, "compile": gen.compile,
                  "parent_store": str(Path(config.mask_store).resolve()) if real is not None else "",
                  "parent_sha256": file_digest(config.mask_store) if real is not None else ""}
    with PatchStoreWriter(out, patch_size=gen.patch_size, type_table=gen.type_table, config=config.to_dict(),
                          origin="synthetic", overwrite=overwrite,
                          attrs={"provenance": provenance, "magnification": gen.magnification, **(attrs or {})}) as writer:
        if real is not None:
            writer.set_splits(real.splits)
        for c in range(n_chunks):
            part = PatchStore(_part(parts, c))
            idx = np.arange(len(part))
            d = part.read(idx, keys=("image", "inst", "type", "source", "y", "x", "split", "parent", "seed"))
            writer.append_batch(d["image"], d["inst"], d["type"], source=list(d["source"]), y=list(d["y"]),
                                x=list(d["x"]), split=list(d["split"]), parent=list(d["parent"]), seed=list(d["seed"]))
            part.close()


def write_preview(bank_path: str | Path, n: int, real: PatchStore | None = None) -> Path:
    """Contact sheet of the first ``n`` patches: mask in type colours | synthetic | real parent."""
    bank = PatchStore(bank_path)
    rows = []
    for i in range(min(n, len(bank))):
        item = bank[i]
        parent = real[item["parent"]]["image"] if real is not None and item["parent"] >= 0 else None
        rows.append([colour_mask(item["inst"], item["type"], bank.type_table), item["image"], parent])
    titles = ["mask", "synthetic"] + (["real parent"] if real is not None else [])
    path = Path(str(bank_path) + ".preview.png")
    return contact_sheet(rows, path, column_titles=titles)
