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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from nasdm_aug.config import ConfigBase
from nasdm_aug.data.store import PatchStore
from nasdm_aug.mixing import SyntheticMixDataset
from nasdm_aug.mixing.balance import parse_target, plan_balance_synthesis, type_counts
from nasdm_aug.mixing.plan import MIX_MODES, planned_counts
from nasdm_aug.sampling import SamplerOptions
from nasdm_aug.study_registry import (BANK_SPLITS, PAPER_STUDIES, PLOT_AXES, STUDIES, STUDY_REGISTRY, Study,
                                      StudyRow)
from nasdm_aug.utils import InputError, file_digest, json_safe, write_text_atomic

__all__ = ["StudyConfig", "StudyRow", "Study", "STUDIES", "STUDY_REGISTRY", "PAPER_STUDIES", "PLOT_AXES", "BANK_SPLITS",
           "STUDY_PRESETS", "get_study_preset", "plan_study",
           "run_studies", "summarise", "StudyTestSet", "resolve_test_set", "TEST_STORE"]


METRICS = ("dice", "miou", "dice_with_bg", "miou_with_bg", "pq", "aji")
# bumped whenever a reported metric's definition changes: a cached result scored under another
# version is scored again from its kept HoVerNet model (no retraining)
METRICS_VERSION = 2


