"""RandNucleiPasted: real nuclei pasted with their labels, nothing real covered, seeded, weighted by type.

The source store's nuclei are rectangles whose pixels encode their type (red = 40 x type), their
patch (green = 10 + patch index) and their slot (blue), so a pasted nucleus says where it came from.
"""

import pickle
import shutil

import numpy as np
import pytest
import torch
from monai.transforms import Compose, RandFlipd
from scipy import ndimage

from nasdm_aug.data.store import PatchStore
from nasdm_aug.data.store_writer import PatchStoreWriter
from nasdm_aug.mixing import LoadMixPatchd, RandNucleiPasted, SyntheticMixDataset
from nasdm_aug.types import CONSEP, LIZARD
from nasdm_aug.utils import InputError

P = 32
SLOTS = ((3, 3), (3, 18), (18, 6))
TRAIN = list(range(10))  # img0..img4; patches 10, 11 are Test
NEUTROPHIL, EPITHELIAL = 1, 2


def _patch(i: int, p: int = P):
    inst = np.zeros((p, p), np.int32)
    typ = np.zeros((p, p), np.uint8)
    image = np.full((p, p, 3), (200, 180, 210), np.uint8)
    for k, (y, x) in enumerate(SLOTS):
        h, w = 3 + (i + k) % 3, 4 + (i + 2 * k) % 3
        t = NEUTROPHIL if (k == 0 and i % 3 == 0) else EPITHELIAL  # 4 of the 30 Train nuclei are neutrophils
        inst[y:y + h, x:x + w] = k + 1
        typ[y:y + h, x:x + w] = t
        image[y:y + h, x:x + w] = (40 * t, 10 + i, 100 + 20 * k)
    return image, inst, typ


def _write(path, p=P, table=LIZARD, magnification=20.0):
    with PatchStoreWriter(path, patch_size=p, type_table=table, attrs={"magnification": magnification}) as w:
        for i in range(12):
            image, inst, typ = _patch(i, p)
            w.append(image, inst, np.minimum(typ, table.n_types), source=f"img{i // 2}", y=0, x=i)
        w.set_splits({"Train": [f"img{k}" for k in range(5)], "Test": ["img5"]})
    return path


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("paste") / "real.h5")


def _item(src, i, **extra):
    return {**LoadMixPatchd(PatchStore(src))({"origin": "real", "index": i}), **extra}


def _empty_item(origin="synthetic", parent=-1):
    return {"image": np.full((3, P, P), 0.5, np.float32), "inst": np.zeros((1, P, P), np.int32),
            "type": np.zeros((1, P, P), np.uint8), "origin": origin, "index": 0, "parent": parent}


def _new_ids(before, after):
    return sorted(set(np.unique(after[after > 0]).tolist()) - set(np.unique(before[before > 0]).tolist()))


def test_pasted_nuclei_keep_type_and_shape_and_real_ones_stay_untouched(src):
    t = RandNucleiPasted(src, prob=1.0, n_nuclei=(4, 4), scale=(1.0, 1.0), margin=1).set_random_state(0)
    total = 0
    for i in TRAIN:
        item = _item(src, i)
        out = t(item)
        before, after = item["inst"][0], out["inst"][0]
        real = before > 0
        # every real nucleus keeps its id, type and image pixels exactly
        np.testing.assert_array_equal(after[real], before[real])
        np.testing.assert_array_equal(out["type"][0][real], item["type"][0][real])
        np.testing.assert_array_equal(out["image"][:, real], item["image"][:, real])
        new = _new_ids(before, after)
        assert len(new) == out["pasted"] and all(n > before.max() for n in new)
        assert out["inst"].dtype == np.int32 and out["type"].dtype == np.uint8 and out["image"].dtype == np.float32
        for n in new:
            pix = after == n
            types = np.unique(out["type"][0][pix])
            assert len(types) == 1 and types[0] in (NEUTROPHIL, EPITHELIAL)
            ys, xs = np.nonzero(pix)
            assert pix.sum() == (np.ptp(ys) + 1) * (np.ptp(xs) + 1)  # still a whole rectangle
            rgb = np.rint(out["image"][:, pix] * 255)
            assert (rgb[0] == 40 * types[0]).all()  # the type written is the nucleus's own type
            patch = int(rgb[1, 0]) - 10
            assert (rgb[1] == patch + 10).all() and patch in TRAIN and patch != i
            grown = ndimage.binary_dilation(pix, np.ones((3, 3), bool))
            assert not ((after > 0) & (after != n) & grown).any()  # a margin of 1 px to every other nucleus
        total += len(new)
    assert total >= 25  # most of the 40 asked for found room


def test_allow_overlap_may_cover_real_nuclei_ids_stay_unique(src):
    t = RandNucleiPasted(src, prob=1.0, n_nuclei=(8, 8), allow_overlap=True).set_random_state(1)
    covered = 0
    for i in TRAIN:
        item = _item(src, i)
        out = t(item)
        before, after = item["inst"][0], out["inst"][0]
        new = _new_ids(before, after)
        assert all(n > before.max() for n in new) and out["pasted"] == 8
        covered += int(((before > 0) & (after != before)).sum())
    assert covered > 0


