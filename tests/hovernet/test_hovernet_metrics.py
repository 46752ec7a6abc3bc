"""Metrics on hand-built masks with known answers, and against MONAI where both exist."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hovernet.metrics import (
    HoVerNetMetrics, compute_aji, compute_dice, compute_iou, compute_pq, compute_type_stats, match_instances,
    pairwise_iou,
)


def _scene():
    """GT: A (16 px) and B (16 px). Pred: A exact, B shifted by 1 (IoU 12/20), a 4-px false positive."""
    gt = np.zeros((16, 16), np.int32)
    gt[0:4, 0:4] = 1
    gt[0:4, 8:12] = 2
    pred = np.zeros_like(gt)
    pred[0:4, 0:4] = 7
    pred[0:4, 9:13] = 3
    pred[10:12, 10:12] = 5
    gt_type = np.where(gt == 1, 1, np.where(gt == 2, 2, 0)).astype(np.uint8)
    pred_type = np.where(pred == 7, 1, np.where(pred == 3, 1, np.where(pred == 5, 2, 0))).astype(np.uint8)
    return pred, pred_type, gt, gt_type


def test_pq_known_answer():
    pred, _, gt, _ = _scene()
    s = compute_pq(pred, gt)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 1, 0)
    assert s["dq"] == pytest.approx(0.8)
    assert s["sq"] == pytest.approx(0.8)
    assert s["pq"] == pytest.approx(0.64)
    m = match_instances(pred, gt)
    assert sorted(zip(m["gt_ids"].tolist(), m["pred_ids"].tolist())) == [(1, 7), (2, 3)]
    assert m["unmatched_pred"].tolist() == [5]


def test_aji_dice_iou_known_answers():
    pred, _, gt, _ = _scene()
    assert compute_aji(pred, gt) == pytest.approx(28 / 40)
    assert compute_dice(pred, gt) == pytest.approx(56 / 68)
    assert compute_iou(pred, gt) == pytest.approx(28 / 40)


def test_aji_reuses_prediction_but_aji_plus_does_not():
    gt = np.zeros((4, 8), np.int32)
    gt[:, :4], gt[:, 4:] = 1, 2
    pred = np.ones_like(gt)
    assert compute_aji(pred, gt) == pytest.approx(0.5)  # both gts pair with the one pred
    assert compute_aji(pred, gt, plus=True) == pytest.approx(1 / 3)
    s = compute_pq(pred, gt)  # IoU exactly 0.5 is not a match (strict >)
    assert (s["tp"], s["fp"], s["fn"], s["pq"]) == (0, 1, 2, 0.0)


def test_empty_maps_are_nan_and_one_sided_is_zero():
    z = np.zeros((8, 8), np.int32)
    one = z.copy()
    one[2:4, 2:4] = 1
    assert math.isnan(compute_pq(z, z)["pq"]) and math.isnan(compute_aji(z, z)) and math.isnan(compute_dice(z, z))
    assert compute_pq(one, z)["pq"] == 0.0 and compute_aji(z, one) == 0.0


@pytest.mark.parametrize("shapes", [((4, 4), (4, 5)), ((2, 4, 4), (2, 4, 4))])
def test_bad_shapes_raise(shapes):
    a, b = (np.zeros(s, np.int32) for s in shapes)
    with pytest.raises(ValueError, match="shape"):
        compute_pq(a, b)


def test_pairwise_iou_handles_maps_without_background():
    full = np.ones((4, 4), np.int32)
    pw = pairwise_iou(full, full)
    assert pw["iou"].tolist() == [[1.0]] and pw["gt_area"].tolist() == [16]


def test_pq_matches_monai_on_random_blobs():
    from monai.metrics import compute_panoptic_quality
    from skimage.measure import label

    rng = np.random.default_rng(0)
    for _ in range(3):
        gt = label(rng.random((48, 48)) > 0.6).astype(np.int32)
        pred = label(np.roll(gt > 0, (1, 0), (0, 1)) | (rng.random((48, 48)) > 0.9)).astype(np.int32)
        ours = compute_pq(pred, gt)
        for name in ("pq", "sq"):
            ref = compute_panoptic_quality(torch.as_tensor(pred), torch.as_tensor(gt), metric_name=name)
            assert ours[name] == pytest.approx(float(ref), abs=1e-4)
        ref_rq = compute_panoptic_quality(torch.as_tensor(pred), torch.as_tensor(gt), metric_name="rq")
        assert ours["dq"] == pytest.approx(float(ref_rq), abs=1e-4)


def test_type_stats_and_hovernet_f1_known_answers():
    pred, pred_type, gt, gt_type = _scene()
    s = compute_type_stats(pred, pred_type, gt, gt_type, n_types=2)
    assert s["tp"].tolist() == [1, 0] and s["fp"].tolist() == [1, 1] and s["fn"].tolist() == [0, 1]
    # type-agnostic pairs: (A: 1/1), (B: gt 2, pred 1); unpaired pred C of type 2
    assert s["tp_c"].tolist() == [1, 0] and "tn_c" not in s
    assert s["fp_c"].tolist() == [1, 0] and s["fn_c"].tolist() == [0, 1] and s["fp_d"].tolist() == [0, 1]


def test_accumulator_known_answers_and_monai_reductions():
    pred, pred_type, gt, gt_type = _scene()
    acc = HoVerNetMetrics(n_types=2, type_names=["a", "b"])
    acc.update(torch.as_tensor(pred)[None], pred_type[None], gt[None], gt_type[None])
    out = acc.aggregate()
    assert out["n_patches"] == 1
    assert out["dice"] == pytest.approx(56 / 68, abs=1e-5) and out["miou"] == pytest.approx(0.7, abs=1e-5)
    assert out["dice_types"] == pytest.approx((2 / 3 + 0) / 2, abs=1e-5)
    assert out["miou_types"] == pytest.approx((0.5 + 0) / 2, abs=1e-5)
    assert out["pq"] == pytest.approx(0.64) and out["aji"] == pytest.approx(0.7)
    assert out["per_type"]["a"]["pq"] == pytest.approx(2 / 3) and out["per_type"]["b"]["pq"] == 0.0
    assert out["mpq_plus"] == pytest.approx(1 / 3)
    # hover_net's _f1_type: type a keeps pairs A, B: 2*1 / (2*1 + 2*1) = 0.5; type b keeps B and
    # the unpaired C: 0 / (2*1 + 1) = 0
    assert out["per_type"]["a"]["f1"] == pytest.approx(0.5) and out["per_type"]["b"]["f1"] == 0.0
    assert out["f1_detection"] == pytest.approx(4 / 5)
    # pooled PQ over two identical patches equals the single-patch PQ
    acc.update(pred, pred_type, gt, gt_type)
    assert acc.aggregate()["pq_plus"] == pytest.approx(0.64)
    acc.reset()
    assert acc.aggregate()["n_patches"] == 0
