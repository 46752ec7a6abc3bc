"""The ``hovernet`` post-processing preset against a faithful re-implementation of hover_net's
``process()`` (benchmarks/hovernet_reference.py, OpenCV), and the fast paths against the plain
library calls they replace."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.morphology import disk, opening
from skimage.segmentation import watershed

from hovernet.config import POSTPROCESS_PRESETS, PostprocessConfig
from hovernet.metrics import compute_pq
from hovernet.postprocess import (
    _argmax0, _mark_unmarked, _morph_rows, _remove_small, _watershed, assign_types, instance_energy,
    assign_types_batch, instances_from_np_hv, instances_from_np_hv_batch, opencv_ellipse, opencv_gaussian_kernel,
    postprocess,
)
from hovernet.targets import compute_targets

cv2 = pytest.importorskip("cv2", reason="OpenCV (installed with the test extras) is the reference")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import hovernet_reference as ref  # noqa: E402


def _soft_predictions(n: int, size: int = 96, seed: int = 0):
    """(gt inst, P(nucleus), hv, nc logits) that look like a network's: blurred targets plus noise,
    with touching nuclei."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        inst = np.zeros((size, size), np.int32)
        for k in range(1, 30):
            cy, cx, r = *rng.integers(0, size, 2), rng.integers(3, 8)
            inst[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (inst == 0)] = k
        t = compute_targets(inst, (inst > 0).astype(np.uint8))
        prob = np.clip(ndi.gaussian_filter(t["np"].numpy().astype(np.float32), 1.0) + rng.normal(0, 0.08, inst.shape),
                       0, 1).astype(np.float32)
        hv = (ndi.gaussian_filter(t["hv"].numpy(), (0, 0.8, 0.8)) + rng.normal(0, 0.05, (2, size, size))).astype(np.float32)
        types = rng.integers(1, 5, inst.max() + 1)[inst] * (inst > 0)
        nc = rng.normal(0, 1.0, (5, size, size)).astype(np.float32)
        nc[types, yy, xx] += 1.5
        out.append((inst, prob, hv, nc))
    return out


def test_opencv_kernels_equal_cv2():
    for r in range(6):
        np.testing.assert_array_equal(opencv_ellipse(r), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2) > 0)
    for size, sigma in ((3, 0), (5, 0), (7, 0), (9, 1.5), (5, 1.1), (11, 0)):
        np.testing.assert_allclose(opencv_gaussian_kernel(size, sigma), cv2.getGaussianKernel(size, sigma).ravel(),
                                   atol=1e-12)
    with pytest.raises(ValueError, match="odd"):
        opencv_gaussian_kernel(4)


def test_row_morphology_equals_scipy_and_opencv():
    rng = np.random.default_rng(1)
    for r in (1, 2, 3):
        fp = opencv_ellipse(r)
        for _ in range(10):
            a = ndi.binary_dilation(rng.random((40, 37)) > 0.93, iterations=2)
            np.testing.assert_array_equal(_morph_rows(a, fp, True), ndi.binary_erosion(a, fp, border_value=1))
            np.testing.assert_array_equal(_morph_rows(a[None], fp, True)[0], ndi.binary_erosion(a, fp, border_value=1))
            np.testing.assert_array_equal(_morph_rows(a, fp, False), ndi.binary_dilation(a, fp, border_value=0))
            opened = _morph_rows(_morph_rows(a, fp, True), fp, False)
            cv = cv2.morphologyEx(a.astype(np.uint8), cv2.MORPH_OPEN, fp.astype(np.uint8))
            np.testing.assert_array_equal(opened, cv > 0)


@pytest.mark.parametrize("connectivity", [1, 2])
def test_restricted_watershed_equals_full_watershed(connectivity):
    rng = np.random.default_rng(2)
    for inst, prob, hv, _ in _soft_predictions(6, seed=3):
        mask = prob >= 0.5
        comps = _remove_small(mask[None], 0)[0] if connectivity == 1 else ndi.label(mask, structure=np.ones((3, 3)))[0]
        dist = -ndi.gaussian_filter(prob, 1.0)
        markers = ndi.label(ndi.binary_erosion(mask, iterations=2) & (rng.random(mask.shape) > 0.05))[0]
        markers[rng.random(mask.shape) > 0.995] = 3  # a label in several blobs, and outside the mask
        full = watershed(dist, markers=markers, mask=comps > 0, connectivity=connectivity)
        np.testing.assert_array_equal(_watershed(dist[None], markers[None], comps[None], connectivity)[0], full)


