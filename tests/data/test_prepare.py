"""Splits and ``prepare``: the paper's split sizes, seeded assignment, and end-to-end stores from
real CoNSeP and toy tissue through the library and the ``nasdm-aug prepare`` command."""

import json

import numpy as np
import pytest
import scipy.io

from cli.main import main
from nasdm_aug.data import prepare as prepare_mod
from nasdm_aug.data.prepare import PrepareConfig, format_summary, prepare
from nasdm_aug.data.splits import SplitSpec, make_splits, split_counts, split_of
from nasdm_aug.data.store import PatchStore
from nasdm_aug.types import CONSEP, LIZARD


# -- splits -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,want", [
    (238, (12, 36, 190, 36)),  # the paper's Lizard split, from the default fractions
    (27, (3, 4, 20, 4)),  # CoNSeP Train: scaled, rounded, each held-out split at least 3 images
    (3, (1, 1, 1, 1)),  # tiny: every non-zero split keeps one image while Train keeps one
    (1, (0, 0, 1, 1)),
])
def test_split_counts_from_paper_fractions(n, want):
    c = split_counts(n)
    assert (c["Test"], c["R2"], c["Train"], c["R1"]) == want


def test_split_counts_explicit_and_invalid():
    assert split_counts(10, SplitSpec(counts=(2, 3, 4))) == {"Test": 2, "R2": 3, "Train": 5, "R1": 4}
    assert split_counts(10, SplitSpec(counts=(5, 5, 0))) == {"Test": 5, "R2": 5, "Train": 0, "R1": 0}
    with pytest.raises(ValueError, match="need more than the 10 images"):
        split_counts(10, SplitSpec(counts=(6, 5, 0)))
    with pytest.raises(ValueError, match="R1 <= Train"):
        SplitSpec(fractions=(0.5, 0.3, 0.5))


def test_make_splits_disjoint_seeded_and_order_free():
    names = [f"img{i:03d}" for i in range(238)]
    s = make_splits(names, SplitSpec(seed=3))
    assert {k: len(v) for k, v in s.items()} == {"Test": 12, "R2": 36, "Train": 190, "R1": 36}
    assert set(s["Test"]) | set(s["R2"]) | set(s["Train"]) == set(names)
    assert not (set(s["Test"]) & set(s["R2"]) or set(s["Test"]) & set(s["Train"]) or set(s["R2"]) & set(s["Train"]))
    assert set(s["R1"]) <= set(s["Train"])
    assert make_splits(names[::-1], SplitSpec(seed=3)) == s  # reading order does not matter
    assert make_splits(names, SplitSpec(seed=4)) != s
    meta = split_of(s)
    assert all(meta[n] == "R1" for n in s["R1"]) and all(meta[n] == "Test" for n in s["Test"])


def test_make_splits_keeps_groups_together():
    names = [f"crag_{i}-{k:04d}" for i in range(10) for k in range(3)]
    groups = [n.rsplit("-", 1)[0] for n in names]
    s = make_splits(names, SplitSpec(counts=(2, 2, 1)), groups=groups)
    assert len(s["Test"]) == 6 and len(s["R2"]) == 6 and len(s["R1"]) == 3
    for split in s.values():
        assert all(f"{g}-{k:04d}" in split for g in {n.rsplit("-", 1)[0] for n in split} for k in range(3))


# -- prepare: library -------------------------------------------------------------------------------------
def test_prepare_real_consep_store(consep_dir, tmp_path):
    out = tmp_path / "consep.h5"
    cfg = PrepareConfig(format="consep", src=str(consep_dir), out=str(out), limit=3, stride=128)
    summary = prepare(cfg, progress=False)
    store = PatchStore(out)
    assert summary["images"] == 3 and len(store) == summary["patches"] > 0
    assert store.type_table == CONSEP and store.config == cfg.to_dict() and store.patch_size == 128
    assert store.attrs["summary"]["patches"] == summary["patches"]
    # 3 images: one each in Test, R2 and Train (which is also R1)
    assert {k: len(v) for k, v in store.splits.items()} == {"Test": 1, "R2": 1, "Train": 1, "R1": 1}
    assert summary["splits"]["Train"]["patches"] + summary["splits"]["R2"]["patches"] + \
        summary["splits"]["Test"]["patches"] == len(store)
    source, split = store.meta("source"), store.meta("split")
    for name in store.splits["Test"]:
        assert set(split[source == name]) == {"Test"}
    np.testing.assert_array_equal(store.indices("Train"), store.indices("R1"))
    item = store[int(store.indices("Test")[0])]
    full = next(prepare_mod.get_reader("consep").read(consep_dir, [item["source"]]))
    y, x = item["y"], item["x"]
    np.testing.assert_array_equal(item["image"], full.image[y:y + 128, x:x + 128])
    np.testing.assert_array_equal(item["type"], full.type[y:y + 128, x:x + 128])
    assert item["inst"].max() == len(np.unique(item["inst"])) - (item["inst"] == 0).any()
    names = sorted(n for v in store.splits.values() for n in v)
    want = sum(len(scipy.io.loadmat(consep_dir / "Labels" / f"{n}.mat")["inst_type"]) for n in set(names))
    assert sum(summary["nuclei"].values()) == want


def test_worker_pool_gives_the_same_store(consep_dir, tmp_path):
    stores = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.h5"
        prepare(PrepareConfig(format="consep", src=str(consep_dir), out=str(out), limit=2, stride=256,
                              workers=workers), progress=False)
        stores.append(PatchStore(out))
    a, b = stores
    assert len(a) == len(b) > 0 and a.splits == b.splits
    for key in ("image", "inst", "type"):
        np.testing.assert_array_equal(a.read(range(len(a)), [key])[key], b.read(range(len(b)), [key])[key])
    for key in ("source", "y", "x", "split"):
        np.testing.assert_array_equal(a.meta(key), b.meta(key))


