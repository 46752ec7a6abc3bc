"""benchmarks/patch_colour_strays.py: its statistics have the values their definitions give."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from skimage.color import rgb2hed, rgb2lab

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import patch_colour_strays as pcs  # noqa: E402

PINK = (230, 170, 210)
PURPLE = (60, 30, 120)


def _patch(blobs=(), nuclei=()):
    """A pink 32-px patch with dark 3x3 squares at ``blobs`` and mask nuclei (3x3) at ``nuclei``."""
    img = np.empty((32, 32, 3), np.uint8)
    img[:] = PINK
    inst = np.zeros((32, 32), np.int32)
    for y, x in blobs:
        img[y:y + 3, x:x + 3] = PURPLE
    for k, (y, x) in enumerate(nuclei, 1):
        inst[y:y + 3, x:x + 3] = k
    return img, inst


def test_blobs_count_only_off_the_mask():
    threshold = float(rgb2hed(np.array([[PINK, PURPLE]], np.uint8))[0, :, 0].mean())  # between the two
    cases = [  # (blobs, nuclei) -> off-mask blobs, mask-nucleus dark share
        (([(5, 5), (20, 20)], []), 2),
        (([(5, 5), (20, 20)], [(5, 5)]), 1),  # one blob is the nucleus itself
        (([(5, 5)], [(5, 9)]), 0),  # 1 px from a nucleus: within 3 px, not a stray
        (([(5, 5)], [(5, 12)]), 1),  # 4 px away
    ]
    imgs, insts = zip(*[_patch(*c[0]) for c in cases])
    for (args, want), img, inst in zip(cases, imgs, insts):
        assert pcs.patch_stats(img[None], inst[None], threshold)["strays"] == want, args
    both = pcs.patch_stats(np.stack(imgs[:2]), np.stack(insts[:2]), threshold)
    assert both["strays"] == 1.5 and both["mask_nuclei_dark"] == 1.0  # the nucleus of case 2 is drawn
    undrawn = pcs.patch_stats(*map(lambda a: a[None], _patch([], [(5, 5)])), threshold)
    assert undrawn["mask_nuclei_dark"] == 0.0 and undrawn["strays"] == 0


def test_background_colour_and_its_spread():
    img, inst = _patch([], [(5, 5)])
    lab = rgb2lab(np.array([[PINK]], np.uint8))[0, 0]
    one = pcs.patch_stats(img[None], inst[None], 1.0)
    assert one["L_median"] == pytest.approx(lab[0], abs=1e-4) and one["a_median"] == pytest.approx(lab[1], abs=1e-4)
    assert one["L_spread"] == 0 and one["texture"] == pytest.approx(0, abs=1e-6)
    # ten patches of lightness steps: p90 - p10 of their backgrounds' L*, nuclei pixels left out
    imgs = np.stack([np.full((8, 8, 3), 100 + 10 * k, np.uint8) for k in range(10)])
    insts = np.zeros((10, 8, 8), np.int32)
    imgs[:, :2, :2] = 0
    insts[:, :2, :2] = 1
    L = rgb2lab(imgs[:, 4, 4][None])[0, :, 0]
    stats = pcs.patch_stats(imgs, insts, 1.0)
    assert stats["L_spread"] == pytest.approx(np.percentile(L, 90) - np.percentile(L, 10), abs=1e-4)
    assert stats["L_median"] == pytest.approx(np.median(L), abs=1e-4)


def test_sampling_specs():
    opts, guidance, interval = pcs.parse_sampling("ddim:50:1.5:0-5.42:0.5")
    assert (opts.sampler, opts.steps, opts.eta, guidance, interval) == ("ddim", 50, 0.5, 1.5, (0.0, 5.42))
    opts, guidance, interval = pcs.parse_sampling("ddpm:25:1")
    assert (opts.sampler, opts.steps, guidance, interval) == ("ddpm", 25, 1.0, None)
    assert pcs.parse_sampling("ddim:50:1:all:0.3")[2] is None
