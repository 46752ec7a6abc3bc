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
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from nasdm_aug.data.store import PatchStore
from nasdm_aug.mixing.balance import type_counts
from nasdm_aug.studies.config import StudyConfig
from nasdm_aug.studies.data import (StudyTestSet, check_given_banks, check_not_study_data, check_store, ensure_banks,
                                    ensure_store, resolve_test_set)
from nasdm_aug.studies.fingerprint import run_fingerprint, stale_reasons
from nasdm_aug.studies.plan import hovernet_config, plan_study, protocol, study_epochs, training_data, validation_data
from nasdm_aug.studies.registry import STUDY_REGISTRY, StudyRow, select_rows
from nasdm_aug.studies.summary import METRICS, summarise
from nasdm_aug.utils import InputError, json_safe, write_text_atomic

__all__ = ["run_studies", "run_one", "describe_study", "METRICS_VERSION"]


# bumped whenever a reported metric's definition changes: a cached result scored under another
# version is scored again from its kept HoVerNet model (no retraining)
METRICS_VERSION = 2


def run_one(row: StudyRow, seed: int, store: PatchStore, banks: dict[str, PatchStore], config: StudyConfig,
            run_dir: Path, test_data, progress: bool, test_set: dict[str, Any] | None = None,
            overwrite: bool = False, epoch: int | None = None) -> dict[str, Any]:
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
    fingerprint = run_fingerprint(row, seed, store, bank, config, epoch)
    changed = stale_reasons(run_dir, fingerprint)
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
    data, train = training_data(row, seed, store, bank, config, epoch)
    model_dir = run_dir / "hovernet"
    resume = model_dir.is_dir() and any(model_dir.iterdir())
    train_hovernet(train, model_dir, hovernet_config(config, seed), val_data=validation_data(store, config),
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
    from nasdm_aug.studies.report import write_study_outputs

    out = Path(out)
    rows = select_rows(study, config)
    _check_test_set(config, rows, out)
    check_given_banks(config, rows)
    out.mkdir(parents=True, exist_ok=True)
    store = PatchStore(ensure_store(config, out, progress))
    check_store(store, rows, own_test=not config.test)
    test = resolve_test_set(config, store, out, progress=progress) or StudyTestSet.own(store)
    banks = ensure_banks(config, store, rows, out, progress, overwrite=overwrite)
    test_data = store_dataset(test.path, test.split)
    runs = plan_study(store, rows, config)
    epochs = study_epochs(store, rows, config)
    placed = []
    for run in runs:
        row = next(r for r in rows if r.label == run["row"] and r.study == run["study"])
        placed.append((run, row, out / "runs" / row.study / row.slug / f"seed{run['seed']}"))
    if not overwrite:  # every stale run named before the first hour of training, not after
        _refuse_stale(placed, store, banks, config, epochs, out)
    config.save(out / "config.json")
    results = []
    bar = tqdm(placed, desc="study runs", unit="run", disable=not progress)
    for run, row, run_dir in bar:
        bar.set_postfix_str(f"{run['row']} seed {run['seed']}")
        results.append(run_one(row, run["seed"], store, banks, config, run_dir, test_data, progress=False,
                               epoch=epochs[row.study], test_set=test.record(), overwrite=overwrite))
    summary = {"config": config.to_dict(), "study": study, "store": str(store.path), "test_set": test.record(),
               "protocol": {s: protocol(config, e) for s, e in epochs.items()},
               "runs": results, "table": summarise(results, rows)}
    write_study_outputs(summary, rows, out)
    return summary


def _check_test_set(config: StudyConfig, rows: list[StudyRow], out: Path) -> None:
    """Refuse a bad external test set before anything is written."""
    from nasdm_aug.data.eval_sets import parse_data_arg

    if not config.test:
        return
    path, _, is_folder = parse_data_arg(config.test)
    if is_folder:
        check_not_study_data(path, config, None)
    if config.store:
        given = PatchStore(config.store)
        check_store(given, rows, own_test=False)
        resolve_test_set(config, given, out, make=False)


def _refuse_stale(placed: list[tuple[dict[str, Any], StudyRow, Path]], store: PatchStore,
                  banks: dict[str, PatchStore], config: StudyConfig, epochs: dict[str, int | None], out: Path) -> None:
    """One line naming how many planned runs in ``out`` were made with another configuration."""
    stale = [(d, c) for run, row, d in placed
             if (c := stale_reasons(d, run_fingerprint(row, run["seed"], store, banks.get(row.bank), config,
                                                       epochs[row.study])))]
    if stale:
        d, c = stale[0]
        raise InputError(f"{out}: {len(stale)} of {len(placed)} finished or partial runs were made with another "
                         f"configuration (e.g. {d.relative_to(out)}: {'; '.join(c)}); rerun with `overwrite` to "
                         "replace them, or use another `out`")


def describe_study(config: StudyConfig, study: str, out: str | os.PathLike) -> list[str]:
    """What ``run_studies`` would do, as lines (``benchmark --dry-run``): the config, the test set,
    the banks, the protocol and every run with its data sizes; nothing is written.

    Raises:
        InputError: as :func:`run_studies` would before any training, where it can tell without
            preparing data (store splits, the external test set, unknown names).
    """
    from nasdm_aug.studies.registry import BANK_REGISTRY

    rows = select_rows(study, config)
    lines = [config.to_json()]
    real = PatchStore(config.store) if config.store else None
    if real is not None:
        check_store(real, rows, own_test=not config.test)
    test_set = resolve_test_set(config, real, Path(out), make=False)  # checks a given test store
    if test_set is None and real is not None:
        test_set = StudyTestSet.own(real)
    lines.append(test_set.describe() if test_set else "test set: the store's own Test split")
    for name in dict.fromkeys(r.bank for r in rows if r.bank):
        where = config.banks.get(name) or f"{Path(out) / 'banks' / name}.h5 (made with `model` unless there)"
        lines.append(f"bank {name}: {BANK_REGISTRY[name].about}: {where}")
    if real is None:
        lines.append(f"{len(rows) * config.n_runs} runs ({len(rows)} rows x {config.n_runs} seeds); data sizes "
                     "follow once the store is prepared (or pass `store`)")
        return lines
    for s, epoch in study_epochs(real, rows, config).items():
        lines.append(f"{s}: {protocol(config, epoch)}")
    for run in plan_study(real, rows, config):
        lines.append(f"{run['study']:<18} {run['row']:<24} seed {run['seed']}: {run['n_patches']} patches "
                     f"({run['n_real']} real + {'up to ' if run.get('upto') else ''}{run['n_synthetic']} synthetic)")
    return lines
