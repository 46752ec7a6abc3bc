"""Recombined masks: the split's nuclei untouched plus real nuclei of its rare types, drawn by the patch model."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import ndimage

from cli.main import cli
from nasdm_aug.data.store import PatchStore
from nasdm_aug.data.store_writer import PatchStoreWriter
from nasdm_aug.mixing import PasteOptions, recombine_masks, recombine_parents
from nasdm_aug.synthesize import RecombineOptions, SynthesizeConfig
from nasdm_aug.types import LIZARD
from nasdm_aug.utils import InputError
from nasdm_test_runs import SIZE

CENTRES = ((4, 4), (4, 11), (11, 4), (11, 11))
TRAIN = list(range(8))  # img0..img3; img4, img5 (patches 8..11) are R2
NEUTROPHIL, EPITHELIAL, PLASMA = 1, 2, 4


def _mask(i):
    """Two discs (radius 2, 13 px) at two of the four quadrant centres; mostly epithelial."""
    inst = np.zeros((SIZE, SIZE), np.int32)
    typ = np.zeros((SIZE, SIZE), np.uint8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for k, (cy, cx) in enumerate((CENTRES[i % 4], CENTRES[(i + 1 + i // 4) % 4])):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 4
        inst[disc] = k + 1
        typ[disc] = NEUTROPHIL if (k == 0 and i % 4 == 0) else PLASMA if (k == 1 and i % 5 == 2) else EPITHELIAL
    return inst, typ


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    path = tmp_path_factory.mktemp("recombine") / "real.h5"
    rng = np.random.default_rng(0)
    with PatchStoreWriter(path, patch_size=SIZE, type_table=LIZARD) as w:
        for i in range(12):
            inst, typ = _mask(i)
            w.append(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), inst, typ, source=f"img{i // 2}", x=i)
        w.set_splits({"Train": [f"img{k}" for k in range(4)], "R2": ["img4", "img5"]})
    return path


def _counts(inst, typ):
    """Nuclei per type id 1..6 over a stack of masks."""
    out = np.zeros(LIZARD.n_types, np.int64)
    for m, t in zip(inst, typ):
        for n in np.unique(m[m > 0]):
            out[int(t[m == n][0]) - 1] += 1
    return out


def _named(counts):
    return dict(zip(LIZARD.names, counts.tolist()))


def test_originals_stay_and_rare_types_are_added(skewed):
    inst, typ, rec = recombine_masks(skewed, "Train", target="sqrt", seed=0)
    real = PatchStore(skewed)
    assert rec["parents"] == TRAIN and inst.shape == (8, SIZE, SIZE) and inst.dtype == np.int32 and typ.dtype == np.uint8
    orig = real.read(TRAIN, keys=("inst", "type"))
    for i in range(len(TRAIN)):
        o = orig["inst"][i] > 0
        np.testing.assert_array_equal(inst[i][o], orig["inst"][i][o])  # every original nucleus, untouched
        np.testing.assert_array_equal(typ[i][o], orig["type"][i][o])
        for n in np.unique(inst[i][~o & (inst[i] > 0)]):
            pix = inst[i] == n
            assert n > orig["inst"][i].max() and pix.sum() >= 10
            assert set(np.unique(typ[i][pix]).tolist()) <= {NEUTROPHIL, PLASMA}  # only the rare types
            assert ndimage.label(pix)[1] == 1
            grown = ndimage.binary_dilation(pix, np.ones((3, 3), bool))
            assert not ((inst[i] > 0) & (inst[i] != n) & grown).any()  # a clear pixel to every other nucleus
    before = _counts(orig["inst"], orig["type"])
    after = _counts(inst, typ)
    assert rec["nuclei_before"] == _named(before) and before[[0, 1, 3]].tolist() == [2, 12, 2]
    assert rec["nuclei_after"] == _named(after)
    assert after[0] > before[0] and after[3] > before[3] and (after - before)[[1, 2, 4, 5]].sum() == 0
    # the shares move toward the target: square roots of the split's counts
    target = np.sqrt(before) / np.sqrt(before).sum()
    l1 = [np.abs(c / c.sum() - target).sum() for c in (before, after)]
    assert l1[1] < l1[0] - 0.1
    assert rec["l1_before"] == pytest.approx(l1[0]) and rec["l1_after"] == pytest.approx(l1[1])
    assert rec["target"] == pytest.approx(dict(zip(LIZARD.names, np.round(target, 4))))
    assert (rec["store"], rec["split"], rec["seed"], rec["target_given"]) == (str(skewed), "Train", 0, "sqrt")
    assert rec["paste"] == PasteOptions().to_dict() and json.loads(json.dumps(rec)) == rec


def test_seeded_and_spread_over_n_masks(skewed):
    a = recombine_masks(skewed, "Train", seed=3)
    b = recombine_masks(skewed, "Train", seed=3)
    c = recombine_masks(skewed, "Train", seed=4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2] and not np.array_equal(a[0], c[0])
    inst, _, rec = recombine_masks(skewed, "Train", target="uniform", n=20, seed=1)
    parents = np.asarray(rec["parents"])
    np.testing.assert_array_equal(parents, recombine_parents(skewed, "Train", 20, seed=1))
    assert len(inst) == 20 and set(np.bincount(parents, minlength=8).tolist()) <= {2, 3}
    same = [np.flatnonzero(parents == p) for p in range(8)]
    assert any(not np.array_equal(inst[g[0]], inst[g[1]]) for g in same)  # copies of a mask get other nuclei


def test_refusals(skewed):
    with pytest.raises(InputError, match="already at the target shares"):
        recombine_masks(skewed, "Train", target={"neutrophil": 2, "epithelial": 12, "plasma": 2})
    with pytest.raises(InputError, match="lacks lymphocyte but holds no usable nucleus of it"):
        recombine_masks(skewed, "Train", target={"lymphocyte": 1, "epithelial": 1})
    with pytest.raises(InputError, match="no split 'R9'"):
        recombine_masks(skewed, "R9")
    with pytest.raises(InputError, match="n must be >= 1"):
        recombine_parents(skewed, "Train", 0)


def _args(runs, out, *extra):
    return ["synthesize", "--model", str(runs[0]), "--model", str(runs[1]), "--out", str(out),
            "--sampler", "ddim", "--steps", "3", "--batch-size", "3", "--seed", "2", "--device", "cpu", *extra]


def test_synthesize_recombine_records_and_refuses_changed_options(runs, skewed, tmp_path, monkeypatch):
    import nasdm_aug.synthesize.run as syn

    out = tmp_path / "rec.h5"
    line = ["--recombine", f"{skewed}:Train", "--target", "sqrt"]
    dry = CliRunner().invoke(cli, _args(runs, out, *line, "--dry-run"))
    assert dry.exit_code == 0 and "patches: 8" in dry.output, dry.output
    # killed before the merge: the parts stay, and a rerun with another target must not mix them in
    merge = syn._merge
    monkeypatch.setattr(syn, "_merge", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
    assert str(CliRunner().invoke(cli, _args(runs, out, *line)).exception) == "killed"
    monkeypatch.setattr(syn, "_merge", merge)
    res = CliRunner().invoke(cli, _args(runs, out, "--recombine", f"{skewed}:Train", "--target", "uniform"))
    assert isinstance(res.exception, InputError)
    assert "holds an interrupted run made with other arguments (recombine.target)" in str(res.exception)
    res = CliRunner().invoke(cli, _args(runs, out, *line))
    assert res.exit_code == 0, res.output
    assert '"chunks_done_before": 3' in res.output  # all three chunks came from the killed run
    bank = PatchStore(out)
    inst, typ, rec = recombine_masks(skewed, "Train", target="sqrt", seed=2)
    d = bank.read(range(len(bank)), keys=("inst", "type", "parent"))
    np.testing.assert_array_equal(d["inst"], inst)
    np.testing.assert_array_equal(d["type"], typ)
    np.testing.assert_array_equal(d["parent"], TRAIN)  # the real mask each one started from
    assert bank.attrs["recombine"] == rec and bank.attrs["provenance"]["parent_store"] == str(skewed.resolve())
    assert bank.config["recombine"]["target"] == "sqrt" and bank.config["recombine"]["split"] == "Train"
    assert CliRunner().invoke(cli, _args(runs, out, *line, "--resume")).output.strip().endswith("nothing to do")
    res = CliRunner().invoke(cli, _args(runs, out, "--recombine", f"{skewed}:Train", "--target", "uniform", "--resume"))
    assert "made with other arguments (recombine.target)" in str(res.exception)
    res = CliRunner().invoke(cli, _args(runs, out, *line, "--num", "4", "--resume"))
    assert "made with other arguments (recombine.n)" in str(res.exception)


@pytest.mark.parametrize("extra, message", [
    (["--recombine", "{store}:R9"], "has no split 'R9'"),
    (["--recombine", "{store}", "--target", "macrophage=1"], "names type 'macrophage'"),
    (["--recombine", "{store}", "--split", "R2"], "recombine carries its own split"),
    (["--recombine", "{store}", "--masks", "{store}"], "give exactly one source, not masks and recombine"),
])
def test_bad_input(runs, skewed, tmp_path, extra, message):
    extra = [e.format(store=skewed) for e in extra]
    res = CliRunner().invoke(cli, _args(runs, tmp_path / "x.h5", *extra, "--dry-run"))
    assert res.exit_code != 0 and message in (res.output + str(res.exception)), res.output


def test_configs_round_trip_and_old_records_load():
    cfg = SynthesizeConfig(recombine=RecombineOptions(store="real.h5", split="R1", target="Uniform", n=5,
                                                      paste=PasteOptions(margin=2)))
    assert cfg.recombine.target == "uniform" and cfg.source.value == "recombine" and cfg.mask_store == "real.h5"
    assert SynthesizeConfig.from_dict(cfg.to_dict()) == cfg
    assert SynthesizeConfig(recombine={"store": "real.h5"}).recombine == RecombineOptions(store="real.h5")
    with pytest.raises(ValueError, match="paste.allow_overlap must be false"):
        RecombineOptions(store="real.h5", paste=PasteOptions(allow_overlap=True))
    old = SynthesizeConfig(masks="real.h5", split="R2").to_dict()
    del old["recombine"]  # written before recombine existed
    assert SynthesizeConfig.from_dict(old).recombine is None
