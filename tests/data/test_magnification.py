"""Magnification: rescale_tile (area-mean image, nearest labels, slivers dropped, relabelled),
check_same_scale, and ``prepare --magnification`` on hand-made CoNSeP and Lizard folders."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from PIL import Image

from nasdm_aug.data.magnification import NATIVE_MAGNIFICATION, check_same_scale, microns_per_pixel, rescale_tile
from nasdm_aug.data.prepare import PrepareConfig, prepare
from nasdm_aug.data.store import PatchStore
from nasdm_aug.data.tile import Tile
from nasdm_aug.types import CONSEP, LIZARD
from nasdm_aug.utils import InputError


def test_native_magnifications_and_pixel_size():
    assert NATIVE_MAGNIFICATION["lizard"] == NATIVE_MAGNIFICATION["conic"] == NATIVE_MAGNIFICATION["toy"] == 20.0
    assert NATIVE_MAGNIFICATION["consep"] == NATIVE_MAGNIFICATION["pannuke"] == 40.0
    assert microns_per_pixel(40) == 0.25 and microns_per_pixel(20) == 0.5 and microns_per_pixel(10) == 1.0


# -- rescale_tile ------------------------------------------------------------------------------------
def _tile() -> Tile:
    """8x8: old ids 3, 5 survive the halving; 7 (a 4x1 strip) and 9 (a 2x2 block) become slivers."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    inst = np.zeros((8, 8), np.int32)
    typ = np.zeros((8, 8), np.uint8)
    for old_id, t, (ys, xs) in [
        (5, 2, (slice(0, 4), slice(0, 4))),  # -> out[0:2, 0:2], 4 px
        (3, 1, (slice(4, 8), slice(4, 8))),  # -> out[2:4, 2:4], 4 px
        (7, 3, (slice(4, 8), slice(1, 2))),  # -> out[2:4, 0], 2 px: a sliver
        (9, 4, (slice(0, 2), slice(6, 8))),  # -> out[0, 3], 1 px: a sliver
    ]:
        inst[ys, xs] = old_id
        typ[ys, xs] = t
    return Tile(image=image, inst=inst, type=typ, name="hand")


def test_rescale_half_image_is_the_block_mean():
    tile = _tile()
    out = rescale_tile(tile, 0.5)
    want = tile.image.astype(np.float64).reshape(4, 2, 4, 2, 3).mean(axis=(1, 3))
    assert out.image.shape == (4, 4, 3) and out.image.dtype == np.uint8
    assert np.abs(out.image.astype(np.float64) - want).max() <= 1.0  # PIL's box filter rounds


def test_rescale_half_labels_are_nearest_samples():
    # nearest sampling takes the centre of each 2x2 block: input rows/cols 1, 3, 5, 7
    tile = _tile()
    sampled = tile.inst[1::2, 1::2]
    np.testing.assert_array_equal(sampled, [[5, 5, 0, 9], [5, 5, 0, 0], [7, 0, 3, 3], [7, 0, 3, 3]])
    out = rescale_tile(tile, 0.5, min_area=0)  # nothing dropped: the raw samples, relabelled
    np.testing.assert_array_equal(out.inst, [[2, 2, 0, 4], [2, 2, 0, 0], [3, 0, 1, 1], [3, 0, 1, 1]])
    np.testing.assert_array_equal(out.type, tile.type[1::2, 1::2])


def test_rescale_drops_slivers_and_relabels_in_old_id_order():
    out = rescale_tile(_tile(), 0.5, min_area=4)
    # 7 (2 px) and 9 (1 px) are gone with their type pixels; 3 -> 1 and 5 -> 2 (old-id order,
    # although 5 comes first in raster order); each keeps its type
    np.testing.assert_array_equal(out.inst, [[2, 2, 0, 0], [2, 2, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]])
    np.testing.assert_array_equal(out.type, [[2, 2, 0, 0], [2, 2, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]])
    assert out.inst.dtype == np.int32 and out.type.dtype == np.uint8 and out.name == "hand"
    # a higher threshold drops the 4-px nuclei too
    gone = rescale_tile(_tile(), 0.5, min_area=5)
    assert not gone.inst.any() and not gone.type.any()