@dataclass(frozen=True)
class StudyConfig(ConfigBase):
    """Everything a study run needs; written as ``config.json`` in the output folder."""

    name: str = "demo"  # preset name, for the report
    store: str = ""  # the real PatchStore; "" = prepare one from ``source`` (or toy tissue) into OUT/data
    source: str = ""  # dataset folder to prepare when ``store`` is empty ("" = toy tissue)
    source_format: str = "toy"  # prepare format: toy, lizard, consep, conic, pannuke
    toy_images: int = 40  # toy: images to generate
    toy_size: int = 256  # toy: image side in pixels
    patch_size: int = 128  # prepare: patch side (must match the NASDM models)
    stride: int = 64  # prepare: step between patches
    magnification: float = 0.0  # prepare: objective power of the patches (e.g. 20); 0 = the source's own
    split_counts: tuple[int, ...] = ()  # prepare: (Test, R2, R1) images; () = the paper's fractions
    model: tuple[str, ...] = ()  # NASDM runs making S1 / S2 ("toy" = embedded); () = banks must be given
    s1: str = ""  # an existing S1 bank (synthetic from R1 masks); "" = make it in OUT/banks
    s2: str = ""  # an existing S2 bank (synthetic from R2 masks)
    balance_bank: str = ""  # an existing bank of generated rare-type patches; "" = make it with --balance-for
    balance_target: str = "uniform"  # balance study: uniform, sqrt or name=weight,... (nasdm_aug.mixing.balance)
    sampling: SamplerOptions | None = None  # synthesis sampler and steps (None = synthesize's default)
    guidance: float | None = None  # synthesis guidance (None = synthesize's default)
    synth_batch_size: int = 8
    hovernet_preset: str = "tiny"  # hovernet.config preset
    epochs: tuple[int, ...] = ()  # (phase 1, phase 2) epochs overriding the preset
    batch_size: int = 0  # HoVerNet batch size (0 = preset)
    n_runs: int = 3  # runs per row (seeds seed .. seed + n_runs - 1)
    val_patches: int = 0  # validation patches drawn from Train outside R1 (0 = keep the last epoch)
    seed: int = 0
    device: str = "auto"
    test: str = ""  # external test set: STORE.h5[:SPLIT] or a dataset folder; "" = the store's own Test split

    def __post_init__(self) -> None:
        if self.n_runs < 1:
            raise ValueError(f"n_runs must be >= 1, got {self.n_runs}")
        if self.epochs and (len(self.epochs) != 2 or min(self.epochs) < 0 or sum(self.epochs) < 1):
            raise ValueError(f"epochs must be (phase1, phase2) with at least one epoch, got {self.epochs}")
        if self.val_patches < 0 or self.batch_size < 0 or self.synth_batch_size < 1:
            raise ValueError("val_patches and batch_size must be >= 0, synth_batch_size >= 1")
        if self.guidance is not None and not self.guidance >= 0:
            raise ValueError(f"guidance must be >= 0, got {self.guidance}")
        if self.magnification < 0:
            raise ValueError(f"magnification must be >= 0 (0 = the source's own), got {self.magnification}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StudyConfig":
        """As :meth:`ConfigBase.from_dict`; a config written when the synthesis options were flat
        fields (``sampler`` "", ``steps`` 0 and ``guidance`` -1 for the defaults) is read too."""
        data = SamplerOptions.nest_flat_keys(data)
        if isinstance(data, dict) and data.get("sampling") == {}:
            data = {**data, "sampling": None}
        if isinstance(data, dict) and isinstance(data.get("guidance"), (int, float)) and data["guidance"] < 0:
            data = {**data, "guidance": None}
        return super().from_dict(data)


STUDY_PRESETS: dict[str, StudyConfig] = {
    # toy tissue, the embedded toy NASDM models and a tiny HoVerNet: minutes on a 2-core CPU
    "demo": StudyConfig(name="demo", toy_images=24, toy_size=256, patch_size=64, stride=64, split_counts=(4, 4, 4),
                        model=("toy",), sampling=SamplerOptions(steps=25), hovernet_preset="tiny", epochs=(1, 3), batch_size=8, n_runs=2),
    # real CoNSeP laid out like ../shared/data/consep (pass --source and NASDM runs trained on it),
    # brought from its 40x to Lizard's 20x, where 64-px patches hold about as much tissue as 128 at 40x;
    # S1 / S2 (if made here) by ancestral DDPM in 25 unguided steps, so they fit a CPU sitting
    # (DPM-Solver++(2M) at 20 steps left visible noise with these models: docs/real-tissue.md)
    "consep": StudyConfig(name="consep", source_format="consep", magnification=20.0, patch_size=64, stride=32,
                          sampling=SamplerOptions("ddpm", steps=25), guidance=1.0, hovernet_preset="tiny", epochs=(2, 3),
                          n_runs=3, val_patches=64),
    # the paper's full protocol on Lizard (GPUs): 128-px patches, HoVerNet 50 + 50 epochs
    "lizard": StudyConfig(name="lizard", source_format="lizard", patch_size=128, stride=64,
                          hovernet_preset="paper", n_runs=3, val_patches=512, synth_batch_size=32),
}


def get_study_preset(name_or_path: str) -> StudyConfig:
    """A named preset or a StudyConfig JSON file.

    Raises:
        InputError: neither a preset name nor a readable config file.
    """
    if name_or_path in STUDY_PRESETS:
        return STUDY_PRESETS[name_or_path]
    if name_or_path.endswith(".json"):
        return StudyConfig.load(name_or_path)
    raise InputError(f"unknown preset {name_or_path!r}; valid: {', '.join(STUDY_PRESETS)}, or a CONFIG.json path")


def select_rows(study: str) -> list[StudyRow]:
    """Rows of one study, or of ``"all"``.

    Raises:
        InputError: an unknown study name.
    """
    if study == "all":
        return [r for name in PAPER_STUDIES for r in STUDY_REGISTRY[name].rows]
    if study not in STUDY_REGISTRY:
        raise InputError(f"unknown study {study!r}; valid: {', '.join(STUDY_REGISTRY)}, all")
    return list(STUDY_REGISTRY[study].rows)


def check_store(store: PatchStore, rows: Sequence[StudyRow], *, own_test: bool = True) -> None:
    """Every split the rows (and the test, unless ``own_test`` is False: an external test set) need
    exists and holds patches.

    Raises:
        InputError: a missing or empty split, naming the study that needs it.
    """
    needs = [(r.split, r.study) for r in rows] + ([("Test", "every study")] if own_test else [])
    for split, study in needs:
        if split not in store.splits or len(store.indices(split)) == 0:
            raise InputError(f"{store.path}: {study} needs a non-empty {split!r} split (splits here: "
                             f"{', '.join(f'{k}={len(store.indices(k))}' for k in store.splits) or 'none'})")


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
    from hovernet.config import get_preset

    cfg = get_preset(config.hovernet_preset).replace(seed=seed, device=config.device)
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

    bank = banks.get(row.bank) if row.bank else None
    fingerprint = run_fingerprint(row, seed, store, bank, config)
    changed = _stale(run_dir, fingerprint)
    if changed and not overwrite:
        raise InputError(f"{run_dir}: made with another configuration ({'; '.join(changed)}); rerun with "
                         "--overwrite to replace it, or use another --out")
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
    model, cfg, _ = load_hovernet(model_dir, "cpu" if config.device == "auto" else config.device)
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
    """Run the rows of ``study`` (or ``"all"``) and write the results (see ``nasdm_aug.report``).

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
    from hovernet.evaluate import parse_data_arg
    from nasdm_aug.report import write_study_outputs

    out = Path(out)
    rows = select_rows(study)
    own_test = not config.test
    if config.test:  # refuse a bad test set before anything is written
        path, _, is_folder = parse_data_arg(config.test)
        if is_folder:
            _check_not_study_data(path, config, None)
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
                             f"configuration (e.g. {d.relative_to(out)}: {'; '.join(c)}); rerun with --overwrite to "
                             "replace them, or use another --out")
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


def ensure_store(config: StudyConfig, out: Path, progress: bool) -> Path:
    """The real store: ``config.store``, or one prepared (once) into ``OUT/data/real.h5``."""
    if config.store:
        return Path(config.store)
    path = out / "data" / "real.h5"
    if path.is_file():
        return path
    from nasdm_aug.data.prepare import PrepareConfig, prepare

    if config.source_format != "toy" and not config.source:
        raise InputError(f"preset {config.name!r} needs the dataset folder: pass --source DIR (or --store STORE.h5)")
    try:
        prep = PrepareConfig(format=config.source_format, src=config.source, out=str(path),
                             patch_size=config.patch_size, stride=config.stride, seed=config.seed,
                             toy_images=config.toy_images, toy_size=config.toy_size,
                             split_counts=tuple(config.split_counts) or None, magnification=config.magnification)
    except ValueError as exc:
        raise InputError(f"preset {config.name!r}: {exc}") from None
    prepare(prep, progress=progress)
    return path


# -- the test set -----------------------------------------------------------------------------------
TEST_STORE = ("data", "test.h5")  # where a --test dataset folder is prepared, under OUT


@dataclass(frozen=True)
class StudyTestSet:
    """The patches every run of a study is tested on.

    Attributes:
        path: the PatchStore.
        split: its split, or None for the whole store.
        n_patches: patches in it; None while a dataset folder is not prepared yet (dry runs).
        source: the dataset folder it was prepared from ("" for a given store).
        external: False for the study store's own Test split.
        plan: for a folder not prepared yet, how it would be (dry runs).
    """

    path: str
    split: str | None
    n_patches: int | None
    source: str = ""
    external: bool = True
    plan: str = ""

    @classmethod
    def own(cls, store: PatchStore) -> "StudyTestSet":
        """The study store's own Test split."""
        return cls(str(store.path.resolve()), "Test", int(len(store.indices("Test"))), external=False)

    def record(self) -> dict[str, Any]:
        """What results.json and each run's result.json record."""
        return {"path": self.path, "split": self.split, "n_patches": self.n_patches, "source": self.source,
                "external": self.external}

    def describe(self) -> str:
        """One line for ``benchmark --dry-run``."""
        where = f"{self.path}:{self.split}" if self.split else f"{self.path} (whole store)"
        kind = "external" if self.external else "the study store's own"
        if self.n_patches is None:
            return f"test set ({kind}): {self.source} prepared into {self.path}{self.plan}"
        src = f", prepared from {self.source}" if self.source else ""
        return f"test set ({kind}): {where}: {self.n_patches} patches{src}"


def resolve_test_set(config: StudyConfig, store: PatchStore | None, out: str | os.PathLike, *, make: bool = True,
                     progress: bool = False) -> StudyTestSet | None:
    """The external test set ``config.test`` names, checked against the study store; None without one.

    ``STORE.h5[:SPLIT]``: a PatchStore split (default: the whole store if it has one split, else
    Test). A dataset folder: prepared once into ``OUT/data/test.h5`` like the study's own data (its
    format, magnification, patch size, stride, CoNSeP classes and tissue filter), all its images in
    Test; an existing ``OUT/data/test.h5`` is reused only if it was made from the same folder and
    settings.

    Args:
        store: the study store; None when it is not prepared yet (dry runs: only the test store
            itself is checked).
        make: prepare a dataset folder now; False (dry runs) only checks an existing one.

    Raises:
        InputError: an unreadable test store, an unknown or empty split, a type table, patch
            size or magnification other than the study store's, a folder that is the study's
            own data, or a stale ``OUT/data/test.h5``; one line naming both sides.
    """
    from hovernet.evaluate import check_same_types, open_eval_store, parse_data_arg

    if not config.test:
        return None
    path, split, is_folder = parse_data_arg(config.test)
    if not is_folder:
        test, split, n = open_eval_store(path, split)
        if store is not None:
            _check_like(test, store)
        return StudyTestSet(str(path.resolve()), split, n)
    target = Path(out).joinpath(*TEST_STORE)
    _check_not_study_data(path, config, store)
    if store is None:
        return StudyTestSet(str(target), "Test", None, source=str(path.resolve()),
                            plan=" like the study's data once that is prepared")
    want = _test_prepare_config(path, config, store, target)
    check_same_types(f"test folder {path} ({want.format})", want.table(), f"study store {store.path}",
                     store.type_table)
    if target.is_file():
        _check_prepared(target, want)
    elif not make:
        return StudyTestSet(str(target.resolve()), "Test", None, source=want.src,
                            plan=(f" ({want.format}, {want.split_counts[0]} images, {want.patch_size}-px patches, "
                                  f"stride {want.stride}, at {want.target():g}x; all Test)"))
    else:
        from nasdm_aug.data.prepare import prepare

        prepare(want, progress=progress)
    test, split, n = open_eval_store(target, "Test")
    _check_like(test, store)
    return StudyTestSet(str(target.resolve()), split, n, source=want.src)


def _check_like(test: PatchStore, store: PatchStore) -> None:
    """A test store must share the study store's type table, patch size and magnification."""
    from hovernet.evaluate import check_same_types
    from nasdm_aug.data.magnification import check_same_scale

    what, other = f"test store {test.path}", f"study store {store.path}"
    check_same_types(what, test.type_table, other, store.type_table)
    check_same_scale(what, test.scale_info(), other, store.scale_info())


def _check_not_study_data(folder: Path, config: StudyConfig, store: PatchStore | None) -> None:
    """Testing on the folder the study trains on would score the models on their own training images."""
    mine = {Path(p).resolve() for p in (config.source, store.attrs.get("source_dir", "") if store else "") if p}
    if folder.resolve() in mine:
        raise InputError(f"--test {folder} is the study's own dataset folder; its images are already split "
                         "into Train/R1/R2/Test (leave --test out to test on its Test split)")


def _test_prepare_config(folder: Path, config: StudyConfig, store: PatchStore, target: Path):
    """Prepare settings for a test folder: the study store's format, scale, tiling and classes."""
    from hovernet.evaluate import eval_prepare_config

    like = store.config
    fmt = config.source_format if config.source_format != "toy" else store.attrs.get("source_format", "")
    if not fmt:
        raise InputError(f"study store {store.path} records no source format, so {folder} cannot be prepared "
                         "like it; prepare it with `nasdm-aug prepare` and pass --test STORE.h5")
    return eval_prepare_config(folder, fmt, target, patch_size=store.patch_size,
                               stride=int(like.get("stride") or config.stride),
                               magnification=store.magnification or 0.0,
                               consep_classes=like.get("consep_classes", "merged"), like=like)


_UNCOMPARED = ("src", "out", "workers", "overwrite")


def _check_prepared(path: Path, want) -> None:
    """Refuse to reuse ``OUT/data/test.h5`` made from another folder or with other settings."""
    have = PatchStore(path).config
    old_src = have.get("src") or have.get("keep_source") or ""
    if not old_src or Path(old_src).resolve() != Path(want.src).resolve():
        raise InputError(f"{path} was prepared from {old_src or 'another source'}, not {want.src}; "
                         "delete it or use another --out")
    wanted = want.to_dict()
    diffs = [f"{k} {have.get(k)!r}, now {v!r}" for k, v in wanted.items() if k not in _UNCOMPARED and have.get(k) != v]
    if diffs:
        raise InputError(f"{path} was prepared from {want.src} with other settings ({'; '.join(diffs)}); "
                         "delete it or use another --out")


def ensure_banks(config: StudyConfig, store: PatchStore, rows: Sequence[StudyRow], out: Path,
                 progress: bool, overwrite: bool = False) -> dict[str, PatchStore]:
    """S1 / S2 as the rows need them: given, made before in ``OUT/banks``, or synthesized now.

    A bank made before in ``OUT/banks`` is reused only if it is the complete bank this config
    makes (same arguments, weights and masks); otherwise it is refused in one line, or made again
    with ``overwrite``.
    """
    from nasdm_aug.synthesize import SynthesizeConfig, finished_bank_problem, synthesize

    banks: dict[str, PatchStore] = {}
    for name in sorted({r.bank for r in rows if r.bank}):
        given = {"S1": config.s1, "S2": config.s2, "B": config.balance_bank}[name]
        path = Path(given) if given else out / "banks" / f"{name}.h5"
        if given:
            if not path.is_file():
                raise InputError(f"{path}: the {name} bank does not exist")
            banks[name] = PatchStore(path)
            continue
        if not config.model:
            if path.is_file():  # a bank this study made before, without the models to check it against
                banks[name] = PatchStore(path)
                continue
            needing = sorted({r.study for r in rows if r.bank == name})
            flag = "--balance-bank" if name == "B" else f"--{name.lower()}"
            raise InputError(f"{', '.join(needing)} needs the synthetic bank {name}: pass --model "
                             f"(NASDM mask and patch runs, or 'toy') or {flag} BANK.h5")
        opts: dict[str, Any] = {"model": config.model, "seed": config.seed, "batch_size": config.synth_batch_size}
        attrs = None
        if name == "B":  # generated masks of the type combinations the split lacks
            ratio = max(r.ratio for r in rows if r.bank == "B")
            plan = _balance_synthesis_plan(store, config, ratio)
            opts["combinations"], attrs = plan.combinations, {"balance_plan": plan.record}
        else:
            opts.update(masks=str(store.path), split=BANK_SPLITS[name])
        if config.sampling is not None:
            opts["sampling"] = config.sampling
        if config.guidance is not None:
            opts["guidance"] = config.guidance
        synth = SynthesizeConfig(**opts)
        if path.is_file():
            problem = finished_bank_problem(path, synth)
            if problem is None:
                banks[name] = PatchStore(path)
                continue
            if not overwrite:
                raise InputError(f"{path}: {problem}; rerun with --overwrite to make it again, or use another --out")
        device = None if config.device == "auto" else config.device
        synthesize(synth, path, device=device, preview=8, progress=progress, attrs=attrs, overwrite=overwrite)
        banks[name] = PatchStore(path)
    return banks


def _balance_synthesis_plan(store: PatchStore, config: StudyConfig, ratio: float):
    return plan_balance_synthesis(store, BANK_SPLITS["B"], parse_target(config.balance_target), ratio)
