"""``nasdm-aug export``: round trips through the readers prepare uses (conic, pannuke), the
documented layouts of the others (hovernet, png), mixes equal to the plan, and bad input."""

from __future__ import annotations

import csv
import json
import pickle

import numpy as np
import pytest
from mix_stores import P
from PIL import Image

from cli.main import main
from nasdm_aug.data.readers import _conic_group, read_cellvit_label, read_conic, read_pannuke
from nasdm_aug.data.store import PatchStore
from nasdm_aug.data.store_writer import PatchStoreWriter
from nasdm_aug.data.tiling import relabel_sequential
from nasdm_aug.export import EXPORT_FORMATS, export, parse_type_map, resolve_type_map
from nasdm_aug.mixing.plan import MixConfig, build_plan
from nasdm_aug.types import CONSEP, LIZARD, PANNUKE
from nasdm_aug.utils import InputError

# Lizard -> PanNuke: the four inflammatory cell types join "inflammatory"; the rest by name
TO_PANNUKE = {"neutrophil": "inflammatory", "lymphocyte": "inflammatory", "plasma": "inflammatory",
              "eosinophil": "inflammatory"}
# ids:        bg  neutrophil epithelial lymphocyte plasma eosinophil connective
PANNUKE_OF = [0, 2, 5, 2, 2, 2, 3]


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _nuclei_per_type(inst, typ, n_types):
    return [len(np.unique(inst[(typ == t) & (inst > 0)])) for t in range(1, n_types + 1)]


def test_conic_round_trip_through_the_reader(stores, tmp_path):
    real, _ = stores
    export(real, tmp_path / "c", "conic", progress=False)
    st = PatchStore(real)
    tiles = list(read_conic(tmp_path / "c"))
    assert len(tiles) == len(st)
    counts = _rows(tmp_path / "c" / "counts.csv")
    assert counts[0] == list(LIZARD.names)
    for i, tile in enumerate(tiles):
        p = st[i]
        np.testing.assert_array_equal(tile.image, p["image"])
        np.testing.assert_array_equal(tile.inst, relabel_sequential(p["inst"]))
        np.testing.assert_array_equal(tile.type, p["type"])
        assert _conic_group(tile.name) == p["source"]  # patches of one image keep one split
        assert [int(v) for v in counts[i + 1]] == _nuclei_per_type(p["inst"], p["type"], LIZARD.n_types)
    labels = np.load(tmp_path / "c" / "labels.npy")
    assert labels.dtype == np.int32 and labels.shape == (len(st), P, P, 2)


def test_pannuke_round_trip_in_cellvit_layout(stores, tmp_path):
    real, _ = stores
    man = export(real, tmp_path / "p", "pannuke", type_map=TO_PANNUKE, progress=False, fold=2, tissue="Colon")
    assert man["type_map"]["lymphocyte"] == "inflammatory" and man["type_map"]["epithelial"] == "epithelial"
    st = PatchStore(real)
    fold = tmp_path / "p" / "fold2"
    tiles = list(read_pannuke(fold))
    # natural order, as CellViT's natsorted lists: 2_2 before 2_10, so tile k is patch k
    assert [t.name for t in tiles] == [f"2_{k}" for k in range(len(st))]
    cells = _rows(fold / "cell_count.csv")
    assert cells[0] == ["Image", "Neoplastic", "Inflammatory", "Connective", "Dead", "Epithelial"]
    assert _rows(fold / "types.csv")[:2] == [["img", "type"], ["2_0.png", "Colon"]]
    lut = np.array(PANNUKE_OF)
    for k, tile in enumerate(tiles):
        p = st[k]
        np.testing.assert_array_equal(tile.image, p["image"])
        np.testing.assert_array_equal(tile.inst, relabel_sequential(p["inst"]))
        np.testing.assert_array_equal(tile.type, lut[p["type"]])
        assert cells[k + 1][0] == f"2_{k}.png"
        assert [int(v) for v in cells[k + 1][1:]] == _nuclei_per_type(p["inst"], lut[p["type"]], PANNUKE.n_types)
    inst, typ = read_cellvit_label(fold / "labels" / "2_0.npy")  # CellViT's own loader reads it the same way
    cellvit = np.load(fold / "labels" / "2_0.npy", allow_pickle=True)[()]
    np.testing.assert_array_equal(inst, cellvit["inst_map"])
    np.testing.assert_array_equal(typ, cellvit["type_map"])
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((tmp_path / "p" / "dataset_config.yaml").read_text())
    assert config == {"tissue_types": {"Colon": 0}, "nuclei_types": {"Background": 0, "Neoplastic": 1,
                      "Inflammatory": 2, "Connective": 3, "Dead": 4, "Epithelial": 5}}


