"""Readers: round trips on tiny fake datasets of every format, the real CoNSeP folder, and a table
of bad inputs that must stop with one line naming the file and leave no output behind."""

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from nasdm_aug.data.prepare import PrepareConfig, prepare
from nasdm_aug.data.readers import READERS, get_reader, load_rgb, read_conic, read_consep, read_lizard, read_pannuke
from nasdm_aug.utils import InputError

BIG = 2**31 - 1  # the largest int32 id: forces the np.unique relabelling path
IDS = np.array([5, 70000, BIG])  # ids above 65535 must survive
CLASSES = np.array([2, 3, 4])  # classes of IDS (valid in every table)


def _sample(seed=0, h=32, w=32):
    """A saturated (tissue) image with three nuclei of ids IDS; returns image, inst, class map."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image[..., 0] = 255
    image[..., 1] = rng.integers(0, 120, (h, w))  # red-dominant: saturation > 0.5 everywhere
    inst = np.zeros((h, w), np.int64)
    inst[2:10, 2:10], inst[12:20, 4:14], inst[22:30, 18:30] = IDS
    cls = np.zeros((h, w), np.int64)
    for i, c in zip(IDS, CLASSES):
        cls[inst == i] = c
    return image, inst, cls


def _expected(inst, cls):
    """Relabelled map (order of old ids) and type map the readers must produce."""
    new = np.searchsorted(np.concatenate([[0], IDS]), inst)
    return new.astype(np.int32), cls.astype(np.uint8)


def _save_png(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def _write_mat_v73(path, data):
    """A MATLAB v7.3 file: HDF5 with a 512-byte user block and column-major (transposed) arrays."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for k, v in data.items():
            f[k] = np.asarray(v).T
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, created by a test".ljust(128))


def _lizard(root, n=2, v73=False):
    for k in range(n):
        image, inst, _ = _sample(k)
        _save_png(root / "Images" / f"img{k}.png", image)
        data = {"inst_map": inst.astype(np.int32), "id": IDS[:, None].astype(np.int32),
                "class": CLASSES[:, None].astype(np.int32), "bbox": np.zeros((3, 4)), "centroid": np.zeros((3, 2))}
        (root / "Labels").mkdir(exist_ok=True)
        if v73:
            _write_mat_v73(root / "Labels" / f"img{k}.mat", data)
        else:
            scipy.io.savemat(root / "Labels" / f"img{k}.mat", data)
    return root


def _consep(root, n=2):
    for k in range(n):
        image, inst, cls = _sample(k)
        _save_png(root / "Images" / f"img{k}.png", image)
        (root / "Labels").mkdir(exist_ok=True)
        dense, _ = _expected(inst, cls)
        scipy.io.savemat(root / "Labels" / f"img{k}.mat", {
            "inst_map": dense, "type_map": cls.astype(np.int32),
            "inst_type": CLASSES[:, None].astype(np.int32), "inst_centroid": np.zeros((3, 2))})
    return root


def _conic(root, n=2):
    root.mkdir(parents=True, exist_ok=True)
    samples = [_sample(k) for k in range(n)]
    np.save(root / "images.npy", np.stack([s[0] for s in samples]))
    np.save(root / "labels.npy", np.stack([np.stack([s[1], s[2]], -1) for s in samples]).astype(np.int32))
    return root


def _pannuke(root, n=2):
    root.mkdir(parents=True, exist_ok=True)
    samples = [_sample(k) for k in range(n)]
    masks = np.zeros((n, 32, 32, 6))
    for k, (_, inst, cls) in enumerate(samples):
        for c in CLASSES:
            masks[k, ..., c - 1] = np.where(cls == c, 7, 0)  # the same id 7 in every channel
        masks[k, ..., 5] = (inst == 0)
    np.save(root / "images.npy", np.stack([s[0] for s in samples]).astype(np.float64))  # as PanNuke ships
    np.save(root / "masks.npy", masks)
    return root


# -- round trips ------------------------------------------------------------------------------------
@pytest.mark.parametrize("v73", [False, True])
def test_lizard_round_trip(tmp_path, v73):
    tiles = list(read_lizard(_lizard(tmp_path, v73=v73)))
    assert [t.name for t in tiles] == ["img0", "img1"]
    image, inst, cls = _sample(1)
    want_inst, want_type = _expected(inst, cls)
    np.testing.assert_array_equal(tiles[1].image, image)
    np.testing.assert_array_equal(tiles[1].inst, want_inst)
    np.testing.assert_array_equal(tiles[1].type, want_type)
    assert tiles[1].inst.dtype == np.int32 and tiles[1].type.dtype == np.uint8


