"""Readers: round trips on tiny fake datasets of every format, the real CoNSeP folder, and a table
of bad inputs that must stop with one line naming the file and leave no output behind."""

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from nasdm_aug.data.prepare import PrepareConfig, prepare
from nasdm_aug.data.readers import (
    CONSEP_CLASSES, CONSEP_MERGE, READERS, get_reader, load_rgb, read_conic, read_consep, read_lizard, read_pannuke,
)
from nasdm_aug.types import CONSEP
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
    with pytest.raises(InputError, match="valid: conic, consep, lizard, pannuke"):
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
    ("consep", _consep, _relabel_mat("type_map", lambda a: np.where(a == 3, 5, a)),
     r"img1\.mat: class id 5 \(instance 2\) is outside table 'consep' \(valid 1\.\.4\); "
     r"labels in CoNSeP's original 7 classes need --consep-classes original"),
    ("consep", _consep, _relabel_mat("inst_type", lambda a: _set(a, 0, 1)),
     r"img1\.mat: instance 1: type_map says 2, inst_type says 1"),
    ("consep", _consep, _relabel_mat("inst_type", lambda a: a[:2]),
     r"img1\.mat: inst_type has 2 rows but inst_map has 3 instances \(max id 3\)"),
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


# -- CoNSeP / HoVer-Net layouts: non-contiguous ids, inst_type by rank or by id, 7 original classes ---------
def _hover(root, ids, classes, inst_type=None, type_map_classes=None):
    """One HoVer-Net-layout image ``img0``: nucleus k (left to right) has id ids[k] and class classes[k]
    in type_map (type_map_classes[k] when given, to make type_map and inst_type differ); inst_type is
    written as given ([N, 1] column), or left out when None."""
    assert len(ids) <= 7
    image = _sample(0, 32, 64)[0]
    inst = np.zeros((32, 64), np.int64)
    cls = np.zeros((32, 64), np.int64)
    for k, (i, c) in enumerate(zip(ids, type_map_classes if type_map_classes is not None else classes)):
        inst[4:12, 2 + 9 * k: 9 + 9 * k] = i
        cls[4:12, 2 + 9 * k: 9 + 9 * k] = c
    _save_png(root / "Images" / "img0.png", image)
    (root / "Labels").mkdir(exist_ok=True)
    data = {"inst_map": inst.astype(np.int32), "type_map": cls.astype(np.int32)}
    if inst_type is not None:
        data["inst_type"] = np.asarray(inst_type, np.int32)[:, None]
    scipy.io.savemat(root / "Labels" / "img0.mat", data)
    return root


def _per_instance(tile):
    """Class of instances 1..N, and the new label of each nucleus left to right."""
    per = np.zeros(int(tile.inst.max()) + 1, np.int64)
    per[tile.inst] = tile.type
    return per[1:].tolist(), [int(tile.inst[6, 4 + 9 * k]) for k in range(int(tile.inst.max()))]


def test_consep_non_contiguous_ids_inst_type_in_rank_order(tmp_path):
    # left to right: ids 759, 15, 40 with classes 4, 1, 2; inst_type row k = k-th smallest id (15, 40, 759)
    root = _hover(tmp_path, ids=[759, 15, 40], classes=[4, 1, 2], inst_type=[1, 2, 4])
    tile = next(read_consep(root))
    classes, labels = _per_instance(tile)
    assert labels == [3, 1, 2]  # relabelled 1..N in order of old id
    assert classes == [1, 2, 4]  # of ids 15, 40, 759
    assert tile.inst.dtype == np.int32 and tile.type.dtype == np.uint8


def test_consep_inst_type_indexed_by_id_with_gaps(tmp_path):
    # ids 2, 5, 7 with classes 3, 1, 4; inst_type has 7 rows (ids 1..7), absent ids hold a 9 that must not be read
    root = _hover(tmp_path, ids=[5, 2, 7], classes=[1, 3, 4], inst_type=[9, 3, 9, 9, 1, 9, 4])
    classes, labels = _per_instance(next(read_consep(root)))
    assert labels == [2, 1, 3]
    assert classes == [3, 1, 4]  # of ids 2, 5, 7


@pytest.mark.parametrize("ids,classes,inst_type,message", [
    # rank layout: row 1 is id 40 (type_map 2)
    ([759, 15, 40], [4, 1, 2], [1, 3, 4], "instance 40: type_map says 2, inst_type says 3"),
    # id layout: id 2 -> row 1 (agrees), id 5 -> row 4 (3, but type_map says 4)
    ([5, 2, 7], [4, 1, 4], [0, 1, 0, 0, 3, 0, 4], "instance 5: type_map says 4, inst_type says 3"),
])
def test_consep_true_disagreement_names_the_id_and_both_classes(tmp_path, ids, classes, inst_type, message):
    root = _hover(tmp_path, ids=ids, classes=classes, inst_type=inst_type)
    with pytest.raises(InputError, match=r"img0\.mat: " + message + "$"):
        next(read_consep(root))