def test_rescale_drops_a_cut_off_piece_but_keeps_the_nucleus():
    inst = np.zeros((8, 8), np.int32)
    inst[0:4, 0:4] = 1  # -> out[0:2, 0:2]
    inst[4, :] = 1  # a bridge on an unsampled row ...
    inst[5, 5] = 1  # ... to one sampled pixel: out[2, 2], diagonal to the block (not 4-connected)
    typ = (inst > 0).astype(np.uint8) * 3
    tile = Tile(image=np.zeros((8, 8, 3), np.uint8), inst=inst, type=typ, name="bridge")
    out = rescale_tile(tile, 0.5, min_area=2)
    want = np.zeros((4, 4), np.int32)
    want[0:2, 0:2] = 1
    np.testing.assert_array_equal(out.inst, want)
    np.testing.assert_array_equal(out.type, want * 3)


def test_rescale_third_samples_block_centres():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)
    inst = np.arange(81, dtype=np.int32).reshape(9, 9)  # every pixel its own instance (0 at the corner)
    tile = Tile(image=image, inst=inst, type=(inst % 3 + 1).astype(np.uint8) * (inst > 0), name="third")
    out = rescale_tile(tile, 1 / 3, min_area=0)
    want = image.astype(np.float64).reshape(3, 3, 3, 3, 3).mean(axis=(1, 3))
    assert np.abs(out.image.astype(np.float64) - want).max() <= 1.0
    centres = inst[1::3, 1::3]  # the centre of each 3x3 block: rows/cols 1, 4, 7
    np.testing.assert_array_equal(out.inst, np.arange(1, 10).reshape(3, 3))
    np.testing.assert_array_equal(out.type, tile.type[1::3, 1::3])
    assert (np.argsort(centres.ravel()) == np.arange(9)).all()


def test_rescale_factor_one_is_the_tile():
    tile = _tile()
    out = rescale_tile(tile, 1.0)
    for key in ("image", "inst", "type"):
        np.testing.assert_array_equal(getattr(out, key), getattr(tile, key))


@pytest.mark.parametrize("factor", [1.5, 2.0, 0.0, -0.5])
def test_rescale_refuses_factors_outside_zero_one(factor):
    with pytest.raises(ValueError, match="must lie in"):
        rescale_tile(_tile(), factor)


def test_rescale_refuses_less_than_one_pixel():
    tile = Tile(image=np.zeros((1, 1, 3), np.uint8), inst=np.zeros((1, 1), np.int32),
                type=np.zeros((1, 1), np.uint8), name="dot")
    with pytest.raises(ValueError, match="smaller than one pixel"):
        rescale_tile(tile, 0.25)


# -- check_same_scale ---------------------------------------------------------------------------------
def test_check_same_scale_messages():
    with pytest.raises(InputError) as exc:
        check_same_scale("model m", {"patch_size": 64, "magnification": 20}, "store s", {"patch_size": 128})
    assert str(exc.value) == "model m has 64-px patches but store s has 128-px patches"
    with pytest.raises(InputError) as exc:
        check_same_scale("model m", {"patch_size": 64, "magnification": 40.0}, "store s",
                         {"patch_size": 64, "magnification": 20.0})
    assert str(exc.value) == "model m is at 40x but store s is at 20x magnification"


def test_check_same_scale_accepts_the_same_and_skips_unrecorded():
    check_same_scale("a", {"patch_size": 64, "magnification": 20}, "b", {"patch_size": 64, "magnification": 20.0})
    check_same_scale("a", {"patch_size": 64, "magnification": 20.0}, "b", {"patch_size": 64, "magnification": None})
    check_same_scale("a", {"patch_size": 64, "magnification": None}, "b", {"patch_size": 64, "magnification": 40})
    check_same_scale("a", {"patch_size": 64}, "b", {"magnification": 40})  # nothing recorded on both sides
    check_same_scale("a", {}, "b", {})


