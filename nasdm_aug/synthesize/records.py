"""What a bank and an interrupted run record of how they were made, and when a rerun may reuse
them: :func:`finished_bank_problem` (a finished bank) and :func:`prepare_parts` (the parts of an
interrupted run). Records written by older versions are read as this version writes them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from nasdm_aug.data.store import PatchStore
from nasdm_aug.generator import DEFAULT_GUIDANCE, DEFAULT_MARKER_THRESHOLD, DEFAULT_MASK_GUIDANCE, resolve_model_dirs
from nasdm_aug.hardware import LAYOUTS, resolve_precision, resolve_sampling_layout
from nasdm_aug.synthesize.config import SynthesizeConfig
from nasdm_aug.synthesize.jobs import plan_jobs
from nasdm_aug.utils import InputError, file_digest, write_text_atomic

__all__ = ["finished_bank_problem", "prepare_parts"]


def _as_current(recorded: Any) -> Any:
    """A recorded config read as this version writes it: fields added since are filled with their
    defaults, so an older bank or interrupted run compares by what it was made with. A record this
    version cannot read stays as it is (and so compares unequal)."""
    if not isinstance(recorded, dict):
        return recorded
    if "layout" not in recorded:  # made before the layout was a choice: in NCHW
        recorded = {**recorded, "layout": "contiguous"}
    if "precision" not in recorded and "dtype" not in recorded:  # made before it was a choice: in fp32
        recorded = {**recorded, "precision": "fp32"}
    if "marker_threshold" not in recorded:  # generated masks were decoded with edge markers alone;
        # a bank of real masks decodes none, so the threshold is whatever today's default is
        recorded = {**recorded, "marker_threshold": DEFAULT_MARKER_THRESHOLD if recorded.get("masks") else 0.0}
    if "mask_guidance" not in recorded:  # one guidance scale drove both models; a bank of real masks
        # samples no mask, so its mask scale is whatever today's default is
        generated = recorded.get("types") or recorded.get("combinations")
        recorded = {**recorded, "mask_guidance": recorded.get("guidance", DEFAULT_GUIDANCE) if generated
                    else DEFAULT_MASK_GUIDANCE}
    if "guidance_interval" not in recorded:  # made when every step was guided
        recorded = {**recorded, "guidance_interval": None}
    if "mask_guidance_interval" not in recorded:  # the mask model was guided at every step
        recorded = {**recorded, "mask_guidance_interval": None}
    try:  # from_dict reads an older "dtype" (float32, bfloat16) as its precision (fp32, bf16)
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


def prepare_parts(parts: Path, config: SynthesizeConfig, overwrite: bool, model_hash: str, masks_sha: str,
                  precision: str, layout: str) -> None:
    """Keep the parts of an interrupted run only if it used the same arguments, weights, masks,
    sampling precision and layout. The record keeps the precision and layout ``config`` resolved to
    (``precision``, ``layout``), not ``"auto"``, which can mean another one on another machine: one
    bank is sampled in one precision and one layout. So parts recorded with an explicit layout (such
    as ``"channels_last"``, the default before ``"auto"``) resume under that layout, and under
    ``"auto"`` wherever it means that layout. Parts recorded with a torch dtype name (``dtype``
    ``"bfloat16"``) resume under its precision (``"bf16"``)."""
    record_path = parts / "config.json"
    record = {"config": {**json.loads(config.to_json()), "precision": precision, "layout": layout},
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
            raise InputError(f"{parts} holds an interrupted run {_why_not_resumed(old, record, config, precision, layout)}")
    if parts.exists():
        shutil.rmtree(parts)
    parts.mkdir(parents=True)
    write_text_atomic(record_path, json.dumps(record, indent=2) + "\n")


def _why_not_resumed(old: Any, record: dict[str, Any], config: SynthesizeConfig, precision: str, layout: str) -> str:
    """How the interrupted run recorded in ``old`` differs from ``record``, and what to do about it."""
    if not isinstance(old, dict) or "model_hash" not in old:
        why = "by a version that did not record the model's weights"
    elif old["model_hash"] != record["model_hash"]:
        why = f"with other model weights (hash {old['model_hash']}, now {record['model_hash']})"
    elif old.get("masks_sha256") != record["masks_sha256"]:
        why = f"from a mask store of other contents (hash {old.get('masks_sha256')}, now {record['masks_sha256']})"
    else:
        changed = _changed_keys(old["config"], record["config"])
        if changed == ["precision"]:
            made = old["config"].get("precision")
            return (f"sampled in {made}, but precision {config.precision!r} means {precision} on this machine; "
                    f"rerun with `precision` {made} to finish it, or pass `overwrite` to discard it")
        if changed == ["layout"] and config.layout == "auto":
            made = old["config"].get("layout")
            return (f"sampled in layout {made}, but layout 'auto' means {layout} on this device; rerun with "
                    f"`layout` {made} to finish it, or pass `overwrite` to discard it")
        why = f"with other arguments ({', '.join(changed)})"
    return f"made {why}; rerun with those, or pass `overwrite` to discard it"


def finished_bank_problem(out: str | Path, config: SynthesizeConfig, device: str | None = None) -> str | None:
    """Why ``out`` is not the finished bank ``config`` makes (None when it is).

    A finished bank is a readable synthetic PatchStore made with the same arguments, by models
    with the same weights, holding every planned patch. A bank made with ``precision="auto"``
    counts for ``"auto"`` wherever it was made; one made with an explicit precision counts for
    ``"auto"`` where ``"auto"`` means that precision on ``device`` (as ``synthesize`` picks it). The
    same holds for the layout: a bank made in ``"channels_last"``, the default before ``"auto"``,
    counts for ``"auto"`` on a CPU. A bank that recorded a torch dtype name (``dtype``
    ``"float32"``) counts as made in its precision (``"fp32"``).
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
        have = _as_current(bank.config)
        want = _auto_as_made(json.loads(config.to_json()), have, config, device)
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


def _auto_as_made(want: dict[str, Any], have: Any, config: SynthesizeConfig, device: str | None) -> dict[str, Any]:
    """``want`` with its ``"auto"`` precision and layout as ``have`` recorded them, where ``"auto"``
    means those on ``device``."""
    from nasdm_aug.training.distributed import pick_device

    if not isinstance(have, dict):
        return want
    if config.precision == "auto" and have.get("precision") in ("fp32", "bf16"):
        if have["precision"] == resolve_precision("auto", pick_device(device)):
            want = {**want, "precision": have["precision"]}
    if config.layout == "auto" and have.get("layout") in LAYOUTS:
        if have["layout"] == resolve_sampling_layout("auto", pick_device(device)):
            want = {**want, "layout": have["layout"]}
    return want
