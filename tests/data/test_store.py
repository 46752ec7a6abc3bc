import h5py
import numpy as np
import pytest
import torch

from nasdm_aug.data.store import PatchStore, StoreError
from nasdm_aug.data.store_writer import PatchStoreWriter
from nasdm_aug.types import CONSEP, LIZARD
from nasdm_aug.utils import InputError


def _patches(n, p=16, seed=0, n_types=6):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, p, p, 3), dtype=np.uint8)
    insts = rng.integers(0, 70000, (n, p, p)).astype(np.int32)  # ids above 65535 must survive
    types = rng.integers(0, n_types + 1, (n, p, p)).astype(np.uint8)
    return images, insts, types


def _write(path, n=6, p=16, **kw):
    images, insts, types = _patches(n, p)
    with PatchStoreWriter(path, patch_size=p, type_table=LIZARD, config={"seed": 3}, **kw) as w:
        for i in range(n):
            w.append(images[i], insts[i], types[i], source=f"img{i % 3}", y=i, x=2 * i,
                     split="Test" if i % 3 == 0 else "Train", parent=i - 1, seed=10 + i)
        w.set_splits({"Test": ["img0"], "Train": ["img1", "img2"], "R1": ["img2"]})
        w.set_attr("note", {"a": 1})
    return images, insts, types


def test_round_trip(tmp_path):
    path = tmp_path / "s.h5"
    images, insts, types = _write(path)
    store = PatchStore(path)
    assert len(store) == 6 and store.patch_size == 16 and store.origin == "real"
    assert store.type_table == LIZARD and store.config == {"seed": 3} and store.attrs == {"note": {"a": 1}}
    item = store[4]
    np.testing.assert_array_equal(item["image"], images[4])
    np.testing.assert_array_equal(item["inst"], insts[4])
    assert item["inst"].dtype == np.int32 and item["inst"].max() > 65535
    assert (item["source"], item["y"], item["x"], item["parent"], item["seed"], item["origin"]) == (
        "img1", 4, 8, 3, 14, "real")
    batch = store.read([5, 1, 5])
    np.testing.assert_array_equal(batch["type"], types[[5, 1, 5]])
    np.testing.assert_array_equal(store.indices("Test"), [0, 3])
    np.testing.assert_array_equal(store.indices("R1"), [2, 5])
    assert set(store.indices("R1")) <= set(store.indices("Train"))
    assert list(store.meta("origin")) == ["real"] * 6
    assert store[-1]["index"] == 5
    with pytest.raises(IndexError, match="out of range"):
        store[6]
    with pytest.raises(StoreError, match="no split 'R2'"):
        store.indices("R2")


def test_one_patch_per_chunk(tmp_path):
    path = tmp_path / "s.h5"
    _write(path)
    with h5py.File(path) as f:
        assert f["image"].chunks == (1, 16, 16, 3) and f["inst"].chunks == (1, 16, 16)


def test_interrupted_write_leaves_nothing(tmp_path):
    path = tmp_path / "s.h5"
    with pytest.raises(RuntimeError):
        with PatchStoreWriter(path, patch_size=8, type_table=LIZARD) as w:
            w.append(*[a[0] for a in _patches(1, 8)])
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_refuses_overwrite_and_bad_patches(tmp_path):
    path = tmp_path / "s.h5"
    _write(path)
    with pytest.raises(InputError, match="pass `overwrite` to replace it"):
        PatchStoreWriter(path, patch_size=16, type_table=LIZARD)
    images, insts, types = _patches(1, 16, n_types=6)
    with PatchStoreWriter(tmp_path / "t.h5", patch_size=16, type_table=CONSEP) as w:
        with pytest.raises(InputError, match="type id .* outside 0..4"):
            types[0, 0, 0] = 6
            w.append(images[0], insts[0], types[0])
        with pytest.raises(InputError, match="inst has dtype int64"):
            w.append(images[0], insts[0].astype(np.int64), types[0] * 0)
        with pytest.raises(InputError, match=r"image has shape \(1, 8, 8, 3\)"):
            w.append(images[0][:8, :8], insts[0], types[0])


def test_open_errors(tmp_path):
    with pytest.raises(StoreError, match="no such PatchStore"):
        PatchStore(tmp_path / "missing.h5")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x89HDF\r\n garbage")
    with pytest.raises(StoreError, match="bad.h5: not a readable HDF5"):
        PatchStore(bad)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(StoreError, match="foreign.h5: not a PatchStore"):
        PatchStore(foreign)
    path = tmp_path / "s.h5"
    _write(path)
    with h5py.File(path, "a") as f:
        f["meta/seed"].resize(3, axis=0)
    with pytest.raises(StoreError, match="meta/seed has 3 rows for 6 patches"):
        PatchStore(path)


class _Ds(torch.utils.data.Dataset):
    def __init__(self, store):
        self.store = store

    def __len__(self):
        return len(self.store)

    def __getitem__(self, i):
        return int(self.store[i]["inst"].sum())


def test_reads_from_worker_processes(tmp_path):
    path = tmp_path / "s.h5"
    _, insts, _ = _write(path)
    store = PatchStore(path)
    store[0]  # the parent has an open handle before the fork
    loader = torch.utils.data.DataLoader(_Ds(store), batch_size=None, num_workers=2)
    assert [int(v) for v in loader] == [int(a.sum()) for a in insts]


def _rewrite(path, key, data):
    with h5py.File(path, "a") as f:
        shape, chunks = f[key].shape, f[key].chunks
        del f[key]
        f.create_dataset(key, data=data.reshape(shape), chunks=chunks)


@pytest.mark.parametrize("key, make, match", [
    ("image", lambda a: a.astype(np.float32) / 255, r"dataset image has dtype float32, expected uint8 RGB"),
    ("inst", lambda a: a.astype(np.float64), r"dataset inst has dtype float64, expected integer instance ids"),
    ("inst", lambda a: -a, r"negative instance ids"),
    ("type", lambda a: (a + 7).astype(np.uint8), r"type ids above the table's 6 \(lizard\)"),
])
def test_open_checks_dtypes_and_ranges(tmp_path, key, make, match):
    path = tmp_path / "s.h5"
    images, insts, types = _write(path)
    _rewrite(path, key, make({"image": images, "inst": insts, "type": types}[key]))
    with pytest.raises(StoreError, match=match):
        PatchStore(path)


@pytest.mark.parametrize("arg,default,expected", [
    ("consep.h5:Train", None, ("consep.h5", "Train")),
    ("consep.h5", "Train", ("consep.h5", "Train")),
    ("consep.h5", None, ("consep.h5", None)),
    ("runs/a:b/consep.h5", None, ("runs/a:b/consep.h5", None)),  # a colon inside the path
    ("C:consep.h5", None, ("C:consep.h5", None)),  # a drive letter, not a split
    ("/data/x.h5:R2", "Train", ("/data/x.h5", "R2")),
])
def test_store_split_argument(arg, default, expected):
    from nasdm_aug.data.store import parse_store_arg

    assert parse_store_arg(arg, default) == expected
