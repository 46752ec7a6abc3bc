"""Fidelity scores as the mixing plans read them: the scores a bank carries (written by
:func:`nasdm_aug.scoring.score_bank`, ``nasdm-aug score``) and the filters that select patches by
them (``MixConfig(min_fidelity=..., top_fraction=...)``, ``export --min-fidelity / --top-fraction``).

A bank's scores are the HDF5 dataset ``fidelity`` (float32 per patch, NaN = not scored yet); its
attributes name the segmenter (checkpoint folder, weights and config hashes), the criterion and
the scoring version.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from nasdm_aug.data.store import PatchStore
from nasdm_aug.mixing.plan_items import count_of, describe_filter
from nasdm_aug.utils import InputError

__all__ = ["SCORES_KEY", "read_scores", "read_score_info", "check_fidelity_filter", "describe_filter",
           "select_by_fidelity", "fidelity_keep"]

SCORES_KEY = "fidelity"


def read_scores(store: PatchStore | str | os.PathLike) -> np.ndarray | None:
    """The bank's fidelity scores, float32 [N] (NaN where not scored), or None when it has none.

    Raises:
        InputError: a scores dataset whose length is not the bank's.
    """
    path = _path_of(store)
    with h5py.File(path, "r") as f:
        if SCORES_KEY not in f:
            return None
        ds = f[SCORES_KEY]
        n = f["image"].shape[0]
        if ds.shape != (n,):
            raise InputError(f"{path}: dataset {SCORES_KEY!r} has shape {ds.shape} for {n} patches; rescore the bank "
                             "with nasdm-aug score --overwrite")
        return np.asarray(ds[:], dtype=np.float32)


def read_score_info(store: PatchStore | str | os.PathLike) -> dict[str, Any] | None:
    """What made the bank's scores: ``segmenter`` (the checkpoint folder), ``segmenter_weights`` and
    ``segmenter_config`` (16-hex SHA-256 prefixes), ``criterion``, ``scoring_version``, plus
    ``n_scored`` and ``n_patches``; None when the bank has no scores."""
    path = _path_of(store)
    with h5py.File(path, "r") as f:
        if SCORES_KEY not in f:
            return None
        ds = f[SCORES_KEY]
        info = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in ds.attrs.items()}
        scores = ds[:]
    return {**info, "n_scored": int(np.count_nonzero(~np.isnan(scores))), "n_patches": int(len(scores))}


def check_fidelity_filter(min_fidelity: float | None, top_fraction: float | None) -> None:
    """Validate a filter: ``min_fidelity`` in [0, 1], ``top_fraction`` in (0, 1], not both.

    Raises:
        InputError: a value out of range, or both given.
    """
    if min_fidelity is not None and top_fraction is not None:
        raise InputError(f"give `min_fidelity` ({min_fidelity}) or `top_fraction` ({top_fraction}), not both")
    if min_fidelity is not None and not (_is_number(min_fidelity) and 0.0 <= min_fidelity <= 1.0):
        raise InputError(f"`min_fidelity` {min_fidelity!r} is outside [0, 1]")
    if top_fraction is not None and not (_is_number(top_fraction) and 0.0 < top_fraction <= 1.0):
        raise InputError(f"`top_fraction` {top_fraction!r} is outside (0, 1]")


def select_by_fidelity(scores: np.ndarray, indices: np.ndarray, *, min_fidelity: float | None = None,
                       top_fraction: float | None = None) -> np.ndarray:
    """The bank indices among ``indices`` whose score passes the filter, in the order given.

    Args:
        scores: float [N], the whole bank's scores (NaN: not scored; such a patch never passes a filter).
        indices: bank indices to filter.
        min_fidelity: keep patches scoring at least this.
        top_fraction: keep the best ``count_of(top_fraction, n_scored)`` of the bank's scored
            patches (round half up), ranked over the whole bank, not over ``indices``; equal
            scores rank by bank index, so exactly that many pass.

    Returns:
        int64 indices (``indices`` unchanged when neither filter is given).

    Raises:
        InputError: an invalid filter (see :func:`check_fidelity_filter`).
    """
    check_fidelity_filter(min_fidelity, top_fraction)
    indices = np.asarray(indices, dtype=np.int64)
    if min_fidelity is None and top_fraction is None:
        return indices
    scores = np.asarray(scores, dtype=np.float64)
    scored = ~np.isnan(scores)
    if min_fidelity is not None:
        keep = scored & (np.where(scored, scores, -np.inf) >= min_fidelity)
    else:
        k = count_of(float(top_fraction), int(scored.sum()))
        ranked = np.flatnonzero(scored)
        ranked = ranked[np.lexsort((ranked, -scores[ranked]))]  # best first, lower index first on ties
        keep = np.zeros(len(scores), bool)
        keep[ranked[:k]] = True
    return indices[keep[indices]]


def fidelity_keep(bank: PatchStore, min_fidelity: float | None, top_fraction: float | None) -> np.ndarray:
    """bool [len(bank)]: the bank patches whose fidelity score passes the filter.

    Raises:
        InputError: the bank has no scores, or some of its patches are not scored (a filter over
            part of a bank would quietly leave the rest out); the message says to run ``nasdm-aug score``.
    """
    what = describe_filter(min_fidelity, top_fraction) or "a fidelity filter"
    scores = read_scores(bank)
    if scores is None:
        raise InputError(f"{bank.path}: {what} needs fidelity scores and this bank has none; run "
                         f"nasdm-aug score {bank.path} --segmenter HOVERNET_RUN first")
    missing = int(np.isnan(scores).sum())
    if missing:
        raise InputError(f"{bank.path}: {what} needs fidelity scores and {missing} of the bank's {len(scores)} "
                         f"patches have none (an interrupted scoring?); run nasdm-aug score {bank.path} "
                         "--segmenter HOVERNET_RUN to finish it")
    keep = np.zeros(len(scores), bool)
    keep[select_by_fidelity(scores, np.arange(len(scores)), min_fidelity=min_fidelity,
                            top_fraction=top_fraction)] = True
    return keep


# -- helpers -----------------------------------------------------------------------------------------
def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _path_of(store: PatchStore | str | os.PathLike) -> Path:
    path = store.path if isinstance(store, PatchStore) else Path(store)
    if not path.is_file():
        raise InputError(f"{path}: no such bank file")
    return path
