"""The data a study runs on: the real store (given, or prepared once into ``OUT/data``), the
synthetic banks its rows need (given, made before and checked, or synthesized now), and the
test set (the store's own Test split, another store's split, or a dataset folder prepared like
the study's data)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from nasdm_aug.data.store import PatchStore
from nasdm_aug.mixing.balance import parse_target, plan_balance_synthesis
from nasdm_aug.studies.registry import BANK_REGISTRY, Bank, StudyRow
from nasdm_aug.utils import InputError

if TYPE_CHECKING:
    from nasdm_aug.studies.config import StudyConfig

__all__ = ["check_store", "check_not_study_data", "ensure_store", "ensure_banks", "check_given_banks", "MASK_SOURCES",
           "StudyTestSet",
           "resolve_test_set", "TEST_STORE"]


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


def ensure_store(config: StudyConfig, out: Path, progress: bool) -> Path:
    """The real store: ``config.store``, or one prepared (once) into ``OUT/data/real.h5``."""
    if config.store:
        return Path(config.store)
    path = out / "data" / "real.h5"
    if path.is_file():
        return path
    from nasdm_aug.data.prepare import PrepareConfig, prepare

    if config.source_format != "toy" and not config.source:
        raise InputError(f"preset {config.name!r} needs the dataset folder: pass `source` DIR (or `store` STORE.h5)")
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
    from nasdm_aug.data.eval_sets import check_same_types, open_eval_store, parse_data_arg

    if not config.test:
        return None
    path, split, is_folder = parse_data_arg(config.test)
    if not is_folder:
        test, split, n = open_eval_store(path, split)
        if store is not None:
            _check_like(test, store)
        return StudyTestSet(str(path.resolve()), split, n)
    target = Path(out).joinpath(*TEST_STORE)
    check_not_study_data(path, config, store)
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
    from nasdm_aug.data.eval_sets import check_same_types
    from nasdm_aug.data.magnification import check_same_scale

    what, other = f"test store {test.path}", f"study store {store.path}"
    check_same_types(what, test.type_table, other, store.type_table)
    check_same_scale(what, test.scale_info(), other, store.scale_info())


def check_not_study_data(folder: Path, config: StudyConfig, store: PatchStore | None) -> None:
    """Testing on the folder the study trains on would score the models on their own training images."""
    mine = {Path(p).resolve() for p in (config.source, store.attrs.get("source_dir", "") if store else "") if p}
    if folder.resolve() in mine:
        raise InputError(f"`test` {folder} is the study's own dataset folder; its images are already split "
                         "into Train/R1/R2/Test (leave `test` out to test on its Test split)")


def _test_prepare_config(folder: Path, config: StudyConfig, store: PatchStore, target: Path):
    """Prepare settings for a test folder: the study store's format, scale, tiling and classes."""
    from nasdm_aug.data.eval_sets import eval_prepare_config

    like = store.config
    fmt = config.source_format if config.source_format != "toy" else store.attrs.get("source_format", "")
    if not fmt:
        raise InputError(f"study store {store.path} records no source format, so {folder} cannot be prepared "
                         "like it; prepare it with `nasdm-aug prepare` and pass `test` STORE.h5")
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
                         "delete it or use another `out`")
    wanted = want.to_dict()
    diffs = [f"{k} {have.get(k)!r}, now {v!r}" for k, v in wanted.items() if k not in _UNCOMPARED and have.get(k) != v]
    if diffs:
        raise InputError(f"{path} was prepared from {want.src} with other settings ({'; '.join(diffs)}); "
                         "delete it or use another `out`")


# -- the synthetic banks ----------------------------------------------------------------------------
def _real_masks(bank: Bank, store: PatchStore, config: StudyConfig, ratio: float) -> tuple[dict[str, Any], Any]:
    """One synthetic patch per real mask of the bank's split."""
    return {"masks": str(store.path), "split": bank.split}, None


def _balanced_masks(bank: Bank, store: PatchStore, config: StudyConfig, ratio: float) -> tuple[dict[str, Any], Any]:
    """Generated masks of the type combinations the split lacks against the study's balance target."""
    plan = plan_balance_synthesis(store, bank.split, parse_target(config.balance_target), ratio)
    return {"combinations": plan.combinations}, {"balance_plan": plan.record}


def _recombined_masks(bank: Bank, store: PatchStore, config: StudyConfig, ratio: float) -> tuple[dict[str, Any], Any]:
    """Real masks of the split with real rare-type nuclei added toward the study's balance target: as
    many as the rows may add (``ratio`` of the split), each from a different real mask."""
    from nasdm_aug.mixing.plan import count_of

    n = max(1, count_of(ratio, len(store.indices(bank.split))))
    return {"recombine": {"store": str(store.path), "split": bank.split, "target": config.balance_target, "n": n}}, None


# Bank.masks -> the SynthesizeConfig options (and bank attrs) that make such a bank for a store
MASK_SOURCES: dict[str, Callable[[Bank, PatchStore, Any, float], tuple[dict[str, Any], Any]]] = {
    "real": _real_masks, "balanced": _balanced_masks, "recombined": _recombined_masks,
}


