"""Known-answer cases for every reported metric, each derived from its reference definition.

References: hover_net ``compute_stats.py`` (Dice1, AJI, AJI+, PQ, ``_f1_type``), CoNIC
``compute_metrics.py`` (mPQ+), MONAI ``DiceMetric`` / ``MeanIoU`` with ``reduction="mean"``
(``do_metric_reduction``: mean over channels, then over the patches that have a defined channel).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hovernet.metrics import HoVerNetMetrics, compute_aji, compute_pq, compute_type_stats, instance_types, match_instances


def _row_of_nuclei(n: int, size: int = 4, gap: int = 2) -> np.ndarray:
    """n square nuclei of size x size in one row, ids 1..n."""
    inst = np.zeros((size, n * (size + gap)), np.int32)
    for k in range(n):
        inst[:, k * (size + gap): k * (size + gap) + size] = k + 1
    return inst


def _type_map(inst: np.ndarray, types: list[int]) -> np.ndarray:
    lut = np.array([0, *types], np.int32)
    return lut[inst]


# ---------------------------------------------------------------- per-type F1 (hover_net _f1_type)

def test_f1_type_four_identical_nuclei_one_retyped():
    # gt types [1, 1, 2, 2], pred [1, 1, 2, 1], every nucleus matched exactly.
    # type 1 keeps pairs where gt or pred is 1: (1,1) (1,1) (2,1) -> tp 2, fp 1, fn 0:
    #   F1 = 2*2 / (2*2 + 2*1) = 2/3.
    # type 2 keeps (2,2) (2,1) -> tp 1, fn 1: F1 = 2*1 / (2*1 + 2*1) = 1/2.
    inst = _row_of_nuclei(4)
    acc = HoVerNetMetrics(n_types=2)
    acc.update(inst, _type_map(inst, [1, 1, 2, 1]), inst, _type_map(inst, [1, 1, 2, 2]))
    per = acc.aggregate()["per_type"]
    assert per["type_1"]["f1"] == pytest.approx(2 / 3)
    assert per["type_2"]["f1"] == pytest.approx(1 / 2)


def test_f1_type_never_predicted_type_is_zero_not_inflated():
    # gt [1, 1, 3], pred [1, 1, 1]: type 3 keeps only the pair (3, 1): tp 0, fn 1 -> F1 = 0.
    # Type 2 appears nowhere: no kept pair, no unpaired nucleus -> 0/0, undefined (nan).
    inst = _row_of_nuclei(3)
    acc = HoVerNetMetrics(n_types=3)
    acc.update(inst, _type_map(inst, [1, 1, 1]), inst, _type_map(inst, [1, 1, 3]))
    per = acc.aggregate()["per_type"]
    assert per["type_3"]["f1"] == 0.0
    assert math.isnan(per["type_2"]["f1"])
    # type 1: pairs (1,1) (1,1) (3,1): tp 2, fp 1 -> 4 / 6
    assert per["type_1"]["f1"] == pytest.approx(2 / 3)


def test_f1_type_unpaired_detections_weigh_one():
    # gt: nuclei 1 (type 1) and 2 (type 2); pred: nucleus 1 exact (type 1), nucleus 2 missed,
    # and a spurious nucleus far away typed 1.
    # type 1: kept pair (1,1): tp 1; fp_d 1 (spurious) -> 2 / (2 + 1) = 2/3.
    # type 2: no kept pair; fn_d 1 -> 0 / 1 = 0.
    gt = np.zeros((8, 24), np.int32)
    gt[:4, :4], gt[:4, 6:10] = 1, 2
    pred = np.zeros_like(gt)
    pred[:4, :4], pred[4:8, 18:22] = 5, 9
    gt_t = np.where(gt == 1, 1, np.where(gt == 2, 2, 0))
    pred_t = np.where(pred > 0, 1, 0)
    acc = HoVerNetMetrics(n_types=2)
    acc.update(pred, pred_t, gt, gt_t)
    per = acc.aggregate()["per_type"]
    assert per["type_1"]["f1"] == pytest.approx(2 / 3) and per["type_2"]["f1"] == 0.0


def _hovernet_f1_type(paired_true, paired_pred, unpaired_true, unpaired_pred, type_id, w=(2, 2, 1, 1)):
    """hover_net's ``_f1_type`` written from its definition, true-negative term included."""
    keep = (paired_true == type_id) | (paired_pred == type_id)
    t, p = paired_true[keep], paired_pred[keep]
    tp = np.sum((t == type_id) & (p == type_id))
    tn = np.sum((t != type_id) & (p != type_id))
    fp = np.sum((t != type_id) & (p == type_id))
    fn = np.sum((t == type_id) & (p != type_id))
    fp_d, fn_d = np.sum(unpaired_pred == type_id), np.sum(unpaired_true == type_id)
    denom = 2 * (tp + tn) + w[0] * fp + w[1] * fn + w[2] * fp_d + w[3] * fn_d
    return 2 * (tp + tn) / denom if denom else math.nan


