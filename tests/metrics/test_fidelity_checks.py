"""Mask fidelity (the four expert criteria) and mask-model checks on hand-built masks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nasdm_aug.metrics.fidelity import FidelityAccumulator, boundary_f1, compare_fidelity, patch_fidelity
from nasdm_aug.metrics.mask_checks import (
    contact_statistics,
    mask_realism,
    nuclei_statistics,
    type_control,
    types_present,
)

NAMES = ["a", "b", "c"]


def disks(centres, types, size=48, r=5):
    """inst and type maps with one disk per centre (ids 1..n) of the given types."""
    yy, xx = np.mgrid[:size, :size]
    inst, typ = np.zeros((size, size), np.int32), np.zeros((size, size), np.uint8)
    for i, ((y, x), t) in enumerate(zip(centres, types), start=1):
        d = (yy - y) ** 2 + (xx - x) ** 2 <= r * r
        inst[d], typ[d] = i, t
    return inst, typ


CENTRES = [(10, 10), (10, 35), (35, 10), (35, 35)]
TYPES = [1, 1, 2, 3]


def test_identical_patch_is_perfect():
    inst, typ = disks(CENTRES, TYPES)
    r = patch_fidelity(inst, typ, inst, typ, n_types=3)
    assert r["score"] == 1.0 and r["dice_sum"] == 4.0 and r["bf1_sum"] == 4.0
    assert list(r["n_mask"]) == [2, 1, 1] and list(r["matched"]) == [2, 1, 1]
    assert r["missing"].sum() == 0 and r["excess"].sum() == 0


def test_removed_nucleus_is_missing_of_its_type():
    inst, typ = disks(CENTRES, TYPES)
    pred_inst, pred_type = disks(CENTRES[:3], TYPES[:3])  # the type-3 nucleus is not found
    r = patch_fidelity(inst, typ, pred_inst, pred_type, n_types=3)
    assert list(r["missing"]) == [0, 0, 1] and r["excess"].sum() == 0
    assert r["score"] == pytest.approx(2 * 3 / 7)  # detection F1 x Dice 1


def test_added_nucleus_is_excess_of_its_predicted_type():
    inst, typ = disks(CENTRES, TYPES)
    pred_inst, pred_type = disks([*CENTRES, (22, 22)], [*TYPES, 2])
    r = patch_fidelity(inst, typ, pred_inst, pred_type, n_types=3)
    assert list(r["excess"]) == [0, 1, 0] and r["missing"].sum() == 0
    assert list(r["n_pred"]) == [2, 2, 1]


def test_wrong_type_lowers_type_accuracy_of_that_type_only():
    inst, typ = disks(CENTRES, TYPES)
    _, wrong = disks(CENTRES, [1, 3, 2, 3])  # one type-1 nucleus called type 3
    acc = FidelityAccumulator(NAMES)
    acc.add(inst, typ, inst, wrong)
    agg = acc.aggregate()
    assert agg["type_accuracy/a"] == 0.5 and agg["type_accuracy/b"] == 1.0 and agg["type_accuracy/c"] == 1.0
    assert agg["type_accuracy"] == 0.75 and agg["dice"] == 1.0


def _inner_boundary(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask."""
    p = np.pad(mask, 1)
    return mask & ~(p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:])


def _boundary_f1_by_hand(a: np.ndarray, b: np.ndarray, tolerance: float) -> float:
    """The BF score from its definition, by brute-force distances between boundary pixels."""
    pa, pb = np.argwhere(_inner_boundary(a)), np.argwhere(_inner_boundary(b))
    d = np.sqrt(((pa[:, None] - pb[None]) ** 2).sum(-1))
    precision, recall = (d.min(0) <= tolerance).mean(), (d.min(1) <= tolerance).mean()
    return 2 * precision * recall / (precision + recall)


