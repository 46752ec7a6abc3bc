"""Fidelity scores of a synthetic bank: how well a segmenter trained on real data finds each patch's
own nuclei in it, stored in the bank, and the selections of patches by them.

A bank made by ``nasdm-aug synthesize`` carries in ``inst`` / ``type`` the mask each patch was drawn
from. :func:`score_bank` segments every patch with a HoVerNet run (``nasdm-aug hovernet train``,
loaded as ``evaluate`` loads its segmenter) and scores the prediction against that mask with the
project's metric code (:func:`hovernet.metrics.compute_pq`, IoU > 0.5): PQ (``criterion="pq"``) or
DQ, the detection quality (``"dq"``). A patch whose mask holds no nucleus scores 1.0 when the
segmenter finds none either, else 0.0.

The scores live in the bank as the dataset ``fidelity`` (float32 per patch, NaN = not scored yet)
with attributes naming the segmenter (path, weights and config hashes), the criterion and the
scoring version. The mixing plans (``MixConfig(min_fidelity=..., top_fraction=...)``) and
``export`` draw only patches whose score passes :func:`select_by_fidelity`. The code that reads
the scores and filters by them lives below the plans, in :mod:`nasdm_aug.mixing.fidelity_filter`,
and is re-exported here.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np
from tqdm.auto import tqdm

from nasdm_aug.data.store import PatchStore
from nasdm_aug.mixing.fidelity_filter import (SCORES_KEY, check_fidelity_filter, describe_filter, read_score_info,
                                              read_scores, select_by_fidelity)
from nasdm_aug.utils import InputError, file_digest

__all__ = ["CRITERIA", "SCORES_KEY", "SCORING_VERSION", "score_bank", "patch_score", "read_scores",
           "read_score_info", "select_by_fidelity", "check_fidelity_filter", "describe_filter"]

CRITERIA = ("pq", "dq")
#: bump when a score of the same segmenter and criterion would come out differently
SCORING_VERSION = 1
# what makes two scorings the same: the segmenter's weights and config, the criterion, the version
_IDENTITY = ("segmenter_weights", "segmenter_config", "criterion", "scoring_version")


def patch_score(mask_inst: np.ndarray, pred_inst: np.ndarray, criterion: str = "pq") -> float:
    """The fidelity score of one patch: the segmenter's nuclei against the patch's own mask.

    Args:
        mask_inst: int [H, W] instances of the mask the patch was drawn from.
        pred_inst: int [H, W] instances the segmenter found.
        criterion: ``"pq"`` (panoptic quality) or ``"dq"`` (detection quality, the F1 of the
            IoU > 0.5 matching), as :func:`hovernet.metrics.compute_pq` computes them.

    Returns:
        The score in [0, 1]. When the mask holds no nucleus, PQ is undefined there if the
        segmenter finds none either: that patch scores 1.0 (it shows what its mask asks for);
        if the segmenter finds any nucleus, every one is a false positive and the score is 0.0.
    """
    from hovernet.metrics import compute_pq

    s = compute_pq(pred_inst, mask_inst)
    if s["tp"] + s["fp"] + s["fn"] == 0:
        return 1.0
    return float(s[criterion])


def score_bank(bank: PatchStore | str | os.PathLike, segmenter: str | os.PathLike, *, criterion: str = "pq",
               device: str = "auto", batch_size: int = 32, progress: bool = True,
               overwrite: bool = False) -> np.ndarray:
    """Score every patch of a synthetic bank with a segmenter trained on real data (see the module
    docstring and :func:`patch_score`) and store the scores in the bank.

    The scores are written after every batch, so a rerun after a kill scores only the patches
    still NaN; a rerun of a finished bank with the same segmenter and criterion loads nothing.
    Everything is checked before anything is written. The bank must not be open elsewhere
    while it is scored (HDF5 refuses a writer beside a reader).

    Args:
        bank: the bank (a PatchStore with origin ``"synthetic"``) or its path.
        segmenter: a HoVerNet run folder (or one checkpoint folder) of ``nasdm-aug hovernet train``.
        criterion: ``"pq"`` or ``"dq"``.
        device: torch device of the segmenter; ``"auto"``: a GPU when there is one, else the CPU.
        batch_size: patches per forward pass and per write.
        progress: show a tqdm bar.
        overwrite: discard scores made by another segmenter, criterion or scoring version.

    Returns:
        float32 [N]: every patch's score.

    Raises:
        InputError: a missing or unreadable bank or segmenter, a store that is not a synthetic
            bank, a segmenter whose type table or magnification differs from the bank's, an unknown
            criterion, a bad device, or scores made another way (without ``overwrite``).
    """
    if criterion not in CRITERIA:
        raise InputError(f"`criterion` {criterion!r} is not one of {', '.join(CRITERIA)}")
    if int(batch_size) < 1:
        raise InputError(f"`batch_size` {batch_size!r} must be >= 1")
    path, n, ckpt, identity = _check_bank(bank, segmenter, criterion)
    old = read_score_info(path)
    fresh = old is None or overwrite
    if not fresh and any(old.get(k) != identity[k] for k in _IDENTITY):
        raise InputError(f"{path}: holds {_made_by(old)}; scoring with {_made_by(identity)} needs `overwrite` "
                         "(the old scores are discarded)")
    from nasdm_aug.training.distributed import pick_device

    dev = str(pick_device(device))
    scores = np.full(n, np.nan, np.float32) if fresh else read_scores(path)
    todo = np.flatnonzero(np.isnan(scores))
    if len(todo) == 0 and not fresh:
        return scores
    segment = _load_segment(ckpt, dev)
    _open_scores(path, n, identity, fresh)  # nothing is written before the segmenter loads
    _score_patches(path, todo, segment, scores, criterion, int(batch_size), progress)
    return scores


# -- helpers -----------------------------------------------------------------------------------------
def _check_bank(bank: PatchStore | str | os.PathLike, segmenter: str | os.PathLike,
                criterion: str) -> tuple[Path, int, Path, dict[str, Any]]:
    """(path, patches, segmenter checkpoint folder, scoring attributes) of a synthetic bank that
    ``segmenter`` fits; a given PatchStore is closed, as an open reader blocks the writes."""
    if isinstance(bank, PatchStore):
        bank.close()  # its handle reopens on its next read; an open reader blocks our writes
    path = bank.path if isinstance(bank, PatchStore) else Path(bank)
    with PatchStore(path) as st:  # a missing or foreign file fails here, naming it
        if st.origin != "synthetic":
            raise InputError(f"{path}: origin is {st.origin!r}, not a synthetic bank; `nasdm-aug score` scores the "
                             "patches of a bank made by nasdm-aug synthesize against their own masks")
        ckpt, identity = _check_segmenter(segmenter, st, criterion)
        return path, len(st), ckpt, identity


def _open_scores(path: Path, n: int, identity: dict[str, Any], fresh: bool) -> None:
    """Check that the bank opens for writing; when ``fresh``, replace its scores with ``n`` NaN (not
    scored yet) carrying the scoring's attributes."""
    with _writable(path) as f:
        if fresh:
            if SCORES_KEY in f:
                del f[SCORES_KEY]
            # contiguous and allocated whole now: the writes per batch then change its values only,
            # not the file's structure, which keeps what a kill in the middle of one can reach small
            ds = f.create_dataset(SCORES_KEY, data=np.full(n, np.nan, np.float32))
            for k, v in identity.items():
                ds.attrs[k] = v