def _plain_instances(np_prob, hv, cfg):
    """The post-processing as straight library calls (the fast paths' specification)."""
    mask = (ndi.label(np_prob >= cfg.np_threshold)[0] > 0)
    lab = ndi.label(mask)[0]
    sizes = np.bincount(lab.ravel())
    mask = mask & (sizes[lab] >= cfg.min_object_size)
    energy = instance_energy(mask.astype(np.float32), hv, cfg.sobel_kernel_size)
    if cfg.smooth_size:
        k = opencv_gaussian_kernel(cfg.smooth_size, cfg.smooth_sigma)
        dist = -ndi.correlate(((1 - energy) * mask).astype(np.float32), np.outer(k, k), mode="mirror")
    else:
        dist = -ndi.gaussian_filter((1 - energy) * mask, cfg.smooth_sigma, mode="constant", truncate=4.0)
    marker = ndi.binary_fill_holes(mask & (energy < cfg.marker_threshold))
    if cfg.marker_shape == "ellipse":
        fp = opencv_ellipse(cfg.marker_radius)
        marker = ndi.binary_dilation(ndi.binary_erosion(marker, fp, border_value=1), fp)
    else:
        marker = opening(marker.astype(np.uint8), disk(cfg.marker_radius)) > 0
    markers = ndi.label(marker)[0]
    msizes = np.bincount(markers.ravel())
    markers[msizes[markers] < cfg.min_object_size] = 0
    if cfg.fill_unmarked:
        markers = _mark_unmarked(ndi.label(mask)[0], markers)
    return watershed(dist, markers=markers, mask=mask, connectivity=cfg.connectivity)


@pytest.mark.parametrize("name", sorted(POSTPROCESS_PRESETS))
def test_presets_equal_their_plain_specification(name):
    cfg = PostprocessConfig.preset(name)
    for _, prob, hv, _ in _soft_predictions(4, seed=4):
        ours, plain = instances_from_np_hv(prob, hv, cfg), _plain_instances(prob, hv, cfg)
        assert compute_pq(ours, plain)["pq"] == pytest.approx(1.0, abs=1e-9) or (ours.max() == plain.max() == 0)
        assert ours.max() == len(np.unique(plain)) - 1


def test_hovernet_preset_reproduces_hovernet_process():
    cfg = PostprocessConfig.hovernet()
    tp = fp = fn = 0
    iou = 0.0
    n_types_checked = 0
    for _, prob, hv, nc in _soft_predictions(14, seed=5):
        inst = instances_from_np_hv(prob, hv, cfg)
        theirs, info = ref.process(prob, hv, nc)
        s = compute_pq(inst, theirs)
        tp, fp, fn, iou = tp + s["tp"], fp + s["fp"], fn + s["fn"], iou + s["iou_sum"]
        # the same instances pixel for pixel, so compare the type vote nucleus by nucleus
        types = assign_types(inst, nc, cfg.type_vote)
        for their_id, entry in info.items():
            pix = theirs == their_id
            assert types[pix].min() == types[pix].max() == entry["type"]
            n_types_checked += 1
    assert tp > 100 and n_types_checked > 100
    assert iou / (tp + 0.5 * (fp + fn)) >= 0.99  # the bar; identical in practice
    assert fp == fn == 0 and iou == pytest.approx(tp)


def test_argmax_vote_takes_runner_up_and_types_vote_never_background():
    inst = np.zeros((1, 6), np.int32)
    inst[0, :] = 1
    nc = np.zeros((3, 1, 6), np.float32)
    nc[0, 0, :4] = 5  # four background pixels
    nc[2, 0, 4:] = 5  # two of type 2
    nc[1, 0, :4] = 4  # type 1 is second-best on the background pixels
    assert assign_types(inst, nc, "argmax").max() == 2  # background wins, runner-up 2 (hover_net)
    assert assign_types(inst, nc, "types").max() == 1  # best non-background type per pixel: 1 x4, 2 x2
    with pytest.raises(ValueError, match="vote"):
        assign_types(inst, nc, "mode")


def test_argmax0_equals_numpy_including_ties():
    rng = np.random.default_rng(6)
    a = rng.integers(0, 3, (5, 17, 9)).astype(np.float32)  # many ties
    np.testing.assert_array_equal(_argmax0(a), a.argmax(0))


def test_batched_type_vote_equals_a_plain_majority_including_ties():
    """Per pixel the first best channel (numpy's argmax), per nucleus the most frequent type,
    lower id on ties; "argmax" counts only typed pixels unless there are none (hover_net's
    runner-up), "types" never lets background compete."""
    rng = np.random.default_rng(6)
    inst = rng.integers(0, 4, (3, 9, 11)).astype(np.int32)  # ids 1..3 in each patch, scattered
    inst[1] = 0  # a patch without nuclei
    nc = rng.integers(0, 3, (3, 5, 9, 11)).astype(np.float32)  # many ties between channels
    for vote in ("argmax", "types"):
        got = assign_types_batch(inst, nc, vote)
        for b in range(3):
            typ = nc[b].argmax(0) if vote == "argmax" else nc[b, 1:].argmax(0) + 1
            want = np.zeros(inst[b].shape, np.uint8)
            for i in range(1, inst[b].max() + 1):
                counts = np.bincount(typ[inst[b] == i], minlength=5)
                counts[0] = 0  # background only wins when no pixel is typed
                want[inst[b] == i] = counts.argmax()
            np.testing.assert_array_equal(got[b], want, err_msg=f"{vote}, patch {b}")
            np.testing.assert_array_equal(assign_types(inst[b], nc[b], vote), want)