def test_shifted_boundary_lowers_dice_and_boundary_f1():
    inst, typ = disks(CENTRES[:1], [1], r=6)
    moved, _ = disks([(11, 10)], [1], r=6)  # one pixel down: within the 2 px tolerance
    assert boundary_f1(inst > 0, moved > 0, tolerance=2) == 1.0
    # three to five pixels: part of the boundary is farther than 2 px from the other's
    for k in (3, 4, 5):
        far, _ = disks([(10 + k, 10)], [1], r=6)
        want = _boundary_f1_by_hand(inst > 0, far > 0, 2)
        assert boundary_f1(inst > 0, far > 0, tolerance=2) == pytest.approx(want, abs=1e-12), k
    assert _boundary_f1_by_hand(inst > 0, disks([(13, 10)], [1], r=6)[0] > 0, 2) == 0.5  # the helper itself
    r = patch_fidelity(inst, typ, moved, typ, n_types=3)
    a, b = inst > 0, moved > 0  # 113-px disks overlapping in 100 px: Dice 200 / 226
    assert (a & b).sum() == 100 and a.sum() == b.sum() == 113
    assert r["dice_sum"] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()), abs=1e-12)


def test_boundary_f1_edge_cases():
    empty = np.zeros((8, 8), bool)
    full = np.zeros((8, 8), bool)
    full[2:6, 2:6] = True
    assert boundary_f1(empty, empty) == 1.0 and boundary_f1(full, empty) == 0.0


def test_synthetic_equal_to_real_parent_has_ratio_one():
    acc_syn, acc_real = FidelityAccumulator(NAMES), FidelityAccumulator(NAMES)
    inst, typ = disks(CENTRES, TYPES)
    pred_inst, pred_type = disks(CENTRES[:3], TYPES[:3])
    for acc in (acc_syn, acc_real):
        acc.add(inst, typ, pred_inst, pred_type)
    cmp = compare_fidelity(acc_syn.aggregate(), acc_real.aggregate())
    assert all(v["ratio"] == 1.0 for k, v in cmp.items() if not math.isnan(v["real"])), cmp
    assert math.isnan(cmp["excess_rate/c"]["ratio"])  # nothing of type c predicted: undefined


def test_ratio_of_worse_synthetic():
    cmp = compare_fidelity({"dice": 0.6, "missing_rate": 0.2}, {"dice": 0.8, "missing_rate": 0.0})
    assert cmp["dice"]["ratio"] == pytest.approx(0.75)
    assert math.isnan(cmp["missing_rate"]["ratio"])


def test_types_present_and_type_control():
    maps = np.zeros((3, 4, 4), np.uint8)
    maps[0, 0, 0] = 1
    maps[1, 0, 0], maps[1, 1, 1] = 1, 2
    present = types_present(maps, 3)
    assert present.tolist() == [[True, False, False], [True, True, False], [False, False, False]]
    requested = np.array([[1, 0, 0], [1, 0, 1], [0, 1, 0]], bool)
    tc = type_control(requested, present, NAMES)
    assert tc["a"]["precision"] == 1.0 and tc["a"]["recall"] == 1.0
    assert tc["b"]["precision"] == 0.0 and tc["b"]["recall"] == 0.0
    assert math.isnan(tc["c"]["precision"]) and tc["c"]["recall"] == 0.0
    assert tc["all"]["precision"] == pytest.approx(2 / 3) and tc["all"]["recall"] == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="must both be"):
        type_control(requested[:, :2], present, NAMES)


def test_nuclei_statistics_and_wasserstein():
    inst1, typ1 = disks(CENTRES, TYPES, r=4)
    inst2, typ2 = disks(CENTRES[:2], TYPES[:2], r=4)
    stats = nuclei_statistics(np.stack([inst1, inst2]), np.stack([typ1, typ2]), 3)
    assert stats["count"].tolist() == [4, 2] and stats["count/1"].tolist() == [2, 2]
    assert len(stats["area"]) == 6 and np.all(stats["area"] == stats["area"][0])
    assert np.allclose(stats["eccentricity"], 0, atol=0.05) and np.all(stats["solidity"] > 0.8)
    same = mask_realism(stats, stats, NAMES)
    assert same["count"] == 0 and same["area"] == 0 and same["count/a"] == 0
    big = nuclei_statistics(np.stack([disks(CENTRES, TYPES, r=6)[0]] * 2), np.stack([typ1] * 2), 3)
    w = mask_realism(stats, big, NAMES)
    assert w["count"] == pytest.approx(1.0)  # counts {4, 2} vs {4, 4}: mass 1/2 moved by 2
    # equal-sized samples: W1 is the mean absolute difference of the sorted values; every area is
    # one disk's pixel count (49 at r = 4, 113 at r = 6), overall and of type a
    a4, a6 = [int((disks([(10, 10)], [1], r=r)[0] > 0).sum()) for r in (4, 6)]
    assert (a4, a6) == (49, 113)
    assert w["area"] == pytest.approx(a6 - a4) and w["area/a"] == pytest.approx(a6 - a4)