def ensure_banks(config: StudyConfig, store: PatchStore, rows: Sequence[StudyRow], out: Path,
                 progress: bool, overwrite: bool = False) -> dict[str, PatchStore]:
    """The banks the rows draw from (``BANK_REGISTRY`` records): given in ``config.banks``, made
    before in ``OUT/banks``, or synthesized now; a bank that a ``filtered`` row needs is scored
    with ``config.segmenter`` if it holds no fidelity scores yet.

    A bank made before in ``OUT/banks`` is reused only if it is the complete bank this config
    makes (same arguments, weights and masks); otherwise it is refused in one line, or made again
    with ``overwrite``.

    Raises:
        InputError: a given bank that does not exist, a bank to make without ``model``, or a bank
            to filter that holds no scores and no ``segmenter`` to score it with.
    """
    banks: dict[str, PatchStore] = {}
    for name in dict.fromkeys(r.bank for r in rows if r.bank):
        bank = BANK_REGISTRY[name]
        given = config.banks.get(name, "")
        path = Path(given) if given else out / "banks" / f"{name}.h5"
        if given:
            if not path.is_file():
                raise InputError(f"{path}: the {name} bank ({bank.about}) does not exist")
        elif not config.model and not path.is_file():
            needing = sorted({r.study for r in rows if r.bank == name})
            raise InputError(f"{', '.join(needing)} needs the synthetic bank {name} ({bank.about}): pass `model` "
                             f"(NASDM mask and patch runs, or 'toy') or `--bank {name}=BANK.h5`")
        elif config.model:  # made here: reused only if it is what this config makes
            _make_bank(bank, config, store, rows, path, progress, overwrite)
        banks[name] = PatchStore(path)
        if any(r.filtered and r.bank == name for r in rows):
            banks[name] = _scored(banks[name], config, progress)
    return banks


def check_given_banks(config: StudyConfig, rows: Sequence[StudyRow]) -> None:
    """Refuse, before anything is written, a given bank that does not exist, or one that filtered
    rows need when it holds no complete scores and no ``segmenter`` is given to score it."""
    from nasdm_aug.mixing.fidelity_filter import read_scores

    for name in dict.fromkeys(r.bank for r in rows if r.bank):
        path = Path(config.banks[name]) if config.banks.get(name) else None
        if path is None:
            continue
        if not path.is_file():
            raise InputError(f"{path}: the {name} bank ({BANK_REGISTRY[name].about}) does not exist")
        if any(r.filtered and r.bank == name for r in rows) and not config.segmenter:
            scores = read_scores(path)
            if scores is None or np.isnan(scores).any():
                raise _unscored(path, scores)


def _unscored(path: Path, scores: np.ndarray | None) -> InputError:
    return InputError(f"{path}: filtered rows need fidelity scores and this bank holds "
                      f"{'none' if scores is None else 'only some'}; pass `segmenter` (a HoVerNet run trained on "
                      "real data) or run `nasdm-aug score` on it first")


def _make_bank(bank: Bank, config: StudyConfig, store: PatchStore, rows: Sequence[StudyRow], path: Path,
               progress: bool, overwrite: bool) -> None:
    from nasdm_aug.synthesize import SynthesizeConfig, finished_bank_problem, model_recommendations, synthesize

    ratio = max(r.ratio for r in rows if r.bank == bank.name)
    opts, attrs = MASK_SOURCES[bank.masks](bank, store, config, ratio)
    # what the study leaves unset (None) samples as the models recommend, as `nasdm-aug synthesize` does
    opts = {**model_recommendations(config.model), **opts}
    opts.update(model=config.model, seed=config.seed, batch_size=config.synth_batch_size)
    if config.sampling is not None:
        opts["sampling"] = config.sampling
    if config.guidance is not None:
        opts["guidance"] = config.guidance
    if config.guidance_interval is not None:
        opts["guidance_interval"] = config.guidance_interval
    if bank.masks == "balanced":  # generated masks: the mask model's own sampling (real and recombined sample none)
        if config.mask_guidance is not None:
            opts["mask_guidance"] = config.mask_guidance
        if config.mask_guidance_interval is not None:
            opts["mask_guidance_interval"] = config.mask_guidance_interval
        if config.mask_sampling is not None:
            opts["mask_sampling"] = config.mask_sampling
        if config.mask_tries is not None:
            opts["mask_tries"] = config.mask_tries
    synth = SynthesizeConfig(**opts)
    if path.is_file():
        problem = finished_bank_problem(path, synth, config.device)
        if problem is None:
            return
        if not overwrite:
            raise InputError(f"{path}: {problem}; rerun with `overwrite` to make it again, or use another `out`")
    synthesize(synth, path, device=config.device, preview=8, progress=progress, attrs=attrs, overwrite=overwrite)


def _scored(bank: PatchStore, config: StudyConfig, progress: bool) -> PatchStore:
    """The bank with fidelity scores: as it is if it holds them, else scored with ``config.segmenter``."""
    from nasdm_aug.scoring import read_scores, score_bank

    scores = read_scores(bank)
    if scores is not None and not np.isnan(scores).any():
        return bank
    if not config.segmenter:
        raise _unscored(bank.path, scores)
    path = bank.path
    bank.close()
    score_bank(path, config.segmenter, device=config.device, progress=progress)
    return PatchStore(path)