@pytest.mark.parametrize("reader,build", [(read_consep, _consep), (read_conic, _conic)])
def test_pixel_class_formats_round_trip(tmp_path, reader, build):
    tiles = list(reader(build(tmp_path / "d")))
    assert len(tiles) == 2
    image, inst, cls = _sample(0)
    want_inst, want_type = _expected(inst, cls)
    np.testing.assert_array_equal(tiles[0].image, image)
    np.testing.assert_array_equal(tiles[0].inst, want_inst)
    np.testing.assert_array_equal(tiles[0].type, want_type)


def test_pannuke_ids_per_channel_and_float_images(tmp_path):
    tile = next(read_pannuke(_pannuke(tmp_path / "fold1")))
    image, inst, cls = _sample(0)
    assert tile.name == "fold1_00000" and tile.image.dtype == np.uint8
    np.testing.assert_array_equal(tile.image, image)
    # id 7 in three class channels is three nuclei, ordered by (id, channel)
    assert tile.inst.max() == 3
    np.testing.assert_array_equal(tile.inst > 0, inst > 0)
    np.testing.assert_array_equal(tile.type, cls)
    for c in CLASSES:
        assert len(np.unique(tile.inst[cls == c])) == 1


def test_conic_names_from_patch_info_and_groups(tmp_path):
    root = _conic(tmp_path / "conic")
    (root / "patch_info.csv").write_text("patch_info\ncrag_1-0000\ncrag_1-0001\n")
    assert get_reader("conic").list_names(root) == ["crag_1-0000", "crag_1-0001"]
    assert get_reader("conic").group("crag_1-0001") == "crag_1"
    assert [t.name for t in read_conic(root, names=["crag_1-0001"])] == ["crag_1-0001"]


def test_real_consep_matches_its_own_tables(consep_dir):
    tile = next(read_consep(consep_dir, names=["train_1"]))
    m = scipy.io.loadmat(consep_dir / "Labels" / "train_1.mat")
    assert tile.image.shape == (1000, 1000, 3) and tile.inst.max() == len(m["inst_type"])
    np.testing.assert_array_equal(tile.inst, m["inst_map"])  # already 1..N in this copy
    per_inst = np.zeros(tile.inst.max() + 1, int)
    per_inst[tile.inst] = tile.type
    np.testing.assert_array_equal(per_inst[1:], m["inst_type"].ravel())


def test_rgba_with_opaque_alpha_converts(tmp_path):
    image = np.dstack([_sample(0)[0], np.full((32, 32), 255, np.uint8)])
    _save_png(tmp_path / "a.png", image)
    np.testing.assert_array_equal(load_rgb(tmp_path / "a.png"), image[..., :3])


def test_registry_lists_valid_names():
    assert set(READERS) == {"lizard", "consep", "conic", "pannuke"}
    with pytest.raises(KeyError, match="valid: conic, consep, lizard, pannuke"):
        get_reader("kumar")


# -- bad inputs: one line naming the file and the problem; prepare leaves no output ----------------------
def _rm(rel):
    return lambda root: (root / rel).unlink()


def _relabel_mat(key, fn, rel="Labels/img1.mat"):
    def edit(root):
        m = scipy.io.loadmat(root / rel)
        m = {k: v for k, v in m.items() if not k.startswith("__")}
        m[key] = fn(m[key])
        scipy.io.savemat(root / rel, m)
    return edit


def _edit_npy(name, fn):
    def edit(root):
        np.save(root / name, fn(np.load(root / name)))
    return edit


