"""Condition encoders and the mask representation: known answers and encode -> decode round trips."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch
from skimage.measure import label
from skimage.segmentation import relabel_sequential

from nasdm_aug.data.masks import (
    decode_mask,
    encode_mask,
    instance_edges,
    mask_channels,
    patch_condition,
    patch_condition_torch,
    type_presence,
)


try:  # the project's metric when it is there; the local one below agrees with it
    from hovernet.metrics import compute_pq as _project_pq
except ImportError:  # pragma: no cover - only before hovernet/metrics.py lands
    _project_pq = None


def _pq(gt: np.ndarray, pred: np.ndarray) -> float:
    """Panoptic quality with IoU > 0.5 matching (Kirillov et al. 2019); unique matches by construction."""
    if _project_pq is not None and (gt.any() or pred.any()):
        return float(_project_pq(pred, gt)["pq"])
    return _local_pq(gt, pred)


def _local_pq(gt: np.ndarray, pred: np.ndarray) -> float:
    gt_ids = np.unique(gt[gt > 0])
    pred_ids = np.unique(pred[pred > 0])
    if len(gt_ids) == 0 and len(pred_ids) == 0:
        return 1.0
    pairs = np.stack([gt.ravel(), pred.ravel()], 1)
    pairs = pairs[(pairs[:, 0] > 0) & (pairs[:, 1] > 0)]
    uniq, inter = np.unique(pairs, axis=0, return_counts=True)
    g_size, p_size = np.bincount(gt.ravel()), np.bincount(pred.ravel())
    iou = inter / (g_size[uniq[:, 0]] + p_size[uniq[:, 1]] - inter)
    hit = iou > 0.5
    tp = int(hit.sum())
    fn, fp = len(gt_ids) - tp, len(pred_ids) - tp
    return float(iou[hit].sum() / (tp + 0.5 * fn + 0.5 * fp))


def _touching_disks(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Five disks of radius 8, three of ONE type in a touching row, two overlapping others."""
    yy, xx = np.mgrid[:size, :size]
    inst = np.zeros((size, size), np.int32)
    typ = np.zeros((size, size), np.uint8)
    disks = [(16, 10, 1), (16, 26, 1), (16, 42, 1), (44, 20, 2), (44, 34, 3)]
    for i, (cy, cx, t) in enumerate(disks, start=1):
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= 8**2
        inst[disk] = i  # later disks overwrite: the contacts are straight cuts
        typ[disk] = t
    return inst, typ


def _split_components(inst: np.ndarray) -> np.ndarray:
    """Relabel so that every instance is one 4-connected piece (crops can cut a nucleus in two)."""
    out = np.zeros_like(inst)
    for i in range(1, int(inst.max()) + 1):
        parts = label(inst == i, connectivity=1)
        out[parts > 0] = parts[parts > 0] + out.max()
    return out


def test_instance_edges_known_answer():
    inst = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 0, 0]])
    want = np.array([[0, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]], bool)
    np.testing.assert_array_equal(instance_edges(inst), want)


def test_patch_condition_separates_touching_nuclei_of_one_type():
    inst, typ = _touching_disks()
    cond = patch_condition(inst, typ, n_types=3)
    assert cond.shape == (5, 64, 64) and cond.dtype == np.float32
    np.testing.assert_array_equal(cond[:4].sum(0), 1.0)  # background + types is one-hot
    np.testing.assert_array_equal(cond[:4].argmax(0), typ)
    # the class map is uniform across the contact of disks 1 and 2; the edge comes from instances
    contact = (inst == 1) & (np.roll(inst, -1, axis=1) == 2)
    assert contact.any() and cond[4][contact].all()
    interior = label(cond[1] * (1 - cond[4]) > 0, connectivity=1)
    assert interior.max() == 3  # the three same-type disks remain three pieces


def test_patch_condition_torch_matches_numpy():
    inst, typ = _touching_disks()
    batch = patch_condition_torch(torch.from_numpy(np.stack([inst, inst.T])), torch.from_numpy(np.stack([typ, typ.T])), 3)
    assert batch.shape == (2, 5, 64, 64) and batch.dtype == torch.float32
    np.testing.assert_array_equal(batch[0].numpy(), patch_condition(inst, typ, 3))
    np.testing.assert_array_equal(batch[1].numpy(), patch_condition(inst.T, typ.T, 3))