def test_interrupted_prepare_leaves_nothing(consep_dir, tmp_path, monkeypatch):
    calls = []

    def tile_then_interrupt(tile, config):
        calls.append(tile.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(tile, config)

    real = prepare_mod.tile_image
    monkeypatch.setattr(prepare_mod, "tile_image", tile_then_interrupt)
    out = tmp_path / "o.h5"
    with pytest.raises(KeyboardInterrupt):
        prepare(PrepareConfig(format="consep", src=str(consep_dir), out=str(out), limit=2, stride=256), progress=False)
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs,match", [
    ({"format": "kumar"}, "unknown format 'kumar'"),
    ({"format": "lizard"}, "needs a source folder"),
    ({"type_table": "monusac"}, "unknown type table"),
    ({"split_counts": (1, 2, -1)}, "split counts"),
    ({"min_tissue": 2.0}, "min_tissue"),
])
def test_prepare_config_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PrepareConfig(**kwargs)


def test_prepare_config_json_round_trip():
    cfg = PrepareConfig(format="consep", src="d", split_counts=(1, 2, 3), limit=4)
    assert PrepareConfig.from_dict(json.loads(cfg.to_json())) == cfg


# -- prepare: the command ---------------------------------------------------------------------------------
def _run(argv, capsys):
    code = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_toy_store_keeps_source_and_prints_summary(tmp_path, capsys):
    out, src = tmp_path / "toy.h5", tmp_path / "toysrc"
    code, stdout, err = _run(["prepare", "--format", "toy", str(out), "--images", "3", "--size", "160",
                              "--seed", "5", "--keep-source", str(src), "--quiet"], capsys)
    assert code == 0, err
    store = PatchStore(out)
    assert store.type_table == LIZARD and store.config["seed"] == 5 and store.config["toy_images"] == 3
    assert sorted(p.name for p in (src / "Images").iterdir()) == [f"toy_0000{i}.png" for i in range(3)]
    assert {k: len(v) for k, v in store.splits.items()} == {"Test": 1, "R2": 1, "Train": 1, "R1": 1}
    assert f"3 images -> {len(store)} patches" in stdout
    assert stdout.splitlines()[1].split()[:4] == ["split", "images", "patches", "nuclei"]
    assert "lymphocyte" in stdout.splitlines()[1]
    # OUT exists: refused without --overwrite, and the store is untouched
    code, _, err = _run(["prepare", "--format", "lizard", str(src), str(out)], capsys)
    assert code == 2 and "already exists; pass --overwrite" in err and len(err.strip().splitlines()) == 1
    assert len(PatchStore(out)) == len(store)


def test_cli_dry_run_prints_config_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "x.h5"
    code, stdout, _ = _run(["prepare", "--format", "consep", str(tmp_path), str(out), "--split-counts", "1,2,3",
                            "--stride", "32", "--dry-run"], capsys)
    assert code == 0 and not out.exists()
    cfg = PrepareConfig.from_dict(json.loads(stdout))
    assert cfg.split_counts == (1, 2, 3) and cfg.stride == 32 and cfg.src == str(tmp_path)


@pytest.mark.parametrize("argv,match", [
    (["--format", "toy", "a", "b.h5"], "takes OUT.h5"),
    (["--format", "consep", "b.h5"], "takes SRC OUT.h5"),
    (["--format", "toy", "b.h5", "--split-counts", "1,2"], "three values"),
    (["--format", "toy", "b.h5", "--split-counts", "1,1,1", "--split-fractions", ".1,.1,.1"], "not both"),
    (["--format", "consep", "a", "b.h5", "--keep-source", "d"], "only applies to --format toy"),
])
def test_cli_usage_errors(tmp_path, capsys, argv, match):
    code, _, err = _run(["prepare", *argv], capsys)
    assert code == 2 and match in err


def test_cli_bad_source_is_one_line(tmp_path, capsys):
    (tmp_path / "Images").mkdir()
    (tmp_path / "Labels").mkdir()
    code, _, err = _run(["prepare", "--format", "lizard", str(tmp_path), str(tmp_path / "o.h5")], capsys)
    assert code == 2 and err.strip().startswith("Error: ") and "empty dataset" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o.h5").exists()


def test_format_summary_table():
    s = {"out": "o.h5", "format": "toy", "type_table": "consep", "images": 2, "patches": 5, "seconds": 1.0,
         "images_without_patches": ["b"], "nuclei": {"a": 3, "b": 4},
         "splits": {"Train": {"images": 2, "patches": 5, "nuclei": {"a": 3, "b": 4}}}}
    lines = format_summary(s).splitlines()
    assert lines[1].split() == ["split", "images", "patches", "nuclei", "a", "b"]
    assert lines[2].split() == ["Train", "2", "5", "7", "3", "4"]
    assert lines[3].split() == ["all", "2", "5", "7", "3", "4"]
    assert "1 image(s) gave no patches" in lines[-1]


def test_cli_no_patch_from_any_image_is_an_error(tmp_path, capsys):
    out = tmp_path / "big.h5"
    code, _, err = _run(["prepare", "--format", "toy", str(out), "--images", "2", "--size", "128",
                         "--patch-size", "256", "--quiet"], capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith("Error: (toy tissue, seed 0, not kept): none of the 2")
    assert "lower --patch-size" in err and not out.exists() and not list(tmp_path.iterdir())
