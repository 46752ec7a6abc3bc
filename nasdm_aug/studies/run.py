"""The NASDM paper's downstream studies (Sec. 4.3-4.4, Tables 3-5): addition, replacement and
synthetic-vs-real annotations, plus rare-type balancing, each row trained N times with
HoVerNet and tested on Test: the store's own Test split, or an external test set
(``StudyConfig.test``: another PatchStore's split, or a dataset folder prepared like the study's data).

A run is one (row, seed): a mixed training set (``SyntheticMixDataset``), a HoVerNet trained on it
with the configured recipe, and its test metrics. Each finished run leaves ``result.json`` in its
own folder, so a rerun skips it; a killed run resumes its HoVerNet training.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from nasdm_aug.data.store import PatchStore
from nasdm_aug.mixing import SyntheticMixDataset
from nasdm_aug.mixing.balance import parse_target, type_counts
from nasdm_aug.mixing.plan import MIX_MODES, planned_counts
from nasdm_aug.studies.config import STUDY_PRESETS, StudyConfig, get_study_preset
from nasdm_aug.studies.registry import (BANK_SPLITS, PAPER_STUDIES, PLOT_AXES, STUDIES, STUDY_REGISTRY, Study,
                                      StudyRow, select_rows)
from nasdm_aug.studies.data import (TEST_STORE, StudyTestSet, check_not_study_data, check_store, ensure_banks,
                                  ensure_store, resolve_test_set)
from nasdm_aug.utils import InputError, file_digest, json_safe, write_text_atomic

__all__ = ["StudyConfig", "StudyRow", "Study", "STUDIES", "STUDY_REGISTRY", "PAPER_STUDIES", "PLOT_AXES", "BANK_SPLITS",
           "STUDY_PRESETS", "get_study_preset", "plan_study",
           "run_studies", "summarise", "StudyTestSet", "resolve_test_set", "TEST_STORE"]


METRICS = ("dice", "miou", "dice_with_bg", "miou_with_bg", "pq", "aji")
# bumped whenever a reported metric's definition changes: a cached result scored under another
# version is scored again from its kept HoVerNet model (no retraining)
METRICS_VERSION = 2


def plan_study(store: PatchStore, rows: Sequence[StudyRow], config: StudyConfig) -> list[dict[str, Any]]:
    """The runs a study would do with their data sizes, computed from the real store alone.

    Returns:
        one dict per run: ``study``, ``row``, ``seed``, ``n_real``, ``n_synthetic``, ``n_patches``, and
        ``upto`` (True where ``n_synthetic`` is a cap: balance picks only the patches that help).
    """
    runs = []
    for row in rows:
        # the planner's own count rule; the studies' banks hold one synthetic patch per mask
        n_real, n_syn = planned_counts(row.mix_config(), len(store.indices(row.split)))
        for k in range(config.n_runs):
            runs.append({"study": row.study, "row": row.label, "seed": config.seed + k, "n_real": n_real,
                         "n_synthetic": n_syn, "n_patches": n_real + n_syn,
                         "upto": MIX_MODES[row.mode].synthetic_is_cap})
    return runs


def _hovernet_config(config: StudyConfig, seed: int):
    from hovernet.config import get_hovernet_preset

    cfg = get_hovernet_preset(config.hovernet_preset).replace(seed=seed, device=config.device)
    if config.epochs:
        cfg = cfg.replace(phase1_epochs=config.epochs[0], phase2_epochs=config.epochs[1],
                          lr_decay_epoch=max(1, min(cfg.lr_decay_epoch, max(config.epochs) - 1)))
    if config.batch_size:
        cfg = cfg.replace(batch_size=config.batch_size)
    return cfg


def _validation(store: PatchStore, config: StudyConfig):
    if not config.val_patches:
        return None
    import torch

    pool = np.setdiff1d(store.indices("Train"), store.indices("R1") if "R1" in store.splits else [])
    chosen = np.sort(np.random.default_rng(config.seed).permutation(pool)[: config.val_patches])
    all_train = SyntheticMixDataset(store, split=None, mode="real", ratio=1.0)
    return torch.utils.data.Subset(all_train, chosen.tolist())


def _identity(store: PatchStore | None) -> dict[str, Any] | None:
    """A store's path and content hash."""
    if store is None:
        return None
    return {"path": str(Path(store.path).resolve()), "sha256": file_digest(store.path)}


def run_fingerprint(row: StudyRow, seed: int, store: PatchStore, bank: PatchStore | None,
                    config: StudyConfig) -> dict[str, Any]:
    """Everything that decides what one (row, seed) trains on and how: the row, the seed, the
    HoVerNet recipe, the validation draw, the balance target, the real store's and the bank's
    contents, and the package version. The test set is not in it: a kept model is scored again
    on another test set."""
    from nasdm_aug import __version__

    return {"version": __version__, "row": {k: v for k, v in asdict(row).items() if k != "x"}, "seed": seed,
            "hovernet": _hovernet_config(config, seed).to_dict(), "val_patches": config.val_patches,
            "balance_target": config.balance_target if row.mode == "balance" else None,
            "store": _identity(store), "bank": _identity(bank)}


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