@pytest.mark.parametrize("rows", [2, 4, 758])
def test_consep_wrong_inst_type_row_count_names_both_counts(tmp_path, rows):
    root = _hover(tmp_path, ids=[759, 15, 40], classes=[4, 1, 2], inst_type=[1] * rows)
    with pytest.raises(InputError, match=rf"img0\.mat: inst_type has {rows} rows but inst_map has 3 instances "
                                         r"\(max id 759\); expected 3 rows \(one per instance\) or 759"):
        next(read_consep(root))


def test_consep_merge_map_is_hovernets():
    assert CONSEP_MERGE == {1: 1, 2: 2, 3: 3, 4: 3, 5: 4, 6: 4, 7: 4}
    assert CONSEP_CLASSES == ("merged", "original")


def test_consep_original_classes_merge_every_class(tmp_path):
    # ids 10..70 (rank layout) with original classes 1..7, scrambled left to right
    ids, original = [40, 10, 70, 20, 60, 30, 50], [4, 1, 7, 2, 6, 3, 5]
    root = _hover(tmp_path, ids=ids, classes=original, inst_type=[1, 2, 3, 4, 5, 6, 7])
    classes, labels = _per_instance(next(read_consep(root, classes="original")))
    assert labels == [4, 1, 7, 2, 6, 3, 5]
    assert classes == [1, 2, 3, 3, 4, 4, 4]  # of ids 10..70 = original classes 1..7


def test_consep_original_classes_are_merged_before_the_cross_check(tmp_path):
    # type_map and inst_type disagree in the 7 original classes (3 vs 4, 5 vs 7) but agree once merged
    root = _hover(tmp_path, ids=[1, 2, 3], classes=[4, 7, 1], type_map_classes=[3, 5, 1], inst_type=[4, 7, 1])
    classes, _ = _per_instance(next(read_consep(root, classes="original")))
    assert classes == [3, 4, 1]
    root = _hover(tmp_path, ids=[1, 2], classes=[4, 2], type_map_classes=[3, 2], inst_type=[4, 2])
    with pytest.raises(InputError, match=r"img0\.mat: instance 1: type_map says 3, inst_type says 4$"):
        next(read_consep(root))  # the default does not merge: 3 and 4 are two classes


def test_consep_seven_classes_with_the_default_name_the_option(tmp_path):
    root = _hover(tmp_path, ids=[12, 3, 8], classes=[6, 2, 5], inst_type=[2, 5, 6])
    with pytest.raises(InputError, match=r"img0\.mat: class id 6 \(instance 12\) is outside table 'consep' "
                                         r"\(valid 1\.\.4\); labels in CoNSeP's original 7 classes need "
                                         r"--consep-classes original$"):
        next(read_consep(root))
    root = _hover(tmp_path, ids=[12, 3, 8], classes=[4, 2, 4], inst_type=[2, 4, 7])  # only inst_type in 7 classes
    with pytest.raises(InputError, match=r"img0\.mat: inst_type class id 7 \(instance 12\) is outside table "
                                         r"'consep' \(valid 1\.\.4\); labels in CoNSeP's original 7 classes"):
        next(read_consep(root))


def test_consep_original_refuses_class_8(tmp_path):
    root = _hover(tmp_path, ids=[12, 3, 8], classes=[6, 8, 5], inst_type=[8, 5, 6])
    with pytest.raises(InputError, match=r"img0\.mat: class id 8 \(instance 3\) is outside CoNSeP's original "
                                         r"classes \(valid 1\.\.7\)$"):
        next(read_consep(root, classes="original"))
    root = _hover(tmp_path, ids=[12, 3, 8], classes=[6, 7, 5], inst_type=[8, 5, 6])  # only inst_type holds 8
    with pytest.raises(InputError, match=r"img0\.mat: inst_type class id 8 \(instance 3\) is outside CoNSeP's"):
        next(read_consep(root, classes="original"))


def test_consep_unknown_classes_value(tmp_path):
    with pytest.raises(InputError, match="unknown CoNSeP classes 'seven'; valid: merged, original"):
        read_consep(_hover(tmp_path, ids=[1], classes=[1]), classes="seven")


def test_registry_passes_declared_reader_options_only(tmp_path):
    root = _hover(tmp_path / "c", ids=[1, 2, 3], classes=[7, 5, 3], inst_type=[7, 5, 3])
    spec = get_reader("consep")
    assert spec.options == ("classes",)
    assert all(get_reader(f).options == () for f in ("lizard", "conic", "pannuke"))
    assert _per_instance(next(spec.read(root, ["img0"], CONSEP, classes="original")))[0] == [4, 4, 3]
    assert _per_instance(next(spec.read_with(root, ["img0"], CONSEP, classes="original")))[0] == [4, 4, 3]
    with pytest.raises(InputError, match="need --consep-classes original"):
        next(spec.read_with(root, ["img0"], CONSEP, classes=None))  # None: the reader's default
    liz = _lizard(tmp_path / "l", n=1)
    assert len(list(get_reader("lizard").read_with(liz, None, None, classes=None))) == 1
    with pytest.raises(InputError, match="format 'lizard' takes no option 'classes' \\(its options: none\\)"):
        get_reader("lizard").read_with(liz, None, None, classes="original")
