"""Segmentation metrics of HoVerNet (Graham et al., 2019) and CoNIC (Graham et al., 2021):
Dice, mean IoU, PQ/DQ/SQ, AJI, per-type PQ, mPQ+ and per-type detection F1.

Pure functions take one patch (numpy ``[H, W]`` maps); :class:`HoVerNetMetrics` accumulates a dataset.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from monai.metrics import compute_dice as monai_dice
from monai.metrics import compute_iou as monai_iou
from monai.metrics.utils import do_metric_reduction
from scipy.optimize import linear_sum_assignment

__all__ = [
    "pairwise_iou",
    "match_instances",
    "compute_pq",
    "compute_aji",
    "compute_dice",
    "compute_iou",
    "instance_types",
    "instance_type_votes",
    "compute_type_stats",
    "pq_from_stats",
    "HoVerNetMetrics",
]


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
    if pred.ndim != 2:
        raise ValueError(f"expected [H, W] instance maps, got shape {pred.shape}")
    return pred, gt


def pairwise_iou(pred_inst: np.ndarray, gt_inst: np.ndarray) -> dict[str, np.ndarray]:
    """Intersections and IoUs of every (gt, pred) instance pair in one pass of ``bincount``.

    Args:
        pred_inst: predicted instance map [H, W], 0 background.
        gt_inst: ground-truth instance map [H, W], 0 background.

    Returns:
        dict with ``gt_ids`` [G], ``pred_ids`` [P] (the nonzero ids, ascending), ``inter`` [G, P]
        pixel intersections, ``iou`` [G, P], ``gt_area`` [G] and ``pred_area`` [P].
    """
    pred, gt = _check_pair(pred_inst, gt_inst)
    gt_ids, gt_idx = np.unique(gt, return_inverse=True)
    pred_ids, pred_idx = np.unique(pred, return_inverse=True)
    # make sure index 0 is background even when a map has no background pixel
    if gt_ids[0] != 0:
        gt_ids, gt_idx = np.concatenate([[0], gt_ids]), gt_idx + 1
    if pred_ids[0] != 0:
        pred_ids, pred_idx = np.concatenate([[0], pred_ids]), pred_idx + 1
    n_g, n_p = len(gt_ids), len(pred_ids)
    joint = np.bincount(gt_idx.ravel() * n_p + pred_idx.ravel(), minlength=n_g * n_p).reshape(n_g, n_p)
    gt_area, pred_area = joint.sum(1)[1:], joint.sum(0)[1:]
    inter = joint[1:, 1:]
    union = gt_area[:, None] + pred_area[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return {"gt_ids": gt_ids[1:], "pred_ids": pred_ids[1:], "inter": inter, "iou": iou,
            "gt_area": gt_area, "pred_area": pred_area}


def _match(iou: np.ndarray, iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Row/column indices of matched pairs: unique by construction above 0.5, Hungarian below."""
    if iou.size == 0:
        return np.zeros(0, int), np.zeros(0, int)
    if iou_threshold >= 0.5:
        # IoU > 0.5 pairs are unique (two such preds cannot share one gt), as Kirillov et al. (2019).
        rows, cols = np.nonzero(iou > iou_threshold)
        return rows, cols
    rows, cols = linear_sum_assignment(-iou)
    keep = iou[rows, cols] > iou_threshold
    return rows[keep], cols[keep]