def _stale(run_dir: Path, fingerprint: dict[str, Any]) -> list[str]:
    """Why the run in ``run_dir`` was made otherwise ([] when it is absent or the same)."""
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return []
    path = run_dir / "fingerprint.json"
    try:
        old = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        old = None
    return fingerprint_changes(old, fingerprint)


def run_one(row: StudyRow, seed: int, store: PatchStore, banks: dict[str, PatchStore], config: StudyConfig,
            run_dir: Path, test_data, progress: bool, test_set: dict[str, Any] | None = None,
            overwrite: bool = False) -> dict[str, Any]:
    """Train and test one (row, seed); cached in ``run_dir/result.json``.

    The run's :func:`run_fingerprint` is written first (``fingerprint.json``): a finished or
    partial run made otherwise is refused in one line, or replaced with ``overwrite``.
    ``test_set`` (a :meth:`StudyTestSet.record`) is recorded in the result; a cached result scored
    on another test set, or with metrics of another ``METRICS_VERSION``, is not reused: the trained
    model (kept in ``run_dir/hovernet``) is scored again.

    Raises:
        InputError: ``run_dir`` holds a run of another configuration and ``overwrite`` is False.
    """
    from hovernet.evaluate import evaluate_model, load_hovernet
    from hovernet.trainer import train_hovernet
    from nasdm_aug.training.distributed import pick_device

    bank = banks.get(row.bank) if row.bank else None
    fingerprint = run_fingerprint(row, seed, store, bank, config)
    changed = _stale(run_dir, fingerprint)
    if changed and not overwrite:
        raise InputError(f"{run_dir}: made with another configuration ({'; '.join(changed)}); rerun with "
                         "`overwrite` to replace it, or use another `out`")
    if changed:
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(run_dir / "fingerprint.json", fingerprint)
    result_path = run_dir / "result.json"
    if result_path.is_file():
        cached = json.loads(result_path.read_text())
        if _same_test_set(cached, test_set) and cached.get("metrics_version", 1) == METRICS_VERSION:
            return cached
    data = SyntheticMixDataset(store, bank, split=row.split, mode=row.mode, ratio=row.ratio,
                               base_fraction=row.base_fraction, seed=seed, target=parse_target(config.balance_target))
    model_dir = run_dir / "hovernet"
    resume = model_dir.is_dir() and any(model_dir.iterdir())
    train_hovernet(data, model_dir, _hovernet_config(config, seed), val_data=_validation(store, config),
                   type_table=store.type_table, patch_size=store.patch_size, magnification=store.magnification,
                   resume=resume,
                   data_desc=f"{row.study}: {row.label} (seed {seed})", progress=progress)
    model, cfg, _ = load_hovernet(model_dir, pick_device(config.device))
    metrics, _ = evaluate_model(model, test_data, cfg, list(store.type_table.names), progress=False)
    plan = data.plan()
    result = {"study": row.study, "row": row.label, "seed": seed, "metrics_version": METRICS_VERSION,
              "n_patches": len(plan),
              "n_synthetic": int(np.sum(plan.origin == 1)), "n_real": int(np.sum(plan.origin == 0)),
              "metrics": {k: metrics[k] for k in (*METRICS, "mpq_plus", "mpq_plus_present", "f1_detection")},
              "per_type": metrics["per_type"]}
    if test_set is not None:
        result["test_set"] = test_set
    if STUDY_REGISTRY[row.study].plot == "per_type":  # what the training set held, per type
        counts = sum(type_counts(s, plan.indices(o)).sum(0) for o, s in (("real", store), ("synthetic", bank))
                     if s is not None and len(plan.indices(o)))
        result["train_nuclei"] = dict(zip(store.type_table.names, map(int, counts)))
    _write_json_atomic(result_path, json_safe(result))
    return result


def _write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def _same_test_set(cached: dict[str, Any], test_set: dict[str, Any] | None) -> bool:
    """Whether a cached result was scored on ``test_set`` (results from before test sets were
    recorded were scored on the store's own Test split)."""
    if test_set is None:
        return True
    if "test_set" not in cached:
        return not test_set.get("external")
    return cached["test_set"] == test_set