def _truncate(rel):
    def edit(root):
        data = (root / rel).read_bytes()
        (root / rel).write_bytes(data[: len(data) // 2])
    return edit


def _png(rel, fn):
    return lambda root: Image.fromarray(fn(_sample(1)[0])).save(root / rel)


def _set(arr, idx, value):
    arr = arr.copy()
    arr[idx] = value
    return arr


def _empty_folders(root):
    for sub in ("Images", "Labels"):
        for p in (root / sub).iterdir():
            p.unlink()


BAD_CASES = [
    # (format, builder, edit, message), the image named in the message is the second one where possible,
    # so the error comes while the first image's patches are already being written
    ("lizard", _lizard, _rm("Labels/img1.mat"), r"img1\.png: image without labels"),
    ("lizard", _lizard, _rm("Images/img1.png"), r"img1\.mat: labels without an image"),
    ("lizard", _lizard, _empty_folders, "empty dataset"),
    ("lizard", _lizard, lambda r: __import__("shutil").rmtree(r / "Images"), "no Images/ folder"),
    ("lizard", _lizard, _relabel_mat("inst_map", lambda a: a[:, :30]), r"img1\.mat: inst_map shape \(32, 30\) disagrees"),
    ("lizard", _lizard, _relabel_mat("id", lambda a: a[:2]), "'id' has 2 entries but 'class' has 3"),
    ("lizard", _lizard, _relabel_mat("id", lambda a: _set(a, 2, 6)), r"img1\.mat: instance 2147483647 has no class"),
    ("lizard", _lizard, _relabel_mat("id", lambda a: _set(a, 1, 5)), r"img1\.mat: instance 5 has two classes"),
    ("lizard", _lizard, _relabel_mat("class", lambda a: _set(a, 0, 9)), r"img1\.mat: unknown class id 9 \(instance 5\)"),
    ("lizard", _lizard, _relabel_mat("inst_map", lambda a: a.astype(float) + 0.5), r"img1\.mat: instance map holds non-integer values"),
    ("lizard", _lizard, _png("Images/img1.png", lambda im: im[..., 0]), r"img1\.png: image is not RGB \(mode L\)"),
    ("lizard", _lizard, _png("Images/img1.png", lambda im: np.dstack([im, np.full(im.shape[:2], 9, np.uint8)])),
     r"img1\.png: image is RGBA with transparent pixels"),
    ("lizard", _lizard, _truncate("Images/img1.png"), r"img1\.png: unreadable or truncated image"),
    ("lizard", _lizard, _truncate("Labels/img1.mat"), r"img1\.mat: unreadable or truncated \.mat"),
    ("lizard", _lizard, _relabel_mat("class", lambda a: a, rel="Labels/img1.mat"), None),  # untouched: valid
    ("consep", _consep, _relabel_mat("type_map", lambda a: _set(a, (2, 2), 4)), r"img1\.mat: instance 1 has two classes"),
    ("consep", _consep, _relabel_mat("type_map", lambda a: np.where(a == 3, 0, a)), r"img1\.mat: instance 2 has no class"),
    ("consep", _consep, _relabel_mat("type_map", lambda a: np.where(a == 3, 5, a)), r"img1\.mat: unknown class id 5"),
    ("consep", _consep, _relabel_mat("inst_type", lambda a: _set(a, 0, 1)),
     r"img1\.mat: instance 1 has two classes \(type_map 2, inst_type 1\)"),
    ("conic", _conic, _rm("images.npy"), r"labels\.npy: labels without images"),
    ("conic", _conic, _rm("labels.npy"), r"images\.npy: images without labels"),
    ("conic", _conic, lambda r: [_rm("images.npy")(r), _rm("labels.npy")(r)], "empty dataset"),
    ("conic", _conic, _edit_npy("labels.npy", lambda a: a[:, :31]), r"labels\.npy: shape \(2, 31, 32\) disagrees"),
    ("conic", _conic, _edit_npy("images.npy", lambda a: a[..., 0]), r"images\.npy: images are not RGB"),
    ("conic", _conic, _edit_npy("labels.npy", lambda a: _set(a, (1, 2, 2, 1), 4)), r"labels\.npy\[1\]: instance 5 has two classes"),
    ("conic", _conic, _edit_npy("labels.npy", lambda a: _set(a, (1, slice(None), slice(None), 1), 0)),
     r"labels\.npy\[1\]: instance 5 has no class"),
    ("conic", _conic, _edit_npy("labels.npy", lambda a: _set(a, (1, 2, 2, 1), 7)), r"labels\.npy\[1\]: unknown class id 7"),
    ("conic", _conic, _truncate("labels.npy"), r"labels\.npy: unreadable or truncated \.npy"),
    ("pannuke", _pannuke, _edit_npy("masks.npy", lambda a: _set(a, (1, 2, 2, 0), 3)),
     r"masks\.npy\[1\]: pixel \(2, 2\) belongs to instances of two classes"),
    ("pannuke", _pannuke, _edit_npy("masks.npy", lambda a: a[..., :5]), r"masks\.npy: shape .* expected \[N, H, W, 6\]"),
    ("pannuke", _pannuke, _edit_npy("images.npy", lambda a: _set(a, (1, 0, 0, 0), 0.5)),
     r"images\.npy\[1\]: image dtype float64 is not uint8"),
]


@pytest.mark.parametrize("fmt,build,edit,message", BAD_CASES)
def test_bad_input_stops_with_one_line_and_no_output(tmp_path, fmt, build, edit, message):
    root = build(tmp_path / "src")
    edit(root)
    out = tmp_path / "out.h5"
    config = PrepareConfig(format=fmt, src=str(root), out=str(out), patch_size=16, stride=16,
                           split_counts=(0, 0, 0))
    if message is None:  # the control case: the same pipeline succeeds
        assert prepare(config, progress=False)["images"] == 2 and out.is_file()
        return
    with pytest.raises(InputError, match=message) as info:
        prepare(config, progress=False)
    assert "\n" not in str(info.value)
    assert str(root) in str(info.value)  # names the file
    assert list(tmp_path.glob("out.h5*")) == []  # neither OUT nor OUT.partial
