"""Targets and watershed post-processing: round trips on hand-built and real CoNSeP masks, MONAI parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hovernet.config import PostprocessConfig
from hovernet.metrics import compute_pq
from hovernet.postprocess import assign_types, instance_energy, instances_from_np_hv, postprocess, sobel_kernels
from hovernet.targets import HoVerNetTargetsd, compute_targets


def _touching_pair() -> tuple[np.ndarray, np.ndarray]:
    """Two 12x12 nuclei of one type sharing an edge: only hv can tell them apart."""
    inst = np.zeros((32, 32), np.int32)
    inst[8:20, 4:16], inst[8:20, 16:28] = 1, 2
    return inst, (inst > 0).astype(np.uint8) * 3


def test_targets_shapes_ranges_and_orientation():
    inst, typ = _touching_pair()
    t = compute_targets(torch.as_tensor(inst)[None], typ)
    assert t["np"].shape == (32, 32) and t["hv"].shape == (2, 32, 32) and t["nc"].shape == (32, 32)
    assert torch.equal(t["np"], torch.as_tensor(inst > 0).long())
    assert set(t["nc"].unique().tolist()) == {0, 3}
    h, v = t["hv"]
    assert float(h.min()) == -1.0 and float(h.max()) == 1.0 and float(h[inst == 0].abs().max()) == 0.0
    assert h[14, 4] == -1.0 and h[14, 15] == 1.0 and h[14, 16] == -1.0  # left to right inside each nucleus
    assert v[8, 10] == -1.0 and v[19, 10] == 1.0  # top to bottom


def test_targets_dict_transform_and_bad_input():
    inst, typ = _touching_pair()
    d = HoVerNetTargetsd()({"image": torch.zeros(3, 32, 32), "inst": inst[None], "type": typ[None]})
    assert {"np", "hv", "nc", "image"} <= set(d)
    with pytest.raises(ValueError, match="shapes differ"):
        compute_targets(inst, typ[:16])
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        compute_targets(np.zeros((2, 4, 4), np.int32), np.zeros((2, 4, 4), np.int32))


def test_touching_nuclei_are_separated_by_hv():
    inst, typ = _touching_pair()
    t = compute_targets(inst, typ)
    pred = instances_from_np_hv(t["np"].numpy().astype(np.float32), t["hv"].numpy())
    assert pred.max() == 2 and compute_pq(pred, inst)["pq"] > 0.9
    # without hv (flat maps) the pair merges: the hv branch is what separates them
    merged = instances_from_np_hv(t["np"].numpy().astype(np.float32), np.zeros((2, 32, 32), np.float32))
    assert merged.max() == 1


def test_fast_fill_holes_equals_scipy():
    from scipy import ndimage as ndi

    from hovernet.postprocess import _fill_holes

    rng = np.random.default_rng(0)
    # one call on a stack fills each patch on its own: a hole open to a patch edge stays open
    m = np.stack([ndi.binary_opening(rng.random((48, 48)) > 0.45) for _ in range(20)])
    np.testing.assert_array_equal(_fill_holes(m), np.stack([ndi.binary_fill_holes(a) for a in m]))


def test_empty_prediction_gives_no_instances():
    out = instances_from_np_hv(np.zeros((16, 16), np.float32), np.zeros((2, 16, 16), np.float32))
    assert out.shape == (16, 16) and out.max() == 0


def test_assign_types_majority_vote_ignores_background():
    inst = np.zeros((4, 10), np.int32)
    inst[:, :5] = 1
    nc = np.zeros((3, 4, 10), np.float32)
    nc[0] = 5.0  # background most likely everywhere: still a type per nucleus
    nc[2, :, :3], nc[1, :, 3:5] = 1.0, 1.0  # 12 pixels say type 2, 8 say type 1
    typ = assign_types(inst, nc)
    assert (typ[inst == 1] == 2).all() and (typ[inst == 0] == 0).all()


def test_batch_postprocess_shapes():
    inst, typ = _touching_pair()
    t = compute_targets(inst, typ)
    fg = 2 * t["np"].float() - 1
    logits = torch.stack([-fg, fg])[None] * 10
    nc = torch.nn.functional.one_hot(t["nc"], 4).permute(2, 0, 1)[None].float()
    insts, types = postprocess({"np": logits, "hv": t["hv"][None], "nc": nc})
    assert insts.shape == (1, 32, 32) and insts.max() == 2 and set(np.unique(types[0])) == {0, 3}


@pytest.mark.parametrize("size", [3, 5, 7])
def test_sobel_kernels_and_energy_match_monai(size):
    from monai.apps.pathology.transforms.post.array import GenerateInstanceBorder
    from monai.transforms import SobelGradients

    ref = SobelGradients(kernel_size=size)
    diff, smooth = sobel_kernels(size)
    np.testing.assert_allclose(diff, ref.kernel_diff.numpy(), atol=1e-7)
    np.testing.assert_allclose(smooth, ref.kernel_smooth.numpy(), atol=1e-7)
    inst, typ = _touching_pair()
    t = compute_targets(inst, typ)
    mask = t["np"].numpy().astype(np.float32)
    ours = instance_energy(mask, t["hv"].numpy(), size)
    theirs = GenerateInstanceBorder(kernel_size=size)(mask[None], t["hv"].numpy())[0]
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_ground_truth_maps_recover_real_consep_instances(consep_dir):
    """np + hv derived from real masks -> watershed -> the same instances (PQ >= 0.95)."""
    from scipy.io import loadmat

    tp = fp = fn = 0
    iou_sum = 0.0
    # the densest crops of CoNSeP Train (125-169 nuclei each), and a sparse one
    for name, (y, x) in [("train_18", (0, 744)), ("train_13", (0, 744)), ("train_23", (372, 744)),
                         ("train_17", (372, 0)), ("train_1", (0, 0))]:
        inst = loadmat(consep_dir / "Labels" / f"{name}.mat")["inst_map"][y:y + 256, x:x + 256].astype(np.int32)
        t = compute_targets(inst, (inst > 0).astype(np.uint8))
        pred = instances_from_np_hv(t["np"].numpy().astype(np.float32), t["hv"].numpy(), PostprocessConfig())
        s = compute_pq(pred, inst)
        tp, fp, fn, iou_sum = tp + s["tp"], fp + s["fp"], fn + s["fn"], iou_sum + s["iou_sum"]
    assert tp > 300  # a real, crowded test
    assert iou_sum / (tp + 0.5 * fp + 0.5 * fn) >= 0.95