def test_f1_type_equals_hovernet_formula_on_random_damage():
    rng = np.random.default_rng(3)
    n_types = 4
    inst = _row_of_nuclei(30)
    acc = HoVerNetMetrics(n_types=n_types)
    pooled = {"pt": [], "pp": [], "ut": [], "up": []}
    for _ in range(4):
        gt_types = rng.integers(1, n_types + 1, 30).tolist()
        pred_types = [t if rng.random() < 0.6 else int(rng.integers(1, n_types + 1)) for t in gt_types]
        pred = inst.copy()
        pred[np.isin(pred, rng.choice(np.arange(1, 31), 5, replace=False))] = 0  # five missed
        gt_t, pred_t = _type_map(inst, gt_types), _type_map(pred, pred_types)
        acc.update(pred, pred_t, inst, gt_t)
        m = match_instances(pred, inst)
        gt_of, pr_of = instance_types(inst, gt_t), instance_types(pred, pred_t)
        pooled["pt"] += [gt_of[int(i)] for i in m["gt_ids"]]
        pooled["pp"] += [pr_of[int(i)] for i in m["pred_ids"]]
        pooled["ut"] += [gt_of[int(i)] for i in m["unmatched_gt"]]
        pooled["up"] += [pr_of[int(i)] for i in m["unmatched_pred"]]
    per = acc.aggregate()["per_type"]
    arr = {k: np.array(v) for k, v in pooled.items()}
    for t in range(1, n_types + 1):
        ref = _hovernet_f1_type(arr["pt"], arr["pp"], arr["ut"], arr["up"], t)
        assert per[f"type_{t}"]["f1"] == pytest.approx(ref, abs=1e-12)


# ---------------------------------------------------------------- Dice / IoU reductions (MONAI)

def test_dice_types_reduce_by_channel_then_by_patch():
    # patch A: one type-1 nucleus, predicted perfectly: channels [1, nan, nan] -> patch mean 1.
    # patch B: types 1, 2, 3, each predicted as another type: [0, 0, 0] -> patch mean 0.
    # MONAI reduction="mean": (1 + 0) / 2 = 0.5 (a flat mean of the four values would give 0.25).
    a = _row_of_nuclei(1)
    b = _row_of_nuclei(3)
    pad = lambda x: np.pad(x, ((0, 0), (0, b.shape[1] - x.shape[1])))  # noqa: E731
    acc = HoVerNetMetrics(n_types=3)
    acc.update(pad(a), pad(_type_map(a, [1])), pad(a), pad(_type_map(a, [1])))
    acc.update(b, _type_map(b, [2, 3, 1]), b, _type_map(b, [1, 2, 3]))
    out = acc.aggregate()
    assert out["dice_types"] == pytest.approx(0.5) and out["miou_types"] == pytest.approx(0.5)


