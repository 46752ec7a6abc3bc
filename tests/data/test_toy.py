"""Toy tissue: determinism, exact labels, Lizard .mat layout, frequencies, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner
from PIL import Image
from skimage.measure import label as label_components

from cli.main import cli
from nasdm_aug.data.toy import FREQUENCIES, ToyConfig, generate_toy_tile, tile_to_lizard_mat, write_toy_dataset
from nasdm_aug.data.toy_shapes import Stamps, ellipse_field, lobe_layout, lobed_field, paint_stamps
from nasdm_aug.types import LIZARD
from nasdm_aug.utils import InputError


@pytest.fixture(scope="module")
def tiles():
    """Six 256-px tiles, balanced, so every type shows up."""
    return [generate_toy_tile(np.random.default_rng([11, i]), (256, 256), "balanced") for i in range(6)]


def _types_per_instance(tile) -> np.ndarray:
    n = int(tile.inst.max())
    lo = np.full(n + 1, 255)
    hi = np.zeros(n + 1, int)
    np.minimum.at(lo, tile.inst.ravel(), tile.type.ravel())
    np.maximum.at(hi, tile.inst.ravel(), tile.type.ravel())
    assert np.array_equal(lo, hi), "an instance holds two types"
    return lo


def _touching_pairs(inst: np.ndarray) -> set:
    pairs = set()
    for a, b in ((inst[:, :-1], inst[:, 1:]), (inst[:-1, :], inst[1:, :])):
        m = (a != b) & (a > 0) & (b > 0)
        pairs |= {(min(p, q), max(p, q)) for p, q in zip(a[m].tolist(), b[m].tolist())}
    return pairs


def test_deterministic_per_seed():
    a = generate_toy_tile(5, (96, 128))
    b = generate_toy_tile(np.random.default_rng(5), (96, 128))
    c = generate_toy_tile(6, (96, 128))
    for k in ("image", "inst", "type"):
        assert np.array_equal(getattr(a, k), getattr(b, k))
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == (96, 128, 3) and a.image.dtype == np.uint8
    assert a.inst.dtype == np.int32 and a.type.dtype == np.uint8


def test_exact_instance_and_type_maps(tiles):
    seen, touching_same, touching_any = set(), 0, 0
    for tile in tiles:
        n = int(tile.inst.max())
        assert np.array_equal(np.unique(tile.inst), np.arange(n + 1)), "ids are not 1..N"
        assert not tile.type[tile.inst == 0].any() and tile.type[tile.inst > 0].all()
        types = _types_per_instance(tile)
        seen |= set(types[1:].tolist())
        # Every instance is one connected piece (neutrophil lobes are bridged).
        assert label_components(tile.inst, background=0, connectivity=2).max() == n
        pairs = _touching_pairs(tile.inst)
        touching_any += len(pairs)
        touching_same += sum(types[p] == types[q] for p, q in pairs)
    assert seen == set(LIZARD.ids)
    assert touching_any >= 20 and touching_same >= 10


def test_lobed_nucleus_is_one_connected_piece():
    rng = np.random.default_rng(0)
    k = 40
    n_lobes = rng.integers(2, 6, k)
    lobe_r = rng.uniform(2.7, 3.3, k)
    ly, lx = lobe_layout(rng, n_lobes, lobe_r, 5, 12.0)
    assert (np.hypot(ly, lx) + lobe_r[:, None]).max() <= 12.0 + 1e-4
    params = {"ly": ly, "lx": lx, "r": lobe_r, "bridge": np.full(k, 0.8)}
    for i in range(k):
        lab = np.zeros((31, 31), np.int32)
        st = Stamps(np.array([15.0]), np.array([15.0]), np.array([1], np.int32), 13, lobed_field,
                    {key: v[i : i + 1] for key, v in params.items()})
        assert paint_stamps(lab, None, st)[0] > 0
        assert label_components(lab, connectivity=2).max() == 1


def test_ellipse_stamp_area_matches_closed_form():
    lab = np.zeros((64, 64), np.int32)
    p = {"a": np.array([12.0]), "b": np.array([7.0]), "theta": np.array([0.3])}
    p.update({k: np.zeros(1) for k in ("w2", "w3", "ph2", "ph3")})
    area = paint_stamps(lab, None, Stamps(np.array([31.7]), np.array([30.2]), np.array([3], np.int32), 14, ellipse_field, p))
    assert abs(area[0] - np.pi * 12 * 7) / (np.pi * 12 * 7) < 0.03
    assert (lab == 3).sum() == area[0]


def test_lizard_mat_record(tiles):
    rec = tile_to_lizard_mat(tiles[0])
    n = int(tiles[0].inst.max())
    want = {"inst_map": (np.int32, (256, 256)), "id": (np.int32, (n, 1)), "class": (np.int32, (n, 1)),
            "bbox": (np.int32, (n, 4)), "centroid": (np.float64, (n, 2))}  # fmt: skip
    for key, (dtype, shape) in want.items():
        assert rec[key].dtype == dtype and rec[key].shape == shape, key
    k = n // 2
    ys, xs = np.nonzero(tiles[0].inst == k)
    assert rec["class"][k - 1, 0] == tiles[0].type[ys[0], xs[0]]
    assert rec["bbox"][k - 1].tolist() == [ys.min(), ys.max() + 1, xs.min(), xs.max() + 1]
    assert np.allclose(rec["centroid"][k - 1], [xs.mean(), ys.mean()])


def test_write_dataset_layout_and_atomicity(tmp_path):
    out = tmp_path / "toy"
    summary = write_toy_dataset(out, 2, seed=3, size=(64, 80), progress=False)
    assert sorted(p.name for p in (out / "Images").iterdir()) == ["toy_00000.png", "toy_00001.png"]
    m = scipy.io.loadmat(out / "Labels" / "toy_00001.mat")
    assert {"inst_map", "id", "class", "bbox", "centroid"} <= set(m)
    assert m["inst_map"].dtype == np.int32 and m["inst_map"].shape == (64, 80)
    img = np.asarray(Image.open(out / "Images" / "toy_00001.png"))
    assert img.shape == (64, 80, 3) and img.dtype == np.uint8
    # Image i depends on (seed, i) only, not on how many images are written.
    tile = generate_toy_tile(np.random.default_rng([3, 1]), (64, 80))
    assert np.array_equal(img, tile.image) and np.array_equal(m["inst_map"], tile.inst)
    assert sum(summary["nuclei"].values()) == sum(len(scipy.io.loadmat(p)["id"]) for p in (out / "Labels").iterdir())
    assert ToyConfig.load(out / "config.json").seed == 3
    # The Lizard reader is the path toy tissue takes into a PatchStore: a lossless round trip.
    from nasdm_aug.data.readers import get_reader

    back = list(get_reader("lizard").read(out))
    assert [t.name for t in back] == ["toy_00000", "toy_00001"]
    assert np.array_equal(back[1].inst, tile.inst) and np.array_equal(back[1].type, tile.type)
    with pytest.raises(InputError, match="already exists"):
        write_toy_dataset(out, 1, seed=3, size=(64, 64), progress=False)
    with pytest.raises(ValueError, match="unknown frequencies"):
        write_toy_dataset(tmp_path / "bad", 1, seed=3, frequencies="rare", progress=False)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("frequencies", sorted(FREQUENCIES))
def test_frequencies_follow_the_option(frequencies):
    counts = np.zeros(LIZARD.n_types + 1)
    for i in range(20):
        tile = generate_toy_tile(np.random.default_rng([21, i]), (192, 192), frequencies)
        counts += np.bincount(_types_per_instance(tile)[1:], minlength=len(counts))
    share = counts[1:] / counts.sum()
    want = np.asarray(FREQUENCIES[frequencies])
    assert counts.sum() > 500
    assert np.all(np.abs(share - want) < np.maximum(0.06, 0.25 * want)), share.round(3)
    if frequencies == "lizard":
        rare = share[[LIZARD.id_of("neutrophil") - 1, LIZARD.id_of("eosinophil") - 1]]
        assert np.all(rare < 0.03)


def test_cli_writes_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "toy"
    runner = CliRunner()
    args = ["toy", str(out), "--images", "2", "--seed", "1", "--size", "48", "--quiet"]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert len(list((out / "Labels").glob("*.mat"))) == 2
    before = (out / "Images" / "toy_00000.png").read_bytes()
    res = runner.invoke(cli, args)
    assert isinstance(res.exception, InputError) and "--overwrite" in str(res.exception)
    res = runner.invoke(cli, [*args, "--overwrite", "--seed", "2"])
    assert res.exit_code == 0 and (out / "Images" / "toy_00000.png").read_bytes() != before
    res = runner.invoke(cli, ["toy", str(tmp_path / "dry"), "--images", "3", "--seed", "4", "--dry-run"])
    assert json.loads(res.output)["n_images"] == 3 and not (tmp_path / "dry").exists()