# -- prepare ------------------------------------------------------------------------------------------
BG = (230, 170, 200)  # pink: saturated enough to count as tissue
# per image: (y, x, side, type); the 2-px squares become 1-px slivers at half size
NUCLEI = {
    "a": [(8, 8, 8, 1), (8, 40, 8, 2), (40, 8, 8, 3), (72, 72, 12, 4), (100, 100, 2, 1)],
    "b": [(16, 16, 8, 2), (48, 80, 8, 2), (96, 32, 10, 3), (120, 120, 2, 4)],
}


def _draw(nuclei, size: int = 128):
    image = np.empty((size, size, 3), np.uint8)
    image[:] = BG
    inst = np.zeros((size, size), np.int32)
    typ = np.zeros((size, size), np.int32)
    for k, (y, x, s, t) in enumerate(nuclei, start=1):
        inst[y:y + s, x:x + s] = k
        typ[y:y + s, x:x + s] = t
        image[y:y + s, x:x + s] = (110 - 10 * t, 40 + 5 * t, 150 - 5 * t)
    return image, inst, typ


def _counts(names, table, keep_slivers: bool) -> dict[str, int]:
    out = dict.fromkeys(table.names, 0)
    for name in names:
        for _, _, s, t in NUCLEI[name]:
            if s > 2 or keep_slivers:
                out[table.names[t - 1]] += 1
    return out


@pytest.fixture
def consep_src(tmp_path):
    src = tmp_path / "consep"
    (src / "Images").mkdir(parents=True)
    (src / "Labels").mkdir()
    for name, nuclei in NUCLEI.items():
        image, inst, typ = _draw(nuclei)
        Image.fromarray(image).save(src / "Images" / f"{name}.png")
        inst_type = np.array([[t] for *_, t in nuclei], np.int32)
        scipy.io.savemat(src / "Labels" / f"{name}.mat", {"inst_map": inst, "type_map": typ, "inst_type": inst_type})
    return src


@pytest.fixture
def lizard_src(tmp_path):
    src = tmp_path / "lizard"
    (src / "Images").mkdir(parents=True)
    (src / "Labels").mkdir()
    for name, nuclei in NUCLEI.items():
        image, inst, _ = _draw(nuclei)
        Image.fromarray(image).save(src / "Images" / f"{name}.png")
        ids = np.arange(1, len(nuclei) + 1, dtype=np.int32)[:, None]
        classes = np.array([[t] for *_, t in nuclei], np.int32)
        scipy.io.savemat(src / "Labels" / f"{name}.mat", {"inst_map": inst, "id": ids, "class": classes})
    return src


def _prepare(src, out, fmt="consep", **kw):
    cfg = PrepareConfig(format=fmt, src=str(src), out=str(out), patch_size=32, stride=32, split_counts=(1, 0, 0), **kw)
    return prepare(cfg, progress=False)


def test_prepare_consep_at_20x_halves_and_records_the_scale(consep_src, tmp_path):
    out = tmp_path / "c20.h5"
    summary = _prepare(consep_src, out, magnification=20)
    with PatchStore(out) as store:
        assert store.magnification == 20.0
        assert store.attrs["magnification"] == 20.0
        assert store.attrs["microns_per_pixel"] == 0.5
        assert store.attrs["source_magnification"] == 40.0
        assert store.scale_info() == {"patch_size": 32, "magnification": 20.0}
        # 128 px at 40x -> 64 px at 20x -> 2 x 2 patches of 32 px per image
        assert len(store) == summary["patches"] == 2 * 4
        assert sorted(set(store.meta("y"))) == [0, 32] and sorted(set(store.meta("x"))) == [0, 32]
        # each patch is a crop of the box-downsampled image and of the nearest-sampled labels
        source, ys, xs = store.meta("source"), store.meta("y"), store.meta("x")
        for i in range(len(store)):
            item = store[i]
            image, inst, typ = _draw(NUCLEI[str(source[i])])
            small = image.astype(np.float64).reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))
            y, x = int(ys[i]), int(xs[i])
            assert np.abs(item["image"].astype(np.float64) - small[y:y + 32, x:x + 32]).max() <= 1.0
            want_type = typ[1::2, 1::2][y:y + 32, x:x + 32].copy()
            sliver = np.isin(inst[1::2, 1::2][y:y + 32, x:x + 32],
                             [k for k, (*_, s, _) in enumerate(NUCLEI[str(source[i])], start=1) if s == 2])
            want_type[sliver] = 0
            np.testing.assert_array_equal(item["type"], want_type)
    assert summary["magnification"] == 20.0 and summary["source_magnification"] == 40.0
    # nuclei counted after resampling: the 1-px slivers are gone
    assert summary["nuclei"] == _counts(NUCLEI, CONSEP, keep_slivers=False)
    assert summary["splits"]["Test"]["images"] == 1 and summary["splits"]["Train"]["images"] == 1
    for split in ("Test", "Train"):
        (name,) = PatchStore(out).splits[split]
        assert summary["splits"][split]["nuclei"] == _counts([name], CONSEP, keep_slivers=False)
        assert summary["splits"][split]["patches"] == 4


