"""Making a bank: :func:`synthesize` samples its chunks (resumable, sharded over torchrun ranks)
and merges them."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from nasdm_aug.data.magnification import check_same_scale
from nasdm_aug.data.store import PatchStore
from nasdm_aug.data.store_writer import PatchStoreWriter
from nasdm_aug.generator import NASDMGenerator, resolve_model_dirs, resolve_types, types_as_requested
from nasdm_aug.hardware import resolve_precision
from nasdm_aug.mixing.balance import resolve_target
from nasdm_aug.sampling import sample_seed
from nasdm_aug.synthesize.config import Source, SynthesizeConfig
from nasdm_aug.synthesize.jobs import combination_presence, plan_jobs
from nasdm_aug.synthesize.records import finished_bank_problem, prepare_parts
from nasdm_aug.training.distributed import DistInfo, cleanup_distributed, collective_errors, init_distributed
from nasdm_aug.utils import InputError, check_writable, file_digest
from nasdm_aug.viz import colour_mask, contact_sheet

__all__ = ["synthesize", "write_preview"]


def synthesize(config: SynthesizeConfig, out: str | Path, *, device: str | None = None, overwrite: bool = False,
               resume: bool = False, preview: int = 0, progress: bool = True,
               attrs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Make a synthetic PatchStore at ``out`` (see the package docstring for resuming and sharding).

    Args:
        config: what to make.
        out: the bank's path (``.h5``).
        device: "cpu", "cuda", "cuda:1" ...; default (None or "auto") this rank's GPU when there is one.
        overwrite: replace an existing bank and discard parts of an earlier, different run.
        resume: accept an existing ``out`` as done when it is the finished bank ``config`` makes
            (:func:`~nasdm_aug.synthesize.finished_bank_problem`), else refuse it; without
            ``overwrite`` only. Interrupted runs resume without it.
        preview: write ``out`` with suffix ``.preview.png``: a contact sheet of the first N patches.
        progress: show a tqdm bar over chunks.
        attrs: extra JSON-able bank attributes (e.g. ``{"balance_plan": ...}``); a ``recombine``
            config adds ``"recombine"``: the record of how its masks were made.

    Returns:
        dict with ``out``, ``finished_before`` (True: ``resume`` found the bank done, and nothing
        more is given), ``n_patches``, ``n_chunks``, ``chunks_done_before`` (resumed work),
        ``model_hash``, for generated masks ``masks_off_request`` (how many of them do not hold
        exactly the types they were asked for, after ``mask_tries`` draws), and, when asked,
        ``preview``.

    Raises:
        InputError: bad input (see :class:`SynthesizeConfig`, :func:`plan_jobs`), an existing ``out``
            without ``overwrite`` (or with ``resume``, one that is not this config's finished bank),
            or parts left by a run with other arguments.
    """
    out = Path(out)
    if resume and not overwrite and out.exists():
        return _finished_before(out, config, device)
    dist = init_distributed(device)
    # work that one rank does, or can fail in alone, runs in collective_errors: its error stops
    # every rank with its message instead of leaving the others waiting at the next collective
    with collective_errors():
        if dist.is_main:
            check_writable(out, overwrite)
    jobs = plan_jobs(config)
    gen = _generator(config, dist.device)
    real = _check_fit(config, gen)
    masks, attrs = _recombined(config, real, attrs, progress and dist.is_main)
    parts = _parts(out, config, gen, real, overwrite, dist)
    n_chunks, done_before = _sample_chunks(gen, config, real, jobs, masks, parts, dist, progress)
    result = {"out": str(out), "finished_before": False, "n_patches": int(len(jobs)), "n_chunks": n_chunks,
              "chunks_done_before": done_before, "model_hash": gen.model_hash}
    # the others wait for rank 0's merge (NASDM_AUG_DIST_TIMEOUT_MIN covers a large bank)
    with collective_errors():
        if dist.is_main:
            off_request = _merge(parts, n_chunks, out, config, gen, real, overwrite, attrs)
            if off_request is not None:
                result["masks_off_request"] = off_request
            shutil.rmtree(parts)
            if preview:
                result["preview"] = str(write_preview(out, preview, real))
    cleanup_distributed()
    return result


def _parts(out: Path, config: SynthesizeConfig, gen: NASDMGenerator, real: PatchStore | None, overwrite: bool,
           dist: DistInfo) -> Path:
    """``OUT.parts``, kept (on rank 0) only if it holds an interrupted run of this config and these
    weights, masks, precision and layout (:func:`~nasdm_aug.synthesize.records.prepare_parts`)."""
    parts = out.with_name(out.name + ".parts")
    with collective_errors():
        if dist.is_main:
            prepare_parts(parts, config, overwrite, gen.model_hash,
                          file_digest(config.mask_store) if real is not None else "", _precision(gen), gen.layout)
    return parts


def _finished_before(out: Path, config: SynthesizeConfig, device: str | None) -> dict[str, Any]:
    """The result of a ``resume`` that finds ``out`` done.

    Raises:
        InputError: ``out`` is not the finished bank ``config`` makes (:func:`finished_bank_problem`).
    """
    problem = finished_bank_problem(out, config, device)
    if problem:
        raise InputError(f"{out}: {problem}; pass `overwrite` to replace it")
    return {"out": str(out), "finished_before": True}