def test_pixel_metrics_equal_monai_metric_objects_on_a_batch():
    from monai.metrics import DiceMetric, MeanIoU

    rng = np.random.default_rng(0)
    n_types, size = 3, 24
    preds, gts = [], []
    for _ in range(5):
        g = (rng.random((size, size)) > 0.5).astype(np.int32) * rng.integers(1, n_types + 1, (size, size))
        p = np.where(rng.random((size, size)) > 0.2, g, rng.integers(0, n_types + 1, (size, size)))
        gts.append(g)
        preds.append(p)
    gts[1][:] = 0  # a patch with no nuclei: its nuclei channels are skipped
    acc = HoVerNetMetrics(n_types=n_types)
    for p, g in zip(preds, gts):
        acc.update(p, p, g, g)  # instance map = type map: nonzero pixels are nuclei
    out = acc.aggregate()

    def onehot(maps, c):
        return torch.nn.functional.one_hot(torch.as_tensor(np.stack(maps), dtype=torch.long), c).permute(0, 3, 1, 2)

    bp, bg = onehot([p > 0 for p in preds], 2), onehot([g > 0 for g in gts], 2)
    tp_, tg_ = onehot(preds, n_types + 1), onehot(gts, n_types + 1)
    for key, metric, p_, g_ in (
        ("dice", DiceMetric(include_background=False, reduction="mean", ignore_empty=True), bp, bg),
        ("dice_with_bg", DiceMetric(include_background=True, reduction="mean", ignore_empty=True), bp, bg),
        ("dice_types", DiceMetric(include_background=False, reduction="mean", ignore_empty=True), tp_, tg_),
        ("miou", MeanIoU(include_background=False, reduction="mean", ignore_empty=True), bp, bg),
        ("miou_with_bg", MeanIoU(include_background=True, reduction="mean", ignore_empty=True), bp, bg),
        ("miou_types", MeanIoU(include_background=False, reduction="mean", ignore_empty=True), tp_, tg_),
    ):
        metric(p_, g_)
        assert out[key] == pytest.approx(float(metric.aggregate()), abs=1e-6), key


def test_dice_with_background_known_answer():
    # 16 x 16 patch; gt nuclei 32 px, pred 36 px, overlap 28 px.
    # nuclei: Dice 2*28 / (32 + 36) = 56/68, IoU 28/40.
    # background: gt 224 px, pred 220 px, overlap 256 - 40 = 216: Dice 432/444, IoU 216/228.
    gt = np.zeros((16, 16), np.int32)
    gt[0:4, 0:4], gt[0:4, 8:12] = 1, 2
    pred = np.zeros_like(gt)
    pred[0:4, 0:4], pred[0:4, 9:13], pred[10:12, 10:12] = 7, 3, 5
    acc = HoVerNetMetrics(n_types=1)
    acc.update(pred, (pred > 0).astype(int), gt, (gt > 0).astype(int))
    out = acc.aggregate()
    assert out["dice"] == pytest.approx(56 / 68) and out["miou"] == pytest.approx(28 / 40)
    assert out["dice_with_bg"] == pytest.approx((56 / 68 + 432 / 444) / 2)
    assert out["miou_with_bg"] == pytest.approx((28 / 40 + 216 / 228) / 2)


def test_empty_patch_conventions():
    # a patch without gt nuclei: MONAI's ignore_empty skips its nuclei channel (the spurious
    # prediction is not scored by Dice); PQ there is 0 when something was predicted, nan when not.
    z = np.zeros((8, 8), np.int32)
    spur = z.copy()
    spur[2:4, 2:4] = 1
    acc = HoVerNetMetrics(n_types=1)
    acc.update(spur, spur, z, z)
    out = acc.aggregate()
    assert math.isnan(out["dice"]) and math.isnan(out["miou"])
    assert out["dice_with_bg"] == pytest.approx(2 * 60 / (60 + 64))  # background channel only
    assert out["pq"] == 0.0 and out["aji"] == 0.0
    acc.reset()
    acc.update(z, z, z, z)
    out = acc.aggregate()
    assert math.isnan(out["pq"]) and math.isnan(out["aji"]) and math.isnan(out["dice"])
    assert out["dice_with_bg"] == pytest.approx(1.0)
    # an empty accumulator is undefined, not MONAI's 0
    acc.reset()
    assert math.isnan(acc.aggregate()["dice"])