def _score_patches(path: Path, todo: np.ndarray, segment, scores: np.ndarray, criterion: str, batch_size: int,
                   progress: bool) -> None:
    """Score the patches ``todo`` into ``scores`` and the bank, one batch at a time."""
    n = len(scores)
    with PatchStore(path) as st, tqdm(total=n, initial=n - len(todo), desc="score", unit="patch",
                                      disable=not progress) as bar:
        for s in range(0, len(todo), batch_size):
            idx = todo[s:s + batch_size]
            data = st.read(idx, ("image", "inst"))
            st.close()  # HDF5 opens no writer beside a reader in one process
            pred_inst, _ = segment(data["image"])
            scores[idx] = [patch_score(m, p, criterion) for m, p in zip(data["inst"], pred_inst)]
            with _writable(path) as f:
                f[SCORES_KEY][idx] = scores[idx]
            bar.update(len(idx))


def _check_segmenter(segmenter: str | os.PathLike, bank: PatchStore, criterion: str) -> tuple[Path, dict[str, Any]]:
    """The checkpoint folder of ``segmenter`` and the attributes of a scoring with it, after checking
    that it fits ``bank``."""
    import json

    from hovernet.evaluate import resolve_model_dir
    from nasdm_aug.data.eval_sets import check_same_types
    from nasdm_aug.data.magnification import check_same_scale
    from nasdm_aug.types import NucleiTypeTable

    if not Path(segmenter).is_dir():
        raise InputError(f"`segmenter` {segmenter}: no such HoVerNet run folder (one made by nasdm-aug hovernet train)")
    ckpt = resolve_model_dir(segmenter)
    weights, config = ckpt / "model.safetensors", ckpt / "config.json"
    for f in (weights, config):
        if not f.is_file():
            raise InputError(f"`segmenter` {segmenter}: {f} is missing")
    try:
        info = json.loads((ckpt / "data.json").read_text()) if (ckpt / "data.json").is_file() else {}
    except ValueError as exc:
        raise InputError(f"`segmenter` {segmenter}: {ckpt / 'data.json'} is not JSON ({exc})") from None
    what, other = f"segmenter {segmenter}", f"bank {bank.path}"
    if info.get("type_table"):
        check_same_types(what, NucleiTypeTable.from_json(info["type_table"]), other, bank.type_table)
    else:  # a run that recorded no table: at least the number of types must agree
        from hovernet.config import HoVerNetConfig

        n_types = HoVerNetConfig.load(config).model.n_types
        if n_types != bank.type_table.n_types:
            raise InputError(f"{what} predicts {n_types} types but {other} has {bank.type_table.n_types} "
                             f"({bank.type_table.name!r})")
    check_same_scale(what, {"magnification": info.get("magnification")}, other, {"magnification": bank.magnification})
    identity = {"segmenter": str(ckpt.resolve()), "segmenter_weights": file_digest(weights),
                "segmenter_config": file_digest(config), "criterion": criterion, "scoring_version": SCORING_VERSION}
    return ckpt, identity


def _made_by(info: dict[str, Any]) -> str:
    return (f"{info.get('criterion') or '?'} scores by segmenter {info.get('segmenter', '?')} (weights "
            f"{info.get('segmenter_weights', '?')}, config {info.get('segmenter_config', '?')}, scoring version "
            f"{info.get('scoring_version', '?')})")


def _load_segment(ckpt: Path, device: str):
    from nasdm_aug.metrics.evaluate import load_segmenter

    return load_segmenter(ckpt, device)[0]


@contextlib.contextmanager
def _writable(path: Path) -> Iterator[h5py.File]:
    try:
        f = h5py.File(path, "r+")
    except OSError as exc:
        raise InputError(f"{path}: cannot open the bank for writing ({exc}); close whatever else has it open "
                         "(a PatchStore, a DataLoader, another nasdm-aug score) and rerun") from None
    try:
        yield f
    finally:
        f.close()
