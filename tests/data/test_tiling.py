"""Tiling: patch origins, the tissue mask, sequential relabelling and tile_image provenance."""

import numpy as np
import pytest

from nasdm_aug.data.tile import Tile
from nasdm_aug.data.tiling import TilingConfig, patch_origins, relabel_sequential, tile_image, tissue_mask

PINK = (230, 150, 200)  # eosin-like stain: saturation 80/230 = 0.35
WHITE = (245, 245, 245)


@pytest.mark.parametrize("length,patch,stride,want", [
    (1000, 128, 64, [*range(0, 832 + 1, 64), 872]),  # Lizard-sized: last origin snapped to the edge
    (256, 128, 64, [0, 64, 128]),  # fits exactly: no extra origin
    (300, 128, 64, [0, 64, 128, 172]),
    (128, 128, 64, [0]),
    (100, 128, 64, []),  # smaller than one patch
    (40, 16, 16, [0, 16, 24]),
])
def test_patch_origins(length, patch, stride, want):
    assert patch_origins(length, patch, stride) == want


def test_tissue_mask_saturation_threshold():
    image = np.array([[PINK, WHITE, (0, 0, 0), (100, 100, 95)]], np.uint8)
    np.testing.assert_array_equal(tissue_mask(image), [[True, False, False, False]])
    # (100 - 95) / 100 = 0.05 is not above 0.05 but is above 0.04
    np.testing.assert_array_equal(tissue_mask(image, 0.04), [[True, False, False, True]])
    assert not tissue_mask(image, 0.5).any()


def test_relabel_sequential_known_answer_and_big_ids():
    inst = np.array([[0, 9, 9], [70000, 0, 3]])
    np.testing.assert_array_equal(relabel_sequential(inst), [[0, 2, 2], [3, 0, 1]])
    big = np.array([[0, 2**31 - 1], [40, 40]], np.int64)  # sparse ids take the np.unique path
    out = relabel_sequential(big)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[0, 2], [1, 1]])
    np.testing.assert_array_equal(relabel_sequential(np.array([[5, 5]])), [[1, 1]])  # no background


def _half_tissue_tile(h=64, w=96):
    """Tissue (pink) in columns < 40, background (white) elsewhere; a grid of 4x4 nuclei."""
    image = np.empty((h, w, 3), np.uint8)
    image[:] = WHITE
    image[:, :40] = PINK
    inst = np.zeros((h, w), np.int32)
    k = 0
    for y in range(2, h - 4, 8):
        for x in range(2, w - 4, 8):
            k += 1
            inst[y:y + 4, x:x + 4] = k
    typ = ((inst % 6) + 1).astype(np.uint8) * (inst > 0)
    return Tile(image, inst, typ, "half")


def test_tile_image_drops_background_and_keeps_provenance():
    tile = _half_tissue_tile()
    cfg = TilingConfig(patch_size=32, stride=16, min_tissue=0.5)
    patches = tile_image(tile, cfg)
    # origins y in {0,16,32}, x in {0,16,32,48,64}; tissue fraction of x is (40 - x) / 32 clipped
    # to [0, 1]: x=0 -> 1, x=16 -> 0.75, x=32 -> 0.25 (dropped), beyond -> 0
    assert sorted(set(patches.x.tolist())) == [0, 16] and sorted(set(patches.y.tolist())) == [0, 16, 32]
    assert len(patches) == 6 and patches.source == "half"
    np.testing.assert_allclose(sorted(set(patches.tissue.tolist())), [0.75, 1.0])
    for k in range(len(patches)):
        y, x = patches.y[k], patches.x[k]
        np.testing.assert_array_equal(patches.image[k], tile.image[y:y + 32, x:x + 32])
        np.testing.assert_array_equal(patches.type[k], tile.type[y:y + 32, x:x + 32])
        src, new = tile.inst[y:y + 32, x:x + 32], patches.inst[k]
        ids = np.unique(new)
        np.testing.assert_array_equal(ids, np.arange(ids.max() + 1))  # 1..N with background
        # the same partition: old and new ids map one to one
        pairs = np.unique(np.stack([src.ravel(), new.ravel()]), axis=1)
        assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
    assert patches.inst.dtype == np.int32 and patches.image.dtype == np.uint8


def test_tile_image_min_tissue_zero_keeps_every_window_and_small_images_give_none():
    tile = _half_tissue_tile()
    assert len(tile_image(tile, TilingConfig(32, 16, min_tissue=0.0))) == 3 * 5
    assert len(tile_image(tile, TilingConfig(128, 64))) == 0


@pytest.mark.parametrize("kwargs", [
    {"patch_size": 0}, {"stride": 0}, {"min_tissue": 1.5}, {"min_tissue": -0.1}, {"tissue_threshold": 1.0},
])
def test_tiling_config_rejects(kwargs):
    with pytest.raises(ValueError):
        TilingConfig(**kwargs)