def test_prepare_consep_native_and_min_area(consep_src, tmp_path):
    summary = _prepare(consep_src, tmp_path / "c40.h5")
    with PatchStore(tmp_path / "c40.h5") as store:
        assert store.magnification == 40.0 and store.attrs["microns_per_pixel"] == 0.25
        assert len(store) == 2 * 16  # no resampling: 4 x 4 patches per 128-px image
    assert summary["nuclei"] == _counts(NUCLEI, CONSEP, keep_slivers=True)
    # min_nucleus_area 0 keeps the 1-px slivers at 20x
    summary = _prepare(consep_src, tmp_path / "c20k.h5", magnification=20, min_nucleus_area=0)
    assert summary["nuclei"] == _counts(NUCLEI, CONSEP, keep_slivers=True)


def test_prepare_refuses_upsampling(consep_src, tmp_path):
    with pytest.raises(ValueError, match="above the source's 40x"):
        PrepareConfig(format="consep", src=str(consep_src), out=str(tmp_path / "x.h5"), magnification=60)
    with pytest.raises(ValueError, match="above the source's 20x"):
        PrepareConfig(format="lizard", src=str(consep_src), out=str(tmp_path / "x.h5"), magnification=40)
    assert not (tmp_path / "x.h5").exists()


def test_prepare_lizard_default_keeps_20x_without_resampling(lizard_src, tmp_path):
    plain = _prepare(lizard_src, tmp_path / "plain.h5", fmt="lizard")
    at20 = _prepare(lizard_src, tmp_path / "at20.h5", fmt="lizard", magnification=20)
    assert plain["nuclei"] == at20["nuclei"] == _counts(NUCLEI, LIZARD, keep_slivers=True)
    with PatchStore(tmp_path / "plain.h5") as a, PatchStore(tmp_path / "at20.h5") as b:
        assert a.magnification == b.magnification == 20.0
        assert a.attrs["source_magnification"] == b.attrs["source_magnification"] == 20.0
        assert a.attrs["microns_per_pixel"] == 0.5
        assert len(a) == len(b) == 2 * 16
        for key in ("image", "inst", "type"):
            ra, rb = a.read(range(len(a)), [key])[key], b.read(range(len(b)), [key])[key]
            assert ra.tobytes() == rb.tobytes()
        # and the pixels are the source's own
        source, ys, xs = a.meta("source"), a.meta("y"), a.meta("x")
        for i in range(len(a)):
            image, _, _ = _draw(NUCLEI[str(source[i])])
            y, x = int(ys[i]), int(xs[i])
            np.testing.assert_array_equal(a[i]["image"], image[y:y + 32, x:x + 32])


def test_prepare_lizard_with_a_given_source_magnification_halves(lizard_src, tmp_path):
    summary = _prepare(lizard_src, tmp_path / "l.h5", fmt="lizard", source_magnification=40, magnification=20)
    with PatchStore(tmp_path / "l.h5") as store:
        assert store.attrs["source_magnification"] == 40.0 and store.magnification == 20.0
        assert len(store) == 2 * 4
    assert summary["nuclei"] == _counts(NUCLEI, LIZARD, keep_slivers=False)