def test_contact_statistics_count_touching_nuclei_and_clusters():
    inst = np.zeros((12, 12), np.int32)
    inst[1:4, 1:4] = 1
    inst[1:4, 4:7] = 2  # shares an edge with 1
    inst[8:11, 8:11] = 3  # alone
    inst[8:11, 1:3] = 4
    inst[7, 3] = 5  # touches 4 only at a corner: not 4-adjacent, its own component
    stats = contact_statistics(np.stack([inst, np.zeros_like(inst)]))
    assert stats["touching"].tolist() == [1, 1, 0, 0, 0]
    assert sorted(stats["cluster"].tolist()) == [1, 1, 1, 2]
    # the same region tiled into one instance is one nucleus alone
    merged = np.where(inst == 2, 1, inst)
    again = contact_statistics(merged[None])
    assert again["touching"].tolist() == [0, 0, 0, 0] and sorted(again["cluster"].tolist()) == [1, 1, 1, 1]
    empty = contact_statistics(np.zeros((1, 4, 4), np.int32))
    assert len(empty["touching"]) == 0 and len(empty["cluster"]) == 0
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        contact_statistics(inst)


def test_mask_realism_nan_when_type_absent():
    inst, typ = disks(CENTRES[:2], [1, 1])
    stats = nuclei_statistics(inst[None], typ[None], 3)
    assert math.isnan(mask_realism(stats, stats, NAMES)["area/b"])


def test_detection_pairs_centroids_within_the_radius_one_to_one():
    inst, typ = disks(CENTRES, TYPES, r=3)
    # nucleus 1 found 4 px off (IoU of 3-px disks 4 px apart < 0.5: missing by IoU, detected by
    # centroid); nucleus 2 found 7 px off (beyond a 6-px radius); nucleus 3 found in place; nucleus 4
    # not found. A second prediction next to nucleus 3 cannot detect another nucleus (one-to-one).
    pred_inst, pred_type = disks([(14, 10), (10, 42), (35, 10), (38, 13)], [1, 1, 2, 2], r=3)
    r = patch_fidelity(inst, typ, pred_inst, pred_type, n_types=3, detect_radius=6.0)
    assert list(r["detected"]) == [1, 1, 0]
    assert list(r["missing"]) == [2, 0, 1]
    # the pairing from hover_net's definition, by brute force over every one-to-one assignment
    import itertools
    gt = np.array(CENTRES, float)
    pr = np.array([(14, 10), (10, 42), (35, 10), (38, 13)], float)
    d = np.sqrt(((gt[:, None] - pr[None]) ** 2).sum(-1))
    best = min(itertools.permutations(range(4)), key=lambda p: sum(d[i, p[i]] for i in range(4)))
    assert sum(d[i, best[i]] <= 6.0 for i in range(4)) == r["detected"].sum()
    # the radius scales with magnification as hover_net's 12 px at 40x
    from nasdm_aug.metrics.fidelity import detected_nuclei, hovernet_detection_radius
    assert hovernet_detection_radius(20) == 6.0 and hovernet_detection_radius(40) == 12.0
    assert hovernet_detection_radius(None) == 12.0
    assert sorted(detected_nuclei(inst, pred_inst, 12.0).tolist()) == [1, 2, 3]
    assert detected_nuclei(inst, np.zeros_like(inst), 6.0).size == 0


def test_detection_rate_pools_over_patches_by_type():
    inst, typ = disks(CENTRES, TYPES, r=3)
    acc = FidelityAccumulator(NAMES, detect_radius=6.0)
    acc.add(inst, typ, inst, typ)  # all 4 found
    acc.add(inst, typ, *disks(CENTRES[:1], TYPES[:1], r=3))  # only one type-a nucleus
    agg = acc.aggregate()
    assert agg["detection_rate"] == 5 / 8
    assert agg["detection_rate/a"] == 3 / 4 and agg["detection_rate/b"] == 0.5 and agg["detection_rate/c"] == 0.5
