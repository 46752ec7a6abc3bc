"""Mask fidelity: the four expert criteria of NASDM (Shrivastava & Fletcher, 2023, Sec. 4.5) made automatic by
segmenting a patch and comparing with the mask it was made from (boundaries, types, missing, excess).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from skimage.segmentation import find_boundaries

from hovernet.metrics import instance_types, match_instances

__all__ = ["boundary_f1", "detected_nuclei", "hovernet_detection_radius", "patch_fidelity", "FidelityAccumulator",
           "compare_fidelity"]

_COUNT_KEYS = ("n_mask", "n_pred", "matched", "type_correct", "missing", "excess", "detected")
_TOTAL_KEYS = ("n_patches", "n_mask", "n_pred", "n_matched")  # sizes, not criteria: never compared

#: hover_net's detection pairing radius (``compute_stats.py``: centroids within 12 px) at CoNSeP's 40x.
HOVERNET_DETECTION_RADIUS_40X = 12.0


def boundary_f1(mask_a: np.ndarray, mask_b: np.ndarray, tolerance: int = 2) -> float:
    """Boundary F1 of two binary masks: boundary pixels within ``tolerance`` px count as agreeing.

    As the BF score of Csurka et al. (2013): precision = share of ``mask_b``'s boundary within
    ``tolerance`` of ``mask_a``'s, recall the converse.

    Args:
        mask_a: reference binary mask [H, W]; mask_b: compared binary mask [H, W].
        tolerance: distance in pixels.

    Returns:
        F1 in [0, 1]; 1 when both are empty, 0 when exactly one is.
    """
    a, b = np.asarray(mask_a) > 0, np.asarray(mask_b) > 0
    if not a.any() and not b.any():
        return 1.0
    if not a.any() or not b.any():
        return 0.0
    # crop to the union's bounding box (+ margin) so the distance transforms stay small
    ys, xs = np.nonzero(a | b)
    m = tolerance + 2
    sl = (slice(max(ys.min() - m, 0), ys.max() + m + 1), slice(max(xs.min() - m, 0), xs.max() + m + 1))
    ba, bb = find_boundaries(a[sl], mode="inner"), find_boundaries(b[sl], mode="inner")
    dist_a, dist_b = ndimage.distance_transform_edt(~ba), ndimage.distance_transform_edt(~bb)
    precision = float((dist_a[bb] <= tolerance).mean())
    recall = float((dist_b[ba] <= tolerance).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def hovernet_detection_radius(magnification: float | None) -> float:
    """hover_net's 12-px centroid radius at 40x, scaled to ``magnification`` (6 px at 20x); 12 when
    the magnification is unknown."""
    if not magnification:
        return HOVERNET_DETECTION_RADIUS_40X
    return HOVERNET_DETECTION_RADIUS_40X * float(magnification) / 40.0


def _centroids(inst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.unique(inst)
    ids = ids[ids > 0]
    if not len(ids):
        return ids, np.zeros((0, 2))
    return ids, np.asarray(ndimage.center_of_mass(np.ones_like(inst), inst, ids), np.float64).reshape(-1, 2)


def detected_nuclei(mask_inst: np.ndarray, pred_inst: np.ndarray, radius: float) -> np.ndarray:
    """Ids of the mask's nuclei that a segmented nucleus detects, by hover_net's pairing.

    As hover_net's ``compute_stats.pair_coordinates``: one-to-one pairs of centroids that minimise the
    total Euclidean distance (Hungarian), kept where the distance is at most ``radius``. This asks
    whether a nucleus was found near its place, where IoU > 0.5 also asks for its outline, which at
    20x (nuclei 6-10 px across) a one-pixel shift can fail.

    Returns:
        int array of the detected ids of ``mask_inst``.
    """
    gt_ids, gt_c = _centroids(np.asarray(mask_inst))
    _, pr_c = _centroids(np.asarray(pred_inst))
    if not len(gt_ids) or not len(pr_c):
        return gt_ids[:0]
    dist = cdist(gt_c, pr_c)
    rows, cols = linear_sum_assignment(dist)
    return gt_ids[rows[dist[rows, cols] <= radius]]


def patch_fidelity(mask_inst: np.ndarray, mask_type: np.ndarray, pred_inst: np.ndarray, pred_type: np.ndarray,
                   n_types: int, iou_threshold: float = 0.5, tolerance: int = 2,
                   detect_radius: float = HOVERNET_DETECTION_RADIUS_40X) -> dict[str, np.ndarray | float]:
    """Compare the nuclei a segmenter found in a patch with the mask the patch should show.

    Args:
        mask_inst: int [H, W] instances of the conditioning (or annotated) mask.
        mask_type: uint8 [H, W] its type map (ids 1..n_types).
        pred_inst: int [H, W] instances the segmenter found.
        pred_type: uint8 [H, W] their types.
        n_types: number of nuclei types.
        iou_threshold: a pair matches when IoU > threshold.
        tolerance: boundary tolerance in pixels.
        detect_radius: centroid distance in pixels within which a segmented nucleus detects a mask
            nucleus (:func:`detected_nuclei`; :func:`hovernet_detection_radius` gives hover_net's).

    Returns:
        dict of int arrays [n_types] (index k is type k + 1): ``n_mask`` and ``n_pred`` nuclei
        per type, ``matched`` mask nuclei found (IoU > threshold), ``type_correct`` of those with
        the right type, ``missing`` mask nuclei not found, ``excess`` found nuclei (by predicted
        type) not in the mask, ``detected`` mask nuclei with a segmented centroid within
        ``detect_radius``; floats ``dice_sum`` and ``bf1_sum`` over matched pairs, ``n_matched``, and
        ``score`` = detection F1 x mean Dice of matched nuclei (1 when both are empty).
    """
    m = match_instances(pred_inst, mask_inst, iou_threshold)
    mask_t, pred_t = instance_types(mask_inst, mask_type), instance_types(pred_inst, pred_type)
    out = {k: np.zeros(n_types, np.int64) for k in _COUNT_KEYS}
    for t in mask_t.values():
        out["n_mask"][t - 1] += t > 0
    for t in pred_t.values():
        out["n_pred"][t - 1] += t > 0
    for g in m["unmatched_gt"]:
        if mask_t[int(g)] > 0:
            out["missing"][mask_t[int(g)] - 1] += 1
    for p in m["unmatched_pred"]:
        if pred_t[int(p)] > 0:
            out["excess"][pred_t[int(p)] - 1] += 1
    for g in detected_nuclei(mask_inst, pred_inst, detect_radius):
        if mask_t[int(g)] > 0:
            out["detected"][mask_t[int(g)] - 1] += 1
    dice_sum = bf1_sum = 0.0
    for g, p, iou in zip(m["gt_ids"], m["pred_ids"], m["iou"]):
        tg = mask_t[int(g)]
        if tg > 0:
            out["matched"][tg - 1] += 1
            out["type_correct"][tg - 1] += pred_t[int(p)] == tg
        dice_sum += 2 * iou / (1 + iou)
        bf1_sum += boundary_f1(mask_inst == g, pred_inst == p, tolerance)
    n_match, n_gt, n_pr = len(m["gt_ids"]), len(mask_t), len(pred_t)
    if n_gt + n_pr == 0:
        score = 1.0
    else:
        f1 = 2 * n_match / (n_gt + n_pr)
        score = f1 * (dice_sum / n_match if n_match else 0.0)
    return {**out, "dice_sum": dice_sum, "bf1_sum": bf1_sum, "n_matched": float(n_match), "score": float(score)}


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


class FidelityAccumulator:
    """Pool :func:`patch_fidelity` over patches into the four criteria.

    Args:
        type_names: names of types 1..n_types.
        iou_threshold: matching threshold; tolerance: boundary tolerance in pixels.
        detect_radius: centroid radius of the detection rate (default hover_net's at 40x; pass
            :func:`hovernet_detection_radius` of the patches' magnification).
    """

    def __init__(self, type_names: Sequence[str], iou_threshold: float = 0.5, tolerance: int = 2,
                 detect_radius: float = HOVERNET_DETECTION_RADIUS_40X) -> None:
        self.type_names = list(type_names)
        self.iou_threshold, self.tolerance, self.detect_radius = iou_threshold, tolerance, float(detect_radius)
        self.totals = {k: np.zeros(len(self.type_names), np.int64) for k in _COUNT_KEYS}
        self.dice_sum = self.bf1_sum = self.n_matched = 0.0
        self.scores: list[float] = []

    def add(self, mask_inst: np.ndarray, mask_type: np.ndarray, pred_inst: np.ndarray,
            pred_type: np.ndarray) -> float:
        """Add one patch ([H, W] maps, as :func:`patch_fidelity`); returns its score."""
        r = patch_fidelity(mask_inst, mask_type, pred_inst, pred_type, len(self.type_names),
                           self.iou_threshold, self.tolerance, self.detect_radius)
        for k in _COUNT_KEYS:
            self.totals[k] += r[k]
        self.dice_sum += r["dice_sum"]
        self.bf1_sum += r["bf1_sum"]
        self.n_matched += r["n_matched"]
        self.scores.append(r["score"])
        return r["score"]

    def aggregate(self) -> dict[str, float]:
        """The criteria as a flat dict (``nan`` where a denominator is 0).

        Keys: ``dice``, ``boundary_f1`` (means over matched nuclei), ``type_accuracy`` and
        ``type_accuracy/<name>`` (correct / matched), ``missing_rate`` and
        ``missing_rate/<name>`` (missing / mask nuclei), ``excess_rate`` and
        ``excess_rate/<name>`` (excess / found nuclei), ``detection_rate`` and
        ``detection_rate/<name>`` (mask nuclei detected by centroid / mask nuclei: hover_net's
        notion of a nucleus found), ``score`` (mean per-patch score), plus the
        counts ``n_patches``, ``n_mask``, ``n_pred``, ``n_matched``.
        """
        t = self.totals
        out = {"dice": _ratio(self.dice_sum, self.n_matched), "boundary_f1": _ratio(self.bf1_sum, self.n_matched),
               "type_accuracy": _ratio(t["type_correct"].sum(), t["matched"].sum()),
               "missing_rate": _ratio(t["missing"].sum(), t["n_mask"].sum()),
               "excess_rate": _ratio(t["excess"].sum(), t["n_pred"].sum()),
               "detection_rate": _ratio(t["detected"].sum(), t["n_mask"].sum()),
               "score": float(np.mean(self.scores)) if self.scores else math.nan}
        for k, name in enumerate(self.type_names):
            out[f"type_accuracy/{name}"] = _ratio(t["type_correct"][k], t["matched"][k])
            out[f"missing_rate/{name}"] = _ratio(t["missing"][k], t["n_mask"][k])
            out[f"excess_rate/{name}"] = _ratio(t["excess"][k], t["n_pred"][k])
            out[f"detection_rate/{name}"] = _ratio(t["detected"][k], t["n_mask"][k])
        out.update(n_patches=len(self.scores), n_mask=int(t["n_mask"].sum()), n_pred=int(t["n_pred"].sum()),
                   n_matched=int(self.n_matched))
        return {k: float(v) for k, v in out.items()}


def compare_fidelity(synthetic: dict[str, float], real: dict[str, float]) -> dict[str, dict[str, float]]:
    """Each criterion for synthetic and real patches and their ratio (synthetic / real).

    A ratio of 1 means synthetic patches show their masks as faithfully as real patches show
    their annotations; equal values (0 and 0 included) give 1, and ``nan`` stands where the
    real value is 0 or undefined otherwise.

    Returns:
        {metric: {"synthetic", "real", "ratio"}} for every criterion the two dicts share (the
        counts ``n_patches``, ``n_mask``, ``n_pred``, ``n_matched`` are left out).
    """
    out = {}
    for key in synthetic:
        if key in real and key not in _TOTAL_KEYS:
            s, r = synthetic[key], real[key]
            out[key] = {"synthetic": s, "real": r, "ratio": _compare(s, r)}
    return out


def _compare(s: float, r: float) -> float:
    if s == r:
        return 1.0
    return s / r if r and not math.isnan(r) else math.nan
