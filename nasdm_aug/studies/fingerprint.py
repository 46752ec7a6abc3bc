"""Run fingerprints: everything that decides what one (row, seed) trains on and how, so a finished or
partial run is reused only when it was made the same way."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from nasdm_aug.data.store import PatchStore
from nasdm_aug.studies.config import StudyConfig
from nasdm_aug.studies.plan import hovernet_config
from nasdm_aug.studies.registry import StudyRow
from nasdm_aug.utils import file_digest

__all__ = ["run_fingerprint", "fingerprint_changes", "stale_reasons"]


def _identity(store: PatchStore | None) -> dict[str, Any] | None:
    """A store's path and content hash."""
    if store is None:
        return None
    return {"path": str(Path(store.path).resolve()), "sha256": file_digest(store.path)}


def run_fingerprint(row: StudyRow, seed: int, store: PatchStore, bank: PatchStore | None,
                    config: StudyConfig, epoch: int | None = None) -> dict[str, Any]:
    """Everything that decides what one (row, seed) trains on and how: the row, the seed, the
    HoVerNet recipe, the validation draw, the balance target, the real store's and the bank's
    contents, the package version, and where they apply the patches per epoch (equal steps), the
    fidelity filter and the copy-paste probability. The test set is not in it: a kept model is
    scored again on another test set."""
    from nasdm_aug import __version__

    hv = hovernet_config(config, seed).to_dict()
    if not hv.get("hed_scale") and not hv.get("hed_shift"):  # off: runs made before the option keep their fingerprints
        for key in ("hed_scale", "hed_shift"):
            hv.pop(key, None)
    fp = {"version": __version__, "row": _row_record(row), "seed": seed,
          "hovernet": hv, "val_patches": config.val_patches,
          "balance_target": config.balance_target if row.mode == "balance" or row.paste == "target" else None,
          "store": _identity(store), "bank": _identity(bank)}
    # keys only where they apply, so runs made before they existed keep their fingerprints
    if epoch is not None:
        fp["epoch_patches"] = epoch
    if row.filtered:
        fp["filter"] = {"top_fraction": config.filter_top_fraction, "min_fidelity": config.filter_min_fidelity}
    if row.paste:
        fp["paste_prob"] = config.paste_prob
    return fp


def _row_record(row: StudyRow) -> dict[str, Any]:
    """What of a row decides its training data: not its plot position, group or baseline, and the
    filter and copy-paste switches only when on."""
    return {k: v for k, v in asdict(row).items()
            if k not in ("x", "baseline", "group") and not (k in ("filtered", "paste") and not v)}


def fingerprint_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, e.g. ``["bank", "hovernet (phase1_epochs)"]``."""
    if old is None:
        return ["made by a version that did not record its configuration"]
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            changed.append(f"{key} ({', '.join(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))})")
        else:
            changed.append(key)
    return changed


def stale_reasons(run_dir: Path, fingerprint: dict[str, Any]) -> list[str]:
    """Why the run in ``run_dir`` was made otherwise ([] when it is absent or the same)."""
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return []
    path = run_dir / "fingerprint.json"
    try:
        old = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        old = None
    return fingerprint_changes(old, fingerprint)