def test_fixed_seed_reproduces_in_compose_and_after_pickling(src):
    def chain(seed):
        keys = ["image", "inst", "type"]
        c = Compose([RandFlipd(keys, prob=0.5, spatial_axis=0), RandNucleiPasted(src, prob=0.7)])
        c.set_random_state(seed)
        return [c(_item(src, i)) for i in TRAIN]

    a, b, c = chain(5), chain(5), chain(6)
    for x, y in zip(a, b):
        for key in ("image", "inst", "type", "pasted"):
            np.testing.assert_array_equal(np.asarray(x[key]), np.asarray(y[key]))
    assert any(not np.array_equal(np.asarray(x["inst"]), np.asarray(y["inst"])) for x, y in zip(a, c))
    # a DataLoader worker gets a pickled copy: with the pool built or not, it pastes the same
    t = RandNucleiPasted(src, prob=1.0)
    fresh = pickle.loads(pickle.dumps(t))
    built = pickle.loads(pickle.dumps(t.prepare()))
    assert fresh._pool is None and len(built.pool) == len(t.pool)
    outs = [x.set_random_state(3)(_item(src, 4)) for x in (t, fresh, built)]
    for o in outs[1:]:
        np.testing.assert_array_equal(o["image"], outs[0]["image"])
        np.testing.assert_array_equal(o["inst"], outs[0]["inst"])
    # torch inputs come back as torch, with the same values
    item = _item(src, 4)
    as_torch = {**item, **{k: torch.as_tensor(item[k]) for k in ("image", "inst", "type")}}
    o = t.set_random_state(3)(as_torch)
    assert isinstance(o["image"], torch.Tensor) and o["image"].dtype == torch.float32
    np.testing.assert_array_equal(o["image"].numpy(), outs[0]["image"])
    np.testing.assert_array_equal(o["inst"].numpy(), outs[0]["inst"])


def test_inside_a_mix_dataset(src):
    ds = SyntheticMixDataset(src, mode="real", transform=RandNucleiPasted(src, prob=1.0, n_nuclei=2),
                             hovernet_targets=True)
    ds.transform.set_random_state(0)
    first = [ds[k] for k in range(4)]
    ds.transform.set_random_state(0)
    again = [ds[k] for k in range(4)]
    assert sum(x["pasted"] for x in first) > 0
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x["inst"], y["inst"])
        # HoVerNet targets are computed from the pasted labels
        np.testing.assert_array_equal(x["np"][0], (x["inst"][0] > 0).astype(x["np"].dtype))


def test_indices_restrict_the_pool(src):
    t = RandNucleiPasted(src, prob=1.0, indices=[2, 5], n_nuclei=3, scale=(1, 1)).set_random_state(0)
    assert set(t.pool.patch.tolist()) == {2, 5}
    for i in (0, 7, 9):
        item = _item(src, i)
        out = t(item)
        for n in _new_ids(item["inst"][0], out["inst"][0]):
            green = np.rint(out["image"][1][out["inst"][0] == n] * 255)
            assert set(green.tolist()) <= {12.0, 15.0}
    with pytest.raises(InputError, match=r"indices \[10\] are not in split 'Train' of"):
        RandNucleiPasted(src, indices=[1, 10])


def test_never_pasted_into_its_own_patch(src, tmp_path):
    only3 = RandNucleiPasted(src, prob=1.0, indices=[3], n_nuclei=2).set_random_state(0)
    assert only3(_item(src, 3))["pasted"] == 0  # its own nuclei are all the pool holds
    assert only3(_item(src, 4))["pasted"] > 0
    assert only3(_empty_item("synthetic", parent=3))["pasted"] == 0  # a synthetic patch of mask 3
    assert only3(_empty_item("synthetic", parent=-1))["pasted"] > 0
    # augmenting another store: patch 3 there is not the source's patch 3
    other = shutil.copy(src, tmp_path / "other.h5")
    elsewhere = RandNucleiPasted(src, prob=1.0, indices=[3], n_nuclei=2, like=other).set_random_state(0)
    assert elsewhere(_item(src, 3))["pasted"] > 0


@pytest.mark.parametrize("weights, share", [
    ("uniform", 0.5),  # rare neutrophils as likely as the 26 epithelial nuclei
    ("frequency", 4 / 30),
    ("sqrt", 2 / (2 + 26 ** 0.5)),
    ({"neutrophil": 1.0}, 1.0),
])
def test_type_weighting(src, weights, share):
    t = RandNucleiPasted(src, prob=1.0, n_nuclei=1, type_weights=weights).set_random_state(0)
    assert t.pool.counts()[:2].tolist() == [4, 26]
    types = []
    for _ in range(300):
        out = t(_empty_item())
        assert out["pasted"] == 1
        types.append(int(out["type"].max()))
    assert abs(np.mean(np.asarray(types) == NEUTROPHIL) - share) < 0.08


def test_refusals(src, tmp_path):
    from mix_stores import write_real

    small = write_real(tmp_path / "small.h5", p=16)
    with PatchStoreWriter(tmp_path / "consep.h5", patch_size=P, type_table=CONSEP, attrs={"magnification": 20.0}) as w:
        w.append(*_patch(0))
    at40 = _write(tmp_path / "at40.h5", magnification=40.0)
    cases = [
        (dict(like=small), "has 32-px patches but the data"),
        (dict(like=tmp_path / "consep.h5"), "has types ['neutrophil'"),
        (dict(like=at40), "is at 20x but the data"),
        (dict(type_weights={"macrophage": 1}), "names type 'macrophage'"),
        (dict(type_weights="rare"), "unknown type_weights 'rare'; valid: uniform, sqrt, frequency"),
        (dict(n_nuclei=(3, 1)), "n_nuclei must be"),
        (dict(scale=(0.0, 1.0)), "scale must be"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message.replace("[", r"\[").replace("(", r"\(")):
            RandNucleiPasted(src, **kwargs)
    with pytest.raises(InputError, match="no such PatchStore"):
        RandNucleiPasted(tmp_path / "missing.h5")
    with pytest.raises(InputError, match="no split 'R7'"):
        RandNucleiPasted(f"{src}:R7")
    with pytest.raises(InputError, match=r"no usable nucleus \(typed, 1000 to any px"):
        RandNucleiPasted(src, min_area=1000).prepare()