def _sample_chunks(gen: NASDMGenerator, config: SynthesizeConfig, real: PatchStore | None, jobs: np.ndarray,
                   masks: tuple[np.ndarray, np.ndarray] | None, parts: Path, dist: DistInfo,
                   progress: bool) -> tuple[int, int]:
    """Sample this rank's chunks (every ``world_size``-th) that ``parts`` lacks; (chunks in all,
    chunks done before)."""
    chunks = [(s, min(len(jobs), s + config.batch_size)) for s in range(0, len(jobs), config.batch_size)]
    done_before = sum(_part(parts, c).is_file() for c in range(len(chunks)))
    mine = [c for c in range(dist.rank, len(chunks), dist.world_size) if not _part(parts, c).is_file()]
    with collective_errors():
        for c in tqdm(mine, desc=f"synthesize (rank {dist.rank})", disable=not progress, unit="chunk"):
            _make_chunk(gen, config, real, jobs, chunks[c], _part(parts, c), masks)
    return len(chunks), int(done_before)


def _generator(config: SynthesizeConfig, device: torch.device) -> NASDMGenerator:
    """The models of ``config`` on ``device``, in the precision and layout it resolves to there."""
    mask_run, patch_run = resolve_model_dirs(config.model)
    return NASDMGenerator.from_pretrained(mask_run, patch_run, ema=config.ema, device=device,
                                          dtype=resolve_precision(config.precision, device), layout=config.layout,
                                          compile=config.compile)


def _precision(gen: NASDMGenerator) -> str:
    """The precision ``gen`` samples in: ``"bf16"`` or ``"fp32"``."""
    return "bf16" if gen.dtype == torch.bfloat16 else "fp32"


def _recombined(config: SynthesizeConfig, real: PatchStore | None, attrs: dict[str, Any] | None,
                progress: bool) -> tuple[tuple[np.ndarray, np.ndarray] | None, dict[str, Any] | None]:
    """The recombined masks (inst, type) of a ``recombine`` config, and ``attrs`` with the record of
    how they were made; (None, ``attrs``) for any other source."""
    if config.source is not Source.RECOMBINE:
        return None, attrs
    from nasdm_aug.mixing.recombine import recombine_masks

    r = config.recombine
    inst, type_map, record = recombine_masks(real, r.split, target=r.resolved_target(), n=r.n or None,
                                             seed=config.seed, max_per_mask=r.max_per_mask, paste=r.paste,
                                             progress=progress)
    return (inst, type_map), {**(attrs or {}), "recombine": record}


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
        inst, type_map = gen.generate_masks(types, n, min_size=config.min_size, marker_threshold=config.marker_threshold,
                                            guidance_interval=config.mask_guidance_interval, max_tries=config.mask_tries,
                                            **dict(opts, guidance=config.mask_guidance,
                                                   sampling=config.mask_sampler_options))
        meta = {"source": ["generated"] * n, "y": [0] * n, "x": [0] * n, "split": [""] * n}
    else:
        data = real.read(jobs[start:stop], keys=("inst", "type", "source", "y", "x", "split"))
        inst, type_map = (data["inst"], data["type"]) if masks is None else (masks[0][start:stop], masks[1][start:stop])
        meta = {k: list(data[k]) for k in ("source", "y", "x", "split")}
    image = gen.generate_patches(inst, type_map, guidance_interval=config.guidance_interval, **opts)
    with PatchStoreWriter(path, patch_size=gen.patch_size, type_table=gen.type_table, origin="synthetic",
                          overwrite=True) as writer:
        writer.append_batch(image, inst.astype(np.int32), type_map.astype(np.uint8), **meta,
                            parent=list(jobs[start:stop]), seed=[sample_seed(config.seed, i) for i in range(start, stop)])


def _requested_presence(config: SynthesizeConfig, gen: NASDMGenerator) -> np.ndarray:
    """The type-presence vectors [patches, n_types] a bank of generated masks asked for, as its
    chunks resolved them."""
    if config.source is Source.TYPES:
        return resolve_types(config.types, config.num, gen.type_table, config.seed)
    return combination_presence(config.combinations, gen.type_table)


def _merge(parts: Path, n_chunks: int, out: Path, config: SynthesizeConfig, gen: NASDMGenerator,
           real: PatchStore | None, overwrite: bool, attrs: dict[str, Any] | None = None) -> int | None:
    """Write the bank from its parts; the number of generated masks whose types differ from their
    request (None for real or recombined masks)."""
    # generated masks: counted against their requests while the parts are copied (no second read)
    requested = _requested_presence(config, gen) if real is None else None
    off_request = 0 if real is None else None
    provenance = {"model": list(config.model), "model_hash": gen.model_hash, "sampler": config.sampling.sampler,
                  "steps": config.sampling.steps, "guidance": config.guidance,
                  "guidance_interval": list(config.guidance_interval) if config.guidance_interval else None,
                  "mask_guidance": config.mask_guidance if real is None else None,
                  "mask_guidance_interval": (list(config.mask_guidance_interval)
                                             if real is None and config.mask_guidance_interval else None),
                  "mask_sampler": config.mask_sampler_options.sampler if real is None else None,
                  "mask_steps": config.mask_sampler_options.steps if real is None else None,
                  "mask_tries": config.mask_tries if real is None else None,
                  "seed": config.seed, "ema": config.ema,
                  "precision": _precision(gen), "layout": gen.layout, "compile": gen.compile,
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
            if requested is not None:
                asked = requested[len(writer): len(writer) + len(idx)]
                off_request += sum(not types_as_requested(t, p) for t, p in zip(d["type"], asked))
            writer.append_batch(d["image"], d["inst"], d["type"], source=list(d["source"]), y=list(d["y"]),
                                x=list(d["x"]), split=list(d["split"]), parent=list(d["parent"]), seed=list(d["seed"]))
            part.close()
        writer.set_attr("provenance", {**provenance, "masks_off_request": off_request})
    return off_request


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