# ---------------------------------------------------------------- mPQ+ (CoNIC)

def test_mpq_plus_counts_an_absent_type_as_zero():
    # four types; types 1-3 each predicted perfectly, type 4 absent from gt and prediction:
    # CoNIC: mean(1, 1, 1, 0) = 0.75; the present-types variant: mean(1, 1, 1) = 1.
    inst = _row_of_nuclei(3)
    types = _type_map(inst, [1, 2, 3])
    acc = HoVerNetMetrics(n_types=4)
    acc.update(inst, types, inst, types)
    out = acc.aggregate()
    assert out["mpq_plus"] == pytest.approx(0.75)
    assert out["mpq_plus_present"] == pytest.approx(1.0)
    assert math.isnan(out["per_type"]["type_4"]["pq"])


def test_mpq_plus_pools_counts_before_pq():
    # patch 1: one type-1 nucleus matched exactly (tp 1, iou 1); patch 2: one type-1 nucleus
    # missed (fn 1). Pooled: DQ = 1 / (1 + 0.5) = 2/3, SQ = 1 -> PQ_1 = 2/3 (the mean of the
    # per-patch PQs would be 0.5).
    inst = _row_of_nuclei(1)
    acc = HoVerNetMetrics(n_types=1)
    acc.update(inst, inst, inst, inst)
    acc.update(np.zeros_like(inst), np.zeros_like(inst), inst, inst)
    out = acc.aggregate()
    assert out["mpq_plus"] == pytest.approx(2 / 3) and out["pq"] == pytest.approx(0.5)


# ---------------------------------------------------------------- PQ / AJI on merges and splits

def test_merge_of_two_equal_nuclei():
    # gt: two 16-px nuclei side by side; pred: one 32-px nucleus covering both.
    # each IoU is 16/32 = 0.5, not > 0.5: tp 0, fp 1, fn 2 -> PQ 0.
    # AJI: both gt pick the one pred: (16 + 16) / (32 + 32) = 0.5.
    # AJI+: one-to-one: one pair 16/32, the other gt unpaired adds 16: 16 / 48 = 1/3.
    gt = np.zeros((4, 8), np.int32)
    gt[:, :4], gt[:, 4:] = 1, 2
    pred = (gt > 0).astype(np.int32)
    s = compute_pq(pred, gt)
    assert (s["tp"], s["fp"], s["fn"], s["pq"]) == (0, 1, 2, 0.0)
    assert compute_aji(pred, gt) == pytest.approx(0.5)
    assert compute_aji(pred, gt, plus=True) == pytest.approx(1 / 3)


def test_unequal_split_of_one_nucleus():
    # gt: one 4x8 nucleus (32 px); pred: its left 4x5 (20 px) and right 4x3 (12 px) as two.
    # IoUs 20/32 = 0.625 (match) and 12/32: tp 1, fp 1, fn 0 -> DQ 1/1.5 = 2/3, SQ 0.625,
    # PQ = 0.625 * 2/3 = 5/12.
    # AJI: gt pairs the 20-px part (inter 20, union 32), the unpaired 12-px part joins the
    # union: 20 / 44; AJI+ pairs the same way: 20 / 44.
    gt = np.ones((4, 8), np.int32)
    pred = np.ones_like(gt)
    pred[:, 5:] = 2
    s = compute_pq(pred, gt)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 0)
    assert s["pq"] == pytest.approx(5 / 12) and s["sq"] == pytest.approx(0.625)
    assert compute_aji(pred, gt) == pytest.approx(20 / 44)
    assert compute_aji(pred, gt, plus=True) == pytest.approx(20 / 44)


def test_type_stats_match_types_on_their_own():
    # mPQ+ matches each type's instances separately: a perfectly segmented nucleus of the wrong
    # type is a false positive of the predicted type and a false negative of the true one.
    inst = _row_of_nuclei(1)
    s = compute_type_stats(inst, inst * 2, inst, inst, n_types=2)
    assert s["tp"].tolist() == [0, 0] and s["fn"].tolist() == [1, 0] and s["fp"].tolist() == [0, 1]
