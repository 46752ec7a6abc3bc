"""Haematoxylin of mask nuclei against the tissue between them: known answers from colours made by
scikit-image's own inverse deconvolution (``hed2rgb``), the margin, the per-patch weighting, the
chunked store path, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.color import hed2rgb

import nasdm_aug.data.stain as stain_data
from nasdm_aug.data.store import PatchStore
from nasdm_aug.data.store_writer import PatchStoreWriter
from nasdm_aug.metrics.stain import (
    compare_off_mask_blobs,
    compare_stain,
    haematoxylin,
    nucleus_haematoxylin,
    off_mask_blobs,
    stain_statistics,
    store_off_mask_blobs,
    store_stain,
)
from nasdm_aug.types import LIZARD

SIZE = 24


def _colour(h: float, e: float = 0.05) -> np.ndarray:
    """The uint8 RGB colour of haematoxylin ``h`` and eosin ``e`` (optical density), and its measured H."""
    rgb = hed2rgb(np.array([[[h, e, 0.0]]]))[0, 0]
    return (rgb * 255).round().clip(0, 255).astype(np.uint8)


H_NUC, H_TISSUE, H_RING = 0.08, 0.02, 0.05
NUC, TISSUE, RING = _colour(H_NUC), _colour(H_TISSUE), _colour(H_RING)


def _h(colour: np.ndarray) -> float:
    return float(haematoxylin(colour[None, None])[0, 0])


def _patch(box: tuple[int, int, int, int] | None, ring: int = 0):
    """A patch of ``TISSUE`` with one square nucleus ``box`` (y0, y1, x0, x1) in ``NUC``, optionally
    surrounded by a ``ring``-px band of ``RING``."""
    img = np.broadcast_to(TISSUE, (SIZE, SIZE, 3)).copy()
    inst = np.zeros((SIZE, SIZE), np.int32)
    if box is not None:
        y0, y1, x0, x1 = box
        if ring:
            img[y0 - ring:y1 + ring, x0 - ring:x1 + ring] = RING
        img[y0:y1, x0:x1] = NUC
        inst[y0:y1, x0:x1] = 1
    return img, inst


def test_haematoxylin_reads_back_the_density_a_colour_was_made_with():
    # uint8 rounding moves the read-back density by well under 1% at these densities
    for h in (0.02, 0.05, 0.08):
        assert _h(_colour(h)) == pytest.approx(h, rel=0.02)
    assert _h(_colour(0.08)) > _h(_colour(0.05)) > _h(_colour(0.02))


def test_nuclei_tissue_and_contrast_are_the_painted_densities():
    img, inst = _patch((8, 14, 8, 14))
    s = stain_statistics(img[None], inst[None])
    assert s["n"] == 1
    assert s["nuclei"] == pytest.approx(_h(NUC), abs=1e-9)
    assert s["stroma"] == pytest.approx(_h(TISSUE), abs=1e-9)
    assert s["contrast"] == pytest.approx(_h(NUC) / _h(TISSUE), rel=1e-9)
    prof = dict(zip(s["profile"]["distance"], s["profile"]["haematoxylin"]))
    # inside (<= 0) the nucleus colour, outside (>= 1) the tissue colour; -3 is the centre of a 6-px square
    assert all(prof[d] == pytest.approx(_h(NUC)) for d in (-2, -1, 0))
    assert all(prof[d] == pytest.approx(_h(TISSUE)) for d in (1, 2, 5))


def test_a_halo_within_the_margin_is_left_out_of_the_tissue():
    img, inst = _patch((8, 14, 8, 14), ring=2)  # a 2-px band of RING just outside the nucleus
    s = stain_statistics(img[None], inst[None])
    assert s["stroma"] == pytest.approx(_h(TISSUE), abs=1e-9)
    assert stain_statistics(img[None], inst[None], margin=0)["stroma"] > _h(TISSUE) + 1e-4
    prof = dict(zip(s["profile"]["distance"], s["profile"]["haematoxylin"]))
    assert prof[1] == pytest.approx(_h(RING)) and prof[4] == pytest.approx(_h(TISSUE))


def test_every_patch_weighs_the_same():
    a_img, a_inst = _patch((8, 14, 8, 14))
    b_img = np.broadcast_to(_colour(0.04), (SIZE, SIZE, 3)).copy()
    b_img[2:4, 2:4] = NUC
    b_inst = np.zeros((SIZE, SIZE), np.int32)
    b_inst[2:4, 2:4] = 1
    s = stain_statistics(np.stack([a_img, b_img]), np.stack([a_inst, b_inst]))
    assert s["stroma"] == pytest.approx((_h(TISSUE) + _h(_colour(0.04))) / 2, abs=1e-9)
    # a patch without nuclei counts for the tissue, not for the nuclei
    e_img, e_inst = _patch(None)
    s2 = stain_statistics(np.stack([a_img, e_img]), np.stack([a_inst, e_inst]))
    assert s2["nuclei"] == pytest.approx(_h(NUC)) and s2["stroma"] == pytest.approx(_h(TISSUE)) and s2["n"] == 2


def test_compare_stain_ratios_and_undefined_sides():
    real_img, real_inst = _patch((8, 14, 8, 14))
    lilac = np.broadcast_to(_colour(0.04), (SIZE, SIZE, 3)).copy()
    lilac[8:14, 8:14] = NUC
    real = stain_statistics(real_img[None], real_inst[None])
    syn = stain_statistics(lilac[None], real_inst[None])
    c = compare_stain(syn, real)
    assert c["ratio"]["nuclei"] == pytest.approx(1.0)
    assert c["ratio"]["stroma"] == pytest.approx(_h(_colour(0.04)) / _h(TISSUE))
    assert c["ratio"]["contrast"] == pytest.approx(_h(TISSUE) / _h(_colour(0.04))) and c["ratio"]["contrast"] < 1
    empty = stain_statistics(*map(lambda a: a[None], _patch(None)))
    assert math.isnan(empty["nuclei"]) and math.isnan(empty["contrast"])
    assert math.isnan(compare_stain(syn, empty)["ratio"]["nuclei"])


def test_store_path_reads_in_chunks_and_agrees(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    path = tmp_path / "s.h5"
    imgs, insts = [], []
    with PatchStoreWriter(path, patch_size=SIZE, type_table=LIZARD) as w:
        for i in range(7):
            y, x = rng.integers(4, SIZE - 10, 2)
            img, inst = _patch((y, y + 5, x, x + 5), ring=int(rng.integers(0, 3)))
            img = (img.astype(int) + rng.integers(-6, 7, img.shape)).clip(0, 255).astype(np.uint8)
            w.append(img, inst, (inst > 0).astype(np.uint8) * 2, source=f"img{i}")
            imgs.append(img), insts.append(inst)
    monkeypatch.setattr(stain_data, "_CHUNK", 3)
    store = PatchStore(path)
    got = store_stain(store, np.arange(7))
    want = stain_statistics(np.stack(imgs), np.stack(insts))
    assert got["n"] == 7
    for k in ("nuclei", "stroma", "contrast"):
        assert got[k] == pytest.approx(want[k], rel=1e-12)
    assert got["profile"]["distance"] == want["profile"]["distance"]
    assert got["profile"]["haematoxylin"] == pytest.approx(want["profile"]["haematoxylin"], rel=1e-12, nan_ok=True)
    sub = store_stain(store, [1, 4])
    assert sub["nuclei"] == pytest.approx(stain_statistics(np.stack([imgs[1], imgs[4]]), np.stack([insts[1], insts[4]]))["nuclei"])


def _blob_patch(*blobs: tuple[int, int, int, int], colour: np.ndarray = NUC):
    """``_patch`` with a nucleus at rows 2-7, cols 2-7 and unannotated squares ``blobs`` (y0, y1, x0, x1)."""
    img, inst = _patch((2, 8, 2, 8))
    for y0, y1, x0, x1 in blobs:
        img[y0:y1, x0:x1] = colour
    return img, inst


def test_off_mask_blobs_counts_nucleus_dark_regions_away_from_every_nucleus():
    t = (_h(NUC) + _h(TISSUE)) / 2
    cases = [
        ((), 0),
        (((14, 18, 14, 18),), 1),  # 16 px, far from the nucleus
        (((14, 18, 14, 18), (14, 18, 2, 6)), 2),  # two apart
        (((14, 18, 14, 18), (18, 22, 14, 18)), 1),  # touching: one region
        (((14, 17, 14, 18),), 1),  # 12 px, the smallest that counts
        (((14, 17, 14, 17),), 0),  # 9 px: a speck
        (((2, 8, 9, 11),), 0),  # 12 px, but within 2 px of the nucleus: its blurred rim
        (((2, 8, 10, 12),), 1),  # the same 2 px further out: as far as it is 3 px and more from it
    ]
    for blobs, want in cases:
        img, inst = _blob_patch(*blobs)
        assert off_mask_blobs(img[None], inst[None], t).tolist() == [want], blobs
    # a pale blob is tissue; a near-black one is a fold or an artefact, not a nucleus
    img, inst = _blob_patch((14, 18, 14, 18), colour=_colour(0.03))
    assert off_mask_blobs(img[None], inst[None], t).tolist() == [0]
    img, inst = _blob_patch((14, 18, 14, 18), colour=np.array([20, 10, 30], np.uint8))
    assert haematoxylin(np.array([[[20, 10, 30]]], np.uint8))[0, 0] > t
    assert off_mask_blobs(img[None], inst[None], t).tolist() == [0]
    # a patch without nuclei: every dark region counts; patches are counted one by one
    empty, none = _patch(None)
    empty[14:18, 14:18] = NUC
    img, inst = _blob_patch((14, 18, 14, 18), (14, 18, 2, 6))
    assert off_mask_blobs(np.stack([empty, img]), np.stack([none, inst]), t).tolist() == [1, 2]
    with pytest.raises(ValueError, match="differ in size"):
        off_mask_blobs(img[None], inst[None, :-1], t)


def test_nucleus_haematoxylin_is_the_median_nucleus_pixel_and_blobs_read_by_chunk(tmp_path, monkeypatch):
    path = tmp_path / "s.h5"
    shades = (0.03, 0.05, 0.06, 0.08, 0.12)
    imgs, insts = [], []
    with PatchStoreWriter(path, patch_size=SIZE, type_table=LIZARD) as w:
        for i, h in enumerate(shades):  # one 6x6 nucleus of each shade, and i unannotated blobs
            img, inst = _patch((2, 8, 2, 8))
            img[2:8, 2:8] = _colour(h)
            for k in range(i):
                img[14:18, 2 + 5 * k:6 + 5 * k] = NUC
            w.append(img, inst, (inst > 0).astype(np.uint8) * 2, source=f"img{i}")
            imgs.append(img), insts.append(inst)
    monkeypatch.setattr(stain_data, "_CHUNK", 2)
    store = PatchStore(path)
    t = nucleus_haematoxylin(store, np.arange(5))
    assert t == pytest.approx(_h(_colour(0.06)), abs=1e-4)  # the middle shade: same-sized nuclei
    assert nucleus_haematoxylin(store, [0, 1]) == pytest.approx((_h(_colour(0.03)) + _h(_colour(0.05))) / 2, abs=1e-4)
    assert store_off_mask_blobs(store, np.arange(5), t).tolist() == [0, 1, 2, 3, 4]
    assert store_off_mask_blobs(store, [4, 1], t).tolist() == [4, 1]
    assert store_off_mask_blobs(store, np.arange(5), t).tolist() == off_mask_blobs(np.stack(imgs), np.stack(insts), t).tolist()
    # at 40x the same blobs are half the size a nucleus would be: 16 px against 12 * 4, none counts
    with PatchStoreWriter(tmp_path / "s40.h5", patch_size=SIZE, type_table=LIZARD, attrs={"magnification": 40.0}) as w:
        for i, (img, inst) in enumerate(zip(imgs, insts)):
            w.append(img, inst, (inst > 0).astype(np.uint8) * 2, source=f"img{i}")
    store40 = PatchStore(tmp_path / "s40.h5")
    assert store40.magnification == 40.0
    assert store_off_mask_blobs(store40, np.arange(5), t).tolist() == [0, 0, 0, 0, 0]
    with PatchStoreWriter(tmp_path / "e.h5", patch_size=SIZE, type_table=LIZARD) as w:
        img, inst = _patch(None)
        w.append(img, inst, inst.astype(np.uint8), source="e")
    with pytest.raises(ValueError, match="no annotated nucleus"):
        nucleus_haematoxylin(PatchStore(tmp_path / "e.h5"), [0])


def test_compare_off_mask_blobs_measures_both_sides_at_the_real_nucleus_darkness(tmp_path):
    def store(name, nucleus, blobs):
        with PatchStoreWriter(tmp_path / name, patch_size=SIZE, type_table=LIZARD) as w:
            for i in range(2):
                img, inst = _blob_patch(*[(14, 18, 2 + 5 * k, 6 + 5 * k) for k in range(blobs)], colour=_colour(0.09))
                img[2:8, 2:8] = nucleus
                w.append(img, inst, (inst > 0).astype(np.uint8) * 2, source=f"img{i}")
        return PatchStore(tmp_path / name)

    real, syn = store("real.h5", NUC, 1), store("syn.h5", _colour(0.1), 3)
    c = compare_off_mask_blobs(syn, [0, 1], real, [0, 1])
    # the real nuclei (0.08) set the threshold, so the synthetic side's darker nuclei do not move it
    assert c["threshold"] == pytest.approx(_h(NUC), abs=1e-4)
    assert (c["synthetic"], c["real"], c["ratio"]) == (3.0, 1.0, 3.0)
    # real patches without any blob: no ratio; without any nucleus: nothing to measure by
    c = compare_off_mask_blobs(syn, [0, 1], store("clean.h5", NUC, 0), [0, 1])
    assert c["synthetic"] == 3.0 and c["real"] == 0.0 and math.isnan(c["ratio"])
    with PatchStoreWriter(tmp_path / "blank.h5", patch_size=SIZE, type_table=LIZARD) as w:
        img, inst = _patch(None)
        w.append(img, inst, inst.astype(np.uint8), source="img0")
    c = compare_off_mask_blobs(syn, [0, 1], PatchStore(tmp_path / "blank.h5"), [0])
    assert all(math.isnan(v) for v in c.values())


def test_bad_input_is_refused():
    img, inst = _patch((8, 14, 8, 14))
    with pytest.raises(ValueError, match="uint8 RGB"):
        stain_statistics(img[None].astype(np.float32) / 255, inst[None])
    with pytest.raises(ValueError, match="differ in size"):
        stain_statistics(img[None], inst[None, :-1])


def test_bank_stain_script_tables_each_bank_against_the_real_split(tmp_path, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bank_stain

    real, lilac = tmp_path / "real.h5", tmp_path / "lilac.h5"
    with PatchStoreWriter(real, patch_size=SIZE, type_table=LIZARD) as w:
        for i in range(4):
            img, inst = _patch((8, 14, 8, 14))
            w.append(img, inst, (inst > 0).astype(np.uint8) * 2, source=f"img{i}")
        w.set_splits({"Train": ["img0", "img1"], "R1": ["img0"], "R2": ["img2", "img3"], "Test": ["img3"]})
    with PatchStoreWriter(lilac, patch_size=SIZE, type_table=LIZARD, origin="synthetic") as w:
        for i in range(3):
            img = np.broadcast_to(_colour(0.04), (SIZE, SIZE, 3)).copy()
            img[8:14, 8:14] = NUC
            inst = np.zeros((SIZE, SIZE), np.int32)
            inst[8:14, 8:14] = 1
            w.append(img, inst, inst.astype(np.uint8) * 2, parent=-1)
    out = bank_stain.main(["--real", f"{real}:R2", "--bank", f"lilac={lilac}", "--bank", f"same={real}:Train",
                           "--json", str(tmp_path / "s.json"), "--plot", str(tmp_path / "p.png"),
                           "--sheet", str(tmp_path / "sheet.png"), "--sheet-rows", "2"])
    from PIL import Image

    assert Image.open(tmp_path / "p.png").size[0] > 100
    assert Image.open(tmp_path / "sheet.png").size[0] > 3 * SIZE  # mask and two banks side by side
    assert out["real"]["n"] == 2
    assert out["banks"]["lilac"]["ratio"]["stroma"] == pytest.approx(_h(_colour(0.04)) / _h(TISSUE))
    assert out["banks"]["same"]["ratio"]["contrast"] == pytest.approx(1.0)
    # nothing off the masks is as dark as the real nuclei, on either side
    assert out["real"]["off_mask_blobs"] == 0.0 and out["banks"]["lilac"]["synthetic"]["off_mask_blobs"] == 0.0
    assert "| lilac | 3 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bank_stain.main(["--real", str(real), "--bank", str(lilac)])  # no LABEL=


def test_segmenter_recall_counts_nuclei_by_darkness():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import segmenter_recall as sr

    # four nuclei of rising darkness in one patch; the prediction covers the two darkest fully
    # and the palest by a third (not found), the second palest not at all
    img = np.broadcast_to(TISSUE, (SIZE, SIZE, 3)).copy()
    inst = np.zeros((SIZE, SIZE), np.int32)
    pred = np.zeros((SIZE, SIZE), bool)
    for k, (h, x) in enumerate(((0.03, 1), (0.05, 7), (0.07, 13), (0.09, 19)), 1):
        img[4:8, x:x + 4] = _colour(h)
        inst[4:8, x:x + 4] = k
    pred[4:8, 13:23] = True
    pred[4:8, 1:2] = True  # a quarter of the palest
    dark = sr.nucleus_darkness(img[None], inst[None])
    assert np.all(np.diff(dark[0]) > 0)
    found = sr.nuclei_found(inst[None], pred[None])
    assert found[0].tolist() == [False, False, True, True]
    assert sr.recall_by_darkness(dark, found, bins=2) == [0.0, 1.0]
    assert sr.recall_by_darkness(dark, found, bins=4) == [0.0, 0.0, 1.0, 1.0]
    s = sr.pixel_scores(inst[None], pred[None])
    assert s["precision"] == pytest.approx(36 / 44) and s["recall"] == pytest.approx(36 / 64)