def test_batch_postprocess_uses_the_config_vote():
    import torch

    (_, prob, hv, nc), = _soft_predictions(1, seed=8)
    logit = np.log(np.clip(prob, 1e-4, 1 - 1e-4) / np.clip(1 - prob, 1e-4, 1))
    out = {"np": torch.as_tensor(np.stack([-logit / 2, logit / 2]))[None], "hv": torch.as_tensor(hv)[None],
           "nc": torch.as_tensor(nc)[None]}
    inst, typ = postprocess(out, PostprocessConfig.hovernet())
    np.testing.assert_array_equal(typ[0], assign_types(inst[0], nc, "argmax"))


def test_postprocess_config_rejects_bad_values():
    for bad in ({"smooth_size": 4}, {"marker_shape": "square"}, {"type_vote": "mode"}, {"smooth_size": -1}):
        with pytest.raises(ValueError):
            PostprocessConfig(**bad)
    with pytest.raises(ValueError, match="unknown post-processing preset"):
        PostprocessConfig.preset("cellpose")
    assert PostprocessConfig.preset("default") == PostprocessConfig()
    assert PostprocessConfig.from_dict(PostprocessConfig.hovernet().to_dict()) == PostprocessConfig.hovernet()


@pytest.mark.parametrize("n", [1, 2, 5, 11, 64])
@pytest.mark.parametrize("size", [3, 5, 21])
def test_filter_matrices_equal_scipy_mirror_correlation(n, size):
    from hovernet.postprocess import _filter_matrix, sobel_kernels

    x = np.random.default_rng(n).random((n, 7))
    for derivative in (True, False):
        k = sobel_kernels(size)[0 if derivative else 1]
        np.testing.assert_allclose(_filter_matrix(n, size, derivative) @ x,
                                   ndi.correlate1d(x, k, axis=0, mode="mirror"), atol=1e-12)


def test_disk_opening_by_rows_equals_scikit_image():
    rng = np.random.default_rng(9)
    for r in (1, 2, 3):
        a = ndi.binary_dilation(rng.random((6, 33, 29)) > 0.94, iterations=2)  # blobs cut by the edges
        ours = _morph_rows(_morph_rows(a, disk(r).astype(bool), True), disk(r).astype(bool), False)
        np.testing.assert_array_equal(ours, np.stack([opening(p.astype(np.uint8), disk(r)) > 0 for p in a]))


@pytest.mark.parametrize("cfg", [PostprocessConfig(), PostprocessConfig.monai(), PostprocessConfig.hovernet(),
                                 PostprocessConfig(connectivity=2, smooth_sigma=2.0)], ids=["default", "monai",
                                                                                          "hovernet", "conn2"])
def test_batch_equals_patch_by_patch(cfg):
    """One pass over a stack gives each patch exactly what it gets alone: nothing (labels, holes,
    normalisation, borders, the flood) leaks between neighbouring patches."""
    preds = _soft_predictions(5, seed=10)
    probs = np.stack([p for _, p, _, _ in preds])
    hvs = np.stack([h for _, _, h, _ in preds])
    ncs = np.stack([c for *_, c in preds])
    probs[2] = 0.0  # an empty patch between full ones
    probs[3, :, :48] = 1.0  # a patch whose left half is one blob touching the edge and the next patch
    probs[4] = probs[3, ::-1]  # touches the same positions as its neighbour
    batch = instances_from_np_hv_batch(probs, hvs, cfg)
    alone = np.stack([instances_from_np_hv(p, h, cfg) for p, h in zip(probs, hvs)])
    np.testing.assert_array_equal(batch, alone)
    assert batch[2].max() == 0 and batch[0].max() >= 5 and batch.dtype == np.int32
    for vote in ("types", "argmax"):
        np.testing.assert_array_equal(assign_types_batch(batch, ncs, vote),
                                      np.stack([assign_types(i, c, vote) for i, c in zip(batch, ncs)]))


def test_batch_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"np \[N, H, W\]"):
        instances_from_np_hv_batch(np.zeros((2, 8, 8)), np.zeros((2, 2, 8, 9)))
    with pytest.raises(ValueError, match=r"inst \[N, H, W\]"):
        assign_types_batch(np.zeros((2, 8, 8), np.int32), np.zeros((3, 4, 8, 8)))