def test_type_presence_known_answer():
    typ = np.array([[0, 2, 2], [0, 0, 5]], np.uint8)
    np.testing.assert_array_equal(type_presence(typ, 6), [0, 1, 0, 0, 1, 0])
    assert type_presence(np.zeros((4, 4), np.uint8), 6).dtype == np.float32


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: patch_condition(np.zeros((4, 4), int), np.zeros((4, 5), int), 3), "shape"),
        (lambda: patch_condition(np.zeros((4, 4), int), np.full((4, 4), 7), 3), "0..3"),
        (lambda: type_presence(np.full((2, 2), 9), 6), "0..6"),
        (lambda: encode_mask(np.zeros((4, 4), int), np.zeros((4, 4), int), 0), "n_types"),
        (lambda: decode_mask(np.zeros((5, 8, 8)), 3), r"\[6, H, W\]"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_encode_range_and_channels():
    inst, typ = _touching_disks()
    rep = encode_mask(inst, typ, 3)
    assert rep.shape == (mask_channels(3), 64, 64) == (6, 64, 64) and rep.dtype == np.float32
    assert rep.min() == -1.0 and rep.max() == 1.0
    dist = (rep[5] + 1) / 2
    assert dist[16, 10] == 1.0 and dist[0, 0] == 0.0  # disk centre, background


def test_round_trip_touching_disks_exact():
    inst, typ = _touching_disks()
    out_inst, out_typ = decode_mask(encode_mask(inst, typ, 3), 3)
    assert out_inst.dtype == np.int32 and out_typ.dtype == np.uint8
    assert out_inst.max() == 5 and _pq(inst, out_inst) == 1.0
    np.testing.assert_array_equal(out_typ, typ)


def test_decode_from_torch_and_noisy_logits():
    inst, typ = _touching_disks()
    rep = torch.from_numpy(encode_mask(inst, typ, 3))
    noisy = rep + 0.3 * torch.randn(rep.shape, generator=torch.Generator().manual_seed(0))
    out_inst, _ = decode_mask(noisy.clamp(-1, 1), 3)
    assert _pq(inst, out_inst) >= 0.9


def test_decode_drops_fragments_below_min_size():
    inst, typ = _touching_disks()
    inst[60:62, 60:62], typ[60:62, 60:62] = 9, 1  # a 4-px speck
    out_inst, out_typ = decode_mask(encode_mask(inst, typ, 3), 3, min_size=10)
    assert out_inst.max() == 5 and out_inst[60, 60] == 0 and out_typ[60, 60] == 0
    assert decode_mask(encode_mask(inst, typ, 3), 3, min_size=1)[0].max() == 6


def test_majority_type_gives_one_type_per_instance():
    inst, typ = _touching_disks()
    rep = encode_mask(inst, typ, 3)
    rep[1:4, 14:17, 8:12] = np.array([-1, 1, -1])[:, None, None]  # a few pixels of disk 1 say type 2
    out_inst, out_typ = decode_mask(rep, 3)
    assert set(np.unique(out_typ[out_inst == out_inst[16, 10]])) == {1}


def test_round_trip_real_consep(consep_dir):
    scores = []
    for name in ("train_1", "train_5", "train_12", "train_24"):
        mat = scipy.io.loadmat(consep_dir / "Labels" / f"{name}.mat")
        for y, x in ((0, 0), (300, 500), (700, 200)):
            inst = _split_components(relabel_sequential(mat["inst_map"][y : y + 128, x : x + 128].astype(np.int32))[0])
            typ = mat["type_map"][y : y + 128, x : x + 128].astype(np.uint8)
            out_inst, out_typ = decode_mask(encode_mask(inst, typ, 4), 4, min_size=1)
            scores.append(_pq(inst, out_inst))
            assert (out_typ != typ).mean() < 0.01
    assert np.mean(scores) >= 0.95 and min(scores) >= 0.9, scores


def test_round_trip_toy_tissue():
    from nasdm_aug.data.toy import generate_toy_tile

    scores = []
    for seed in range(3):
        tile = generate_toy_tile(seed, size=(128, 128))
        inst = _split_components(relabel_sequential(tile.inst)[0])
        out_inst, out_typ = decode_mask(encode_mask(inst, tile.type, 6), 6, min_size=1)
        scores.append(_pq(inst, out_inst))
        assert (out_typ != tile.type).mean() < 0.01
    assert np.mean(scores) >= 0.95 and min(scores) >= 0.9, scores


def test_local_pq_known_answer():
    gt = np.zeros((8, 8), int)
    gt[:4, :4], gt[4:, 4:] = 1, 2
    pred = gt.copy()
    pred[0, 0] = 0  # IoU 15/16 for instance 1
    pred[6:, :2] = 3  # a false positive
    want = (15 / 16 + 1) / (2 + 0.5)
    assert abs(_local_pq(gt, pred) - want) < 1e-12 and abs(_pq(gt, pred) - want) < 1e-12


def _faint_edge_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two touching disks of one type whose edge channel is lost, as a generated mask often has it."""
    inst, typ = _touching_disks()
    keep = np.isin(inst, [1, 2])
    inst, typ = np.where(keep, inst, 0), np.where(keep, typ, 0).astype(np.uint8)
    rep = encode_mask(inst, typ, 3)
    rep[4] = -1.0  # n_types + 1: the touching edge
    return inst, typ, rep


def test_marker_threshold_parts_touching_nuclei_whose_edge_is_lost():
    inst, _, rep = _faint_edge_pair()
    assert decode_mask(rep, 3)[0].max() == 1  # edge markers alone: one merged blob
    parted, parted_type = decode_mask(rep, 3, marker_threshold=0.5)
    assert parted.max() == 2 and _pq(inst, parted) >= 0.9
    assert set(np.unique(parted_type[parted > 0])) == {1}


def test_marker_threshold_zero_is_the_edge_decoder():
    inst, typ = _touching_disks()
    rep = encode_mask(inst, typ, 3) + 0.3 * np.random.default_rng(0).standard_normal((6, 64, 64)).astype(np.float32)
    for a, b in zip(decode_mask(rep, 3), decode_mask(rep, 3, marker_threshold=0.0)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 2.0])
def test_marker_threshold_out_of_range_raises(bad):
    inst, typ = _touching_disks()
    with pytest.raises(ValueError, match="marker_threshold must lie in"):
        decode_mask(encode_mask(inst, typ, 3), 3, marker_threshold=bad)


def test_gap_weight_map_known_answer():
    from nasdm_aug.data.masks import gap_weight_map

    inst = np.zeros((5, 12), np.int32)
    inst[:, 0:3] = 1  # a 2-px gap (columns 3-4) to nucleus 2
    inst[:, 5:8] = 2
    w = gap_weight_map(inst, w0=10.0, sigma=3.0)
    assert w.dtype == np.float32 and w.shape == inst.shape
    # inside the gap each pixel lies 1 px from one nucleus and 2 px from the other
    np.testing.assert_allclose(w[:, 3:5], 1 + 10 * np.exp(-9 / 18), rtol=1e-6)
    np.testing.assert_array_equal(w[inst > 0], 1.0)  # nuclei keep weight 1
    # right of nucleus 2: column 8 is 1 px from it and 6 px from nucleus 1 (d1 + d2 = 7), and so on
    np.testing.assert_allclose(w[0, 8:], 1 + 10 * np.exp(-((np.arange(4) * 2 + 7.0) ** 2) / 18), rtol=1e-6)
    assert (np.diff(w[0, 8:]) < 0).all()  # the open background far from any pair falls to 1


@pytest.mark.parametrize("case", ["one nucleus", "none", "w0 zero"])
def test_gap_weight_map_is_ones_without_a_pair(case):
    from nasdm_aug.data.masks import gap_weight_map

    inst = np.zeros((8, 8), np.int32)
    w0 = 10.0
    if case == "one nucleus":
        inst[2:5, 2:5] = 7
    elif case == "w0 zero":
        inst[:, :2], inst[:, 4:6], w0 = 1, 2, 0.0
    np.testing.assert_array_equal(gap_weight_map(inst, w0, 3.0), np.ones((8, 8), np.float32))


@pytest.mark.parametrize("args, match", [((np.zeros((2, 4, 4)), 1.0, 3.0), "instance map"),
                                         ((np.zeros((4, 4)), -1.0, 3.0), "w0"),
                                         ((np.zeros((4, 4)), 1.0, 0.0), "sigma"),
                                         ((np.zeros((4, 4)), float("nan"), 3.0), "w0")])
def test_gap_weight_map_bad_input(args, match):
    from nasdm_aug.data.masks import gap_weight_map

    with pytest.raises(ValueError, match=match):
        gap_weight_map(*args)