def test_hovernet_tiles_hold_image_instances_and_types(stores, tmp_path):
    real, _ = stores
    export(real, tmp_path / "h", "hovernet", split="Test", progress=False)
    st = PatchStore(real)
    rows = _rows(tmp_path / "h" / "manifest.csv")[1:]
    assert [int(r[4]) for r in rows] == list(st.indices("Test"))
    for r in rows:
        tile = np.load(tmp_path / "h" / r[1])
        p = st[int(r[4])]
        assert tile.shape == (P, P, 5) and tile.dtype == np.int32
        np.testing.assert_array_equal(tile[..., :3], p["image"])
        np.testing.assert_array_equal(tile[..., 3], p["inst"])
        np.testing.assert_array_equal(tile[..., 4], p["type"])
        assert r[1].startswith(p["source"] + "_")
    info = json.loads((tmp_path / "h" / "type_info.json").read_text())
    assert info["0"][0] == "background" and info["3"] == ["lymphocyte", list(LIZARD.colours[2])]
    assert len(info) == LIZARD.n_types + 1


def test_png_labels_keep_ids_above_65535(tmp_path):
    inst = np.zeros((P, P), np.int32)
    inst[2:6, 2:6], inst[8:12, 8:14] = 70_000, 16_777_217  # beyond uint16, and beyond float32's integers
    typ = np.where(inst == 70_000, 2, np.where(inst > 0, 4, 0)).astype(np.uint8)
    with PatchStoreWriter(tmp_path / "big.h5", patch_size=P, type_table=CONSEP, origin="real") as w:
        w.append(np.full((P, P, 3), 100, np.uint8), inst, typ, source="a", y=0, x=0)
    for fmt in ("png", "hovernet", "conic"):
        export(tmp_path / "big.h5", tmp_path / fmt, fmt, progress=False,
               type_map={"other": "drop", "inflammatory": "lymphocyte", "spindle-shaped": "connective"}
               if fmt == "conic" else None)
    name = _rows(tmp_path / "png" / "manifest.csv")[1][0]
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "png" / "labels" / f"{name}.tif")), inst)
    assert _rows(tmp_path / "png" / "types.csv")[1:] == [[name, "70000", "2", "inflammatory"],
                                                         [name, "16777217", "4", "spindle-shaped"]]
    np.testing.assert_array_equal(np.load(tmp_path / "hovernet" / f"{name}.npy")[..., 3], inst)
    conic = np.load(tmp_path / "conic" / "labels.npy")[0]
    np.testing.assert_array_equal(conic[..., 0], inst)
    np.testing.assert_array_equal(conic[..., 1], np.where(inst == 70_000, 3, np.where(inst > 0, 6, 0)))


def test_drop_leaves_those_nuclei_out(tmp_path):
    inst = np.zeros((P, P), np.int32)
    inst[1:4, 1:4], inst[6:9, 6:9] = 1, 2
    typ = np.where(inst == 1, 1, np.where(inst == 2, 3, 0)).astype(np.uint8)  # other, epithelial
    with PatchStoreWriter(tmp_path / "s.h5", patch_size=P, type_table=CONSEP, origin="real") as w:
        w.append(np.zeros((P, P, 3), np.uint8), inst, typ, source="a", y=0, x=0)
    export(tmp_path / "s.h5", tmp_path / "c", "conic", progress=False,
           type_map={"other": "drop", "inflammatory": "lymphocyte", "spindle-shaped": "connective"})
    lab = np.load(tmp_path / "c" / "labels.npy")[0]
    np.testing.assert_array_equal(lab[..., 0], np.where(inst == 2, 2, 0))
    np.testing.assert_array_equal(lab[..., 1], np.where(inst == 2, 2, 0))  # epithelial is Lizard's 2


@pytest.mark.parametrize("mode,ratio", [("add", 0.5), ("replace", 0.5), ("synthetic", 1.0)])
def test_a_mix_exports_exactly_its_plan(stores, tmp_path, mode, ratio):
    real, bank = stores
    mix = MixConfig(mode=mode, split="Train", ratio=ratio, seed=3)
    man = export(real, tmp_path / "m", "hovernet", bank=bank, mix=mix, progress=False)
    plan = build_plan(PatchStore(real), PatchStore(bank), mix)
    rows = _rows(tmp_path / "m" / "manifest.csv")[1:]
    assert [(r[2], int(r[4])) for r in rows] == plan.entries()
    assert [int(r[5]) for r in rows] == plan.mask.tolist()  # the parent real patch of each item
    assert man["origins"] == plan.counts() and man["plan"]["config"] == mix.to_dict()
    stores_by = {"store": PatchStore(real), "bank": PatchStore(bank)}
    for r in rows:
        p = stores_by[r[3]][int(r[4])]
        np.testing.assert_array_equal(np.load(tmp_path / "m" / r[1])[..., :3], p["image"])
        assert (r[3] == "bank") == (r[2] == "synthetic")