def match_instances(pred_inst: np.ndarray, gt_inst: np.ndarray, iou_threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Unique (gt, pred) instance pairs with IoU above ``iou_threshold``.

    Returns:
        dict with ``gt_ids`` [M], ``pred_ids`` [M], ``iou`` [M] of matched pairs, and
        ``unmatched_gt`` / ``unmatched_pred`` id arrays.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    pw = pairwise_iou(pred_inst, gt_inst)
    rows, cols = _match(pw["iou"], iou_threshold)
    return {"gt_ids": pw["gt_ids"][rows], "pred_ids": pw["pred_ids"][cols], "iou": pw["iou"][rows, cols],
            "unmatched_gt": np.setdiff1d(pw["gt_ids"], pw["gt_ids"][rows]),
            "unmatched_pred": np.setdiff1d(pw["pred_ids"], pw["pred_ids"][cols])}


def pq_from_stats(tp: float, fp: float, fn: float, iou_sum: float) -> dict[str, float]:
    """PQ = DQ x SQ from matched counts (Kirillov et al., 2019, Eq. 1).

    Returns ``nan`` for all three when there is nothing to count (no gt and no pred), and SQ = 0
    when nothing matched (as HoVerNet's ``get_fast_pq``).
    """
    if tp + fp + fn == 0:
        return {"pq": math.nan, "dq": math.nan, "sq": math.nan}
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = iou_sum / tp if tp else 0.0
    return {"pq": dq * sq, "dq": dq, "sq": sq}


def compute_pq(pred_inst: np.ndarray, gt_inst: np.ndarray, iou_threshold: float = 0.5) -> dict[str, float]:
    """Panoptic quality of one instance map against another.

    Args:
        pred_inst: predicted instance map [H, W] (any integer ids, 0 background).
        gt_inst: ground-truth instance map [H, W].
        iou_threshold: a pair matches when IoU > threshold (0.5 as the papers).

    Returns:
        dict with ``pq``, ``dq``, ``sq`` (``nan`` when both maps are empty), and the counts
        ``tp``, ``fp``, ``fn`` and ``iou_sum`` (the sum of matched IoUs) that pool over a dataset.
    """
    m = match_instances(pred_inst, gt_inst, iou_threshold)
    tp, fp, fn = len(m["gt_ids"]), len(m["unmatched_pred"]), len(m["unmatched_gt"])
    iou_sum = float(m["iou"].sum())
    return {**pq_from_stats(tp, fp, fn, iou_sum), "tp": tp, "fp": fp, "fn": fn, "iou_sum": iou_sum}


def compute_aji(pred_inst: np.ndarray, gt_inst: np.ndarray, plus: bool = False) -> float:
    """Aggregated Jaccard Index (Kumar et al., 2017); ``plus=True`` gives AJI+ (Graham et al., 2019).

    AJI pairs each gt instance with the prediction of highest IoU (a prediction may be reused);
    AJI+ pairs them one-to-one by maximum-IoU assignment. Unpaired predictions join the union.

    Returns:
        the index in [0, 1], or ``nan`` when both maps are empty.
    """
    pw = pairwise_iou(pred_inst, gt_inst)
    inter, iou = pw["inter"], pw["iou"]
    n_g, n_p = inter.shape
    if n_g == 0 and n_p == 0:
        return math.nan
    if n_g == 0 or n_p == 0:
        return 0.0
    union = pw["gt_area"][:, None] + pw["pred_area"][None, :] - inter
    if plus:
        rows, cols = linear_sum_assignment(-iou)
        keep = iou[rows, cols] > 0
        rows, cols = rows[keep], cols[keep]
    else:
        rows = np.nonzero(iou.max(1) > 0)[0]
        cols = iou[rows].argmax(1)
    total_inter = inter[rows, cols].sum()
    total_union = union[rows, cols].sum()
    total_union += pw["gt_area"][np.setdiff1d(np.arange(n_g), rows)].sum()
    total_union += pw["pred_area"][np.setdiff1d(np.arange(n_p), cols)].sum()
    return float(total_inter / total_union)


def compute_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two binary masks [H, W]; ``nan`` when both are empty."""
    pred, gt = (np.asarray(a) > 0 for a in _check_pair(pred, gt))
    denom = pred.sum() + gt.sum()
    return float(2 * (pred & gt).sum() / denom) if denom else math.nan


def compute_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU (Jaccard) of two binary masks [H, W]; ``nan`` when both are empty."""
    pred, gt = (np.asarray(a) > 0 for a in _check_pair(pred, gt))
    union = (pred | gt).sum()
    return float((pred & gt).sum() / union) if union else math.nan


def instance_type_votes(inst: np.ndarray, type_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Type of every instance by majority vote of ``type_map`` over its pixels, as arrays.

    Background votes never win when a nucleus has any typed pixel; ties go to the lower type id.

    Returns:
        (ids, types): int64 [K] each, for every nonzero id of ``inst`` in increasing order.
    """
    inst, type_map = _check_pair(inst, type_map)
    n_t = int(type_map.max()) + 1 if type_map.size else 1
    flat, types = inst.ravel(), type_map.ravel().astype(np.int64)
    if flat.size and flat.min() >= 0 and flat.max() <= 4 * flat.size:
        # small non-negative ids (every map post-processing makes): count by id, no sort
        n_id = int(flat.max()) + 1
        votes = np.bincount(flat.astype(np.int64) * n_t + types, minlength=n_id * n_t).reshape(n_id, n_t)
        ids = np.nonzero(votes.sum(1))[0]
        votes = votes[ids]
    else:
        ids, idx = np.unique(flat, return_inverse=True)
        votes = np.bincount(idx.ravel() * n_t + types, minlength=len(ids) * n_t).reshape(len(ids), n_t)
    votes[:, 0] = 0
    keep = ids != 0
    return ids[keep].astype(np.int64), votes.argmax(1)[keep].astype(np.int64)


def instance_types(inst: np.ndarray, type_map: np.ndarray) -> dict[int, int]:
    """Type of every instance by majority vote of ``type_map`` over its pixels.

    Returns:
        {instance id: type id} for every nonzero id of ``inst`` (see :func:`instance_type_votes`).
    """
    ids, types = instance_type_votes(inst, type_map)
    return dict(zip(ids.tolist(), types.tolist()))


def compute_type_stats(pred_inst: np.ndarray, pred_type: np.ndarray, gt_inst: np.ndarray,
                       gt_type: np.ndarray, n_types: int, iou_threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Per-type counts that pool over a dataset into mPQ+ and the HoVerNet classification F1.

    mPQ+ (CoNIC): for each type, instances of that type are matched on their own, and
    ``tp``, ``fp``, ``fn``, ``iou_sum`` are summed over all patches before PQ is taken.
    Classification F1 (HoVerNet, Eq. 6) uses the type-agnostic pairs instead, keeping for type t
    only the pairs in which gt or prediction is t (as hover_net's ``compute_stats._f1_type``): among
    them it counts ``tp_c`` (both t), ``fp_c`` (pred t, gt not), ``fn_c`` (gt t, pred not), plus the
    unpaired ``fp_d`` / ``fn_d`` of the type. A pair in which neither side is t never enters type t's
    counts, so hover_net's "true negative" term is always 0 and is not kept.
    (HoVerNet pairs by centroid distance; we use the same IoU > 0.5 pairs as PQ.)

    Returns:
        dict of int arrays [n_types] (index k is type k + 1): ``tp``, ``fp``, ``fn``, ``iou_sum``
        (float), ``tp_c``, ``fp_c``, ``fn_c``, ``fp_d``, ``fn_d``.
    """
    p_types, g_types = instance_types(pred_inst, pred_type), instance_types(gt_inst, gt_type)
    out = {k: np.zeros(n_types, np.float64 if k == "iou_sum" else np.int64)
           for k in ("tp", "fp", "fn", "iou_sum", "tp_c", "fp_c", "fn_c", "fp_d", "fn_d")}
    for t in range(1, n_types + 1):
        p_keep = [i for i, v in p_types.items() if v == t]
        g_keep = [i for i, v in g_types.items() if v == t]
        s = compute_pq(np.where(np.isin(pred_inst, p_keep), pred_inst, 0),
                       np.where(np.isin(gt_inst, g_keep), gt_inst, 0), iou_threshold)
        for k in ("tp", "fp", "fn", "iou_sum"):
            out[k][t - 1] = s[k]
    m = match_instances(pred_inst, gt_inst, iou_threshold)
    pt = np.array([p_types[int(i)] for i in m["pred_ids"]], dtype=np.int64)
    gtt = np.array([g_types[int(i)] for i in m["gt_ids"]], dtype=np.int64)
    up = np.array([p_types[int(i)] for i in m["unmatched_pred"]], dtype=np.int64)
    ug = np.array([g_types[int(i)] for i in m["unmatched_gt"]], dtype=np.int64)
    for t in range(1, n_types + 1):
        out["tp_c"][t - 1] = np.sum((pt == t) & (gtt == t))
        out["fp_c"][t - 1] = np.sum((pt == t) & (gtt != t))
        out["fn_c"][t - 1] = np.sum((pt != t) & (gtt == t))
        out["fp_d"][t - 1] = np.sum(up == t)
        out["fn_d"][t - 1] = np.sum(ug == t)
    return out


def _f1_type(s: dict[str, np.ndarray], k: int) -> float:
    """HoVerNet's F_c^t with weights (2, 2, 1, 1) as in its ``compute_stats.py``:
    2 tp_c / (2 tp_c + 2 fp_c + 2 fn_c + fp_d + fn_d) (its tn term is 0 over the kept pairs)."""
    good = 2 * s["tp_c"][k]
    denom = good + 2 * s["fp_c"][k] + 2 * s["fn_c"][k] + s["fp_d"][k] + s["fn_d"][k]
    return float(good / denom) if denom else math.nan


_PIXEL_KEYS = ("dice", "miou", "dice_with_bg", "miou_with_bg", "dice_types", "miou_types")


def _monai_mean(values: torch.Tensor) -> float:
    """MONAI's ``reduction="mean"`` of [N, C] per-patch values: channels first, then patches.

    ``nan`` (not MONAI's 0) when no value is defined, so an empty set reads as undefined.
    """
    if not torch.any(~torch.isnan(values)):
        return math.nan
    reduced, _ = do_metric_reduction(values.clone().float(), "mean")
    return float(reduced)


def _nanmean(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


class HoVerNetMetrics:
    """Accumulates the paper's metrics over a dataset of patches.

    Pixel metrics are MONAI's ``compute_dice`` / ``compute_iou`` per patch and channel, reduced as
    MONAI's ``reduction="mean"`` (``do_metric_reduction``): first the mean over the channels of a
    patch, then the mean over patches; a channel whose gt is empty is skipped (``ignore_empty``),
    and so is a patch with no channel left. Two readings of the binary nuclei Dice are reported:

    - ``dice`` / ``miou``: the nuclei channel alone (instance map > 0), hover_net's Dice1 per patch;
    - ``dice_with_bg`` / ``miou_with_bg``: MONAI's ``DiceMetric`` / ``MeanIoU`` with
      ``include_background=True`` over the two channels [background, nuclei], the only binary
      setting in which the paper's "first by channel and then by batch" averaging changes anything.

    ``dice_types`` / ``miou_types`` are the same reduction over the one-hot type map without
    background. ``pq``, ``dq``, ``sq``, ``aji``, ``aji_plus`` are per-patch means (HoVerNet's
    convention); ``pq_plus`` pools counts over the dataset; ``mpq_plus`` is CoNIC's (the mean of
    the pooled per-type PQ over all types, an absent type counting 0) and ``mpq_plus_present`` the
    mean over the types present in gt or prediction only.

    Args:
        n_types: number of nuclei types (background excluded).
        type_names: optional names for the per-type entries (default ``type_1`` ...).
    """

    def __init__(self, n_types: int, type_names: Sequence[str] | None = None) -> None:
        if n_types < 1:
            raise ValueError(f"n_types must be >= 1, got {n_types}")
        self.n_types = n_types
        self.type_names = list(type_names) if type_names else [f"type_{k}" for k in range(1, n_types + 1)]
        if len(self.type_names) != n_types:
            raise ValueError(f"{len(self.type_names)} type names for {n_types} types")
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated."""
        # per-patch, per-channel values of MONAI's compute_dice / compute_iou (nan: empty gt channel).
        # MONAI's DiceMetric/MeanIoU objects are not used: their aggregate() all-gathers over
        # ranks, which deadlocks when only rank 0 validates under torchrun.
        self._pixel: dict[str, list[torch.Tensor]] = {k: [] for k in _PIXEL_KEYS}
        self._per_patch: dict[str, list[float]] = {"pq": [], "dq": [], "sq": [], "aji": [], "aji_plus": []}
        self._counts = np.zeros(4)  # tp, fp, fn, iou_sum of the type-agnostic matching
        self._types: dict[str, np.ndarray] | None = None

    def update(self, pred_inst: np.ndarray, pred_type: np.ndarray, gt_inst: np.ndarray, gt_type: np.ndarray) -> None:
        """Add one patch or a batch: maps [H, W] or [N, H, W] (numpy or torch, integer ids)."""
        maps = [np.asarray(torch.as_tensor(a).cpu()) for a in (pred_inst, pred_type, gt_inst, gt_type)]
        if maps[0].ndim == 2:
            maps = [a[None] for a in maps]
        shapes = {a.shape for a in maps}
        if len(shapes) != 1 or maps[0].ndim != 3:
            raise ValueError(f"expected four maps of one shape [N, H, W], got {[a.shape for a in maps]}")
        for pi, pt, gi, gtt in zip(*maps):
            self._update_one(pi, pt, gi, gtt)

    def _update_one(self, pi: np.ndarray, pt: np.ndarray, gi: np.ndarray, gtt: np.ndarray) -> None:
        onehot = lambda a, c: torch.nn.functional.one_hot(torch.as_tensor(a, dtype=torch.long), c).permute(2, 0, 1)[None]  # noqa: E731
        bin_p, bin_g = onehot(pi > 0, 2), onehot(gi > 0, 2)
        c = self.n_types + 1
        types_p = onehot(np.where(pi > 0, pt, 0).clip(0, c - 1), c)
        types_g = onehot(np.where(gi > 0, gtt, 0).clip(0, c - 1), c)
        # rows [1, C]: the reduction over channels happens in aggregate()
        for key, (p_, g_, bg) in {"dice": (bin_p, bin_g, False), "dice_with_bg": (bin_p, bin_g, True),
                                  "dice_types": (types_p, types_g, False)}.items():
            self._pixel[key].append(monai_dice(p_, g_, include_background=bg, ignore_empty=True))
            self._pixel[key.replace("dice", "miou")].append(
                monai_iou(p_, g_, include_background=bg, ignore_empty=True))
        s = compute_pq(pi, gi)
        for k in ("pq", "dq", "sq"):
            self._per_patch[k].append(s[k])
        self._per_patch["aji"].append(compute_aji(pi, gi))
        self._per_patch["aji_plus"].append(compute_aji(pi, gi, plus=True))
        self._counts += [s["tp"], s["fp"], s["fn"], s["iou_sum"]]
        ts = compute_type_stats(pi, pt, gi, gtt, self.n_types)
        self._types = ts if self._types is None else {k: self._types[k] + v for k, v in ts.items()}

    def aggregate(self) -> dict[str, Any]:
        """Return the dataset metrics.

        Returns:
            dict with ``n_patches``, ``dice``, ``miou``, ``dice_with_bg``, ``miou_with_bg``,
            ``dice_types``, ``miou_types``, ``pq``, ``dq``, ``sq``, ``aji``, ``aji_plus``,
            ``pq_plus``, ``mpq_plus``, ``mpq_plus_present``, ``f1_detection`` and ``per_type``
            ({name: {pq, dq, sq, f1, n_gt}}); ``nan`` where undefined.
        """
        n = len(self._per_patch["pq"])
        out: dict[str, Any] = {"n_patches": n}
        for key, vals in self._pixel.items():
            out[key] = _monai_mean(torch.cat(vals)) if vals else math.nan
        out.update({k: _nanmean(v) for k, v in self._per_patch.items()})
        tp, fp, fn, iou_sum = (float(c) for c in self._counts)
        out["pq_plus"] = pq_from_stats(tp, fp, fn, iou_sum)["pq"]
        out["f1_detection"] = float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else math.nan
        per_type, pqs = {}, []
        for k, name in enumerate(self.type_names):
            ts = self._types
            if ts is None:
                per_type[name] = {"pq": math.nan, "dq": math.nan, "sq": math.nan, "f1": math.nan, "n_gt": 0}
                continue
            q = pq_from_stats(*(float(ts[c][k]) for c in ("tp", "fp", "fn", "iou_sum")))
            per_type[name] = {**q, "f1": _f1_type(ts, k), "n_gt": int(ts["tp"][k] + ts["fn"][k])}
            pqs.append(q["pq"])
        out["per_type"] = per_type
        # CoNIC's compute_metrics.py averages over every class: an absent class scores 0 there
        # (its 1e-6 guards turn 0/0 into 0); the mean over present types is kept under its own name
        out["mpq_plus"] = float(np.mean([0.0 if math.isnan(q) else q for q in pqs])) if pqs else math.nan
        out["mpq_plus_present"] = _nanmean(pqs)
        return out