def summarise(results: Sequence[dict[str, Any]], rows: Sequence[StudyRow]) -> list[dict[str, Any]]:
    """Mean and sample std (ddof=1; 0 for one run) of each metric per row, in table order."""
    table = []
    for row in rows:
        runs = [r for r in results if r["study"] == row.study and r["row"] == row.label]
        if not runs:
            continue
        entry: dict[str, Any] = {"study": row.study, "row": row.label, "x": row.x, "runs": len(runs),
                                 "n_patches": runs[0]["n_patches"], "n_real": runs[0]["n_real"],
                                 "n_synthetic": runs[0]["n_synthetic"]}
        for m in METRICS:
            entry[m], entry[f"{m}_std"] = _mean_std([r["metrics"].get(m) for r in runs])
        if all(r.get("per_type") for r in runs):
            entry["per_type"] = _per_type_summary(runs)
        if "train_nuclei" in runs[0]:
            entry["train_nuclei"] = runs[0]["train_nuclei"]
        table.append(entry)
    return table


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float]:
    """Mean over the finite values (None when there are none) and their sample std (0 for fewer than 2)."""
    vals = np.array([np.nan if v is None else v for v in values], float)
    mean = float(np.nanmean(vals)) if np.isfinite(vals).any() else None
    return mean, float(np.nanstd(vals, ddof=1)) if np.isfinite(vals).sum() > 1 else 0.0


def _per_type_summary(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per type: mean and sample std of F1 and PQ over runs, and the Test nuclei count."""
    out = {}
    for name in runs[0]["per_type"]:
        entry: dict[str, Any] = {"n_gt": runs[0]["per_type"][name].get("n_gt")}
        for m in ("f1", "pq"):
            entry[m], entry[f"{m}_std"] = _mean_std([r["per_type"][name].get(m) for r in runs])
        out[name] = entry
    return out


def run_studies(config: StudyConfig, study: str, out: str | os.PathLike, *, progress: bool = True,
                overwrite: bool = False) -> dict[str, Any]:
    """Run the rows of ``study`` (or ``"all"``) and write the results (see ``nasdm_aug.studies.report``).

    Finished runs in ``out`` are reused when their fingerprint (:func:`run_fingerprint`) matches;
    runs made with another configuration stop the study before any training, in one line, unless
    ``overwrite`` (then they are trained again).

    Returns:
        dict with ``config``, ``runs`` (one result per run) and ``table`` (per-row mean and std).

    With ``config.test`` the rows are tested on that set (see :func:`resolve_test_set`) and the
    study store needs no Test split of its own; ``results.json`` records the test set used
    (``test_set``: path, split, number of patches, and the folder it was prepared from).

    Raises:
        InputError: a store without the needed splits, synthetic rows with neither a model nor a
            bank, or an external test set that cannot be used (unreadable, another type table,
            patch size or magnification, a stale ``OUT/data/test.h5``).
    """
    from hovernet.data import store_dataset
    from nasdm_aug.data.eval_sets import parse_data_arg
    from nasdm_aug.studies.report import write_study_outputs

    out = Path(out)
    rows = select_rows(study)
    own_test = not config.test
    if config.test:  # refuse a bad test set before anything is written
        path, _, is_folder = parse_data_arg(config.test)
        if is_folder:
            check_not_study_data(path, config, None)
        if config.store:
            given = PatchStore(config.store)
            check_store(given, rows, own_test=False)
            resolve_test_set(config, given, out, make=False)
    out.mkdir(parents=True, exist_ok=True)
    store = PatchStore(ensure_store(config, out, progress))
    check_store(store, rows, own_test=own_test)
    test = resolve_test_set(config, store, out, progress=progress) or StudyTestSet.own(store)
    banks = ensure_banks(config, store, rows, out, progress, overwrite=overwrite)
    test_data = store_dataset(test.path, test.split)
    runs = plan_study(store, rows, config)
    placed = []
    for run in runs:
        row = next(r for r in rows if r.label == run["row"] and r.study == run["study"])
        placed.append((run, row, out / "runs" / row.study / row.slug / f"seed{run['seed']}"))
    if not overwrite:  # every stale run named before the first hour of training, not after
        stale = [(d, c) for run, row, d in placed
                 if (c := _stale(d, run_fingerprint(row, run["seed"], store, banks.get(row.bank), config)))]
        if stale:
            d, c = stale[0]
            raise InputError(f"{out}: {len(stale)} of {len(runs)} finished or partial runs were made with another "
                             f"configuration (e.g. {d.relative_to(out)}: {'; '.join(c)}); rerun with `overwrite` to "
                             "replace them, or use another `out`")
    config.save(out / "config.json")
    results = []
    bar = tqdm(placed, desc="study runs", unit="run", disable=not progress)
    for run, row, run_dir in bar:
        bar.set_postfix_str(f"{run['row']} seed {run['seed']}")
        results.append(run_one(row, run["seed"], store, banks, config, run_dir, test_data, progress=False,
                               test_set=test.record(), overwrite=overwrite))
    summary = {"config": config.to_dict(), "study": study, "store": str(store.path), "test_set": test.record(),
               "runs": results, "table": summarise(results, rows)}
    write_study_outputs(summary, rows, out)
    return summary