def test_refuses_types_the_format_cannot_hold(stores, tmp_path):
    real, _ = stores
    with pytest.raises(InputError) as err:
        export(real, tmp_path / "p", "pannuke", progress=False)
    msg = str(err.value)
    assert "neutrophil, lymphocyte, plasma, eosinophil" in msg and "would be lost" in msg and "`type_map`" in msg
    assert not (tmp_path / "p").exists()
    with pytest.raises(InputError, match="'giant' is not a type of format 'pannuke'"):
        resolve_type_map(LIZARD, PANNUKE, {"neutrophil": "giant"}, "pannuke")
    with pytest.raises(InputError, match="'mast' is not a type of the store's table"):
        resolve_type_map(LIZARD, PANNUKE, {"mast": "inflammatory"}, "pannuke")
    with pytest.raises(InputError, match="keeps the store's own types"):
        export(real, tmp_path / "h", "hovernet", type_map=TO_PANNUKE, progress=False)
    with pytest.raises(InputError, match="unknown export format 'tiff'"):
        export(real, tmp_path / "t", "tiff", progress=False)
    with pytest.raises(InputError, match="no split 'Val'"):
        export(real, tmp_path / "v", "png", split="Val", progress=False)
    with pytest.raises(InputError, match="not SOURCE=TARGET"):
        parse_type_map("neutrophil")


def test_existing_output_is_kept_and_a_failed_export_leaves_nothing(stores, tmp_path, monkeypatch):
    real, _ = stores
    out = tmp_path / "o"
    export(real, out, "png", split="Test", progress=False)
    before = sorted(p.name for p in (out / "images").iterdir())
    with pytest.raises(InputError, match="already exists"):
        export(real, out, "png", progress=False)
    assert sorted(p.name for p in (out / "images").iterdir()) == before

    calls = []

    def fail(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return orig(self, *args)

    writer = EXPORT_FORMATS["png"].writer
    orig = writer.write
    monkeypatch.setattr(writer, "write", fail)
    with pytest.raises(OSError):
        export(real, out, "png", overwrite=True, progress=False)
    assert sorted(p.name for p in (out / "images").iterdir()) == before  # the old export is untouched
    assert not (tmp_path / "o.partial").exists()
    monkeypatch.setattr(writer, "write", orig)
    export(real, out, "png", overwrite=True, progress=False)
    assert len(list((out / "images").iterdir())) == len(PatchStore(real))


def test_cellvit_labels_load_no_foreign_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "x.npy"
    np.save(path, np.array({"inst_map": Evil()}, dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="refusing to load builtins.print"):
        read_cellvit_label(path)
    (tmp_path / "y.npy").write_bytes(b"not a numpy file")
    with pytest.raises(InputError, match="not a CellViT label file"):
        read_cellvit_label(tmp_path / "y.npy")
    assert pickle.dumps(1)  # the module under test did not replace pickle globally


def test_cli_export_and_its_errors(stores, tmp_path, capsys):
    real, bank = stores
    main(["export", f"{real}:R2", str(tmp_path / "a"), "--format", "png", "--mode", "add", "--ratio", "0.5",
          "--bank", str(bank), "--seed", "1", "--quiet"])
    out = capsys.readouterr().out
    n = len(list((tmp_path / "a" / "images").iterdir()))
    assert f"wrote {n} patches" in out and "synthetic" in out
    for argv, message in (
        ([f"{real}:R2", str(tmp_path / "b"), "--format", "png", "--ratio", "0.5"], "--ratio belongs to a mix"),
        ([f"{real}", str(tmp_path / "b"), "--format", "png", "--fold", "1"], "--fold and --tissue are options of"),
        ([f"{real}", str(tmp_path / "b"), "--format", "conic", "--map", "lymphocyte"], "not SOURCE=TARGET"),
        ([f"{real}", str(tmp_path / "a"), "--format", "png"], "already exists"),
        ([f"{real}:Train", str(tmp_path / "b"), "--format", "png", "--bank", str(bank)], "--bank belongs to a mix"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(["export", *argv])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1


def test_prepare_reads_an_export_back(stores, tmp_path):
    """The whole loop a user runs: export, then ``nasdm-aug prepare`` of the exported folder."""
    real, _ = stores
    export(real, tmp_path / "p", "pannuke", type_map=TO_PANNUKE, progress=False)
    main(["prepare", "--format", "pannuke", str(tmp_path / "p" / "fold0"), str(tmp_path / "back.h5"),
          "--patch-size", str(P), "--stride", str(P), "--min-tissue", "0", "--min-nucleus-area", "0", "--quiet"])
    back, st = PatchStore(tmp_path / "back.h5"), PatchStore(real)
    assert len(back) == len(st)
    lut = np.array(PANNUKE_OF)
    for j in range(len(back)):
        p = back[j]
        q = st[int(p["source"].split("_")[1])]  # fold0/images/0_<k>.png is exported patch k
        np.testing.assert_array_equal(p["image"], q["image"])
        np.testing.assert_array_equal(p["inst"], relabel_sequential(q["inst"]))
        np.testing.assert_array_equal(p["type"], lut[q["type"]])
