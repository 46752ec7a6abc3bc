"""Fidelity scores of a bank (``nasdm-aug score``) and the mixing plans and exports filtered by them.

The segmentation step is replaced by fakes that read the patch index from the image (pixel
[0, 0, 0] is 10 + index, as mix_stores draws it) and return a chosen prediction, so every score
has a known answer; one test runs a real (untrained) HoVerNet through the whole path.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from mix_stores import P, make_image

from cli.main import cli
from hovernet.config import HoVerNetConfig, ModelConfig
from nasdm_aug.data.store import PatchStore
from nasdm_aug.data.store_writer import PatchStoreWriter
from nasdm_aug.export import export
from nasdm_aug.mixing import SyntheticMixDataset
from nasdm_aug.mixing.plan import MixConfig, build_plan
from nasdm_aug.scoring import (SCORES_KEY, patch_score, read_score_info, read_scores, score_bank,
                               select_by_fidelity)
from nasdm_aug.types import CONSEP, LIZARD
from nasdm_aug.utils import InputError

SMALL = ModelConfig(encoder="resnet18", decoder_channels=(16, 8, 8, 8, 8), dense_units=0, growth=4, n_types=6)


def file_sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _rect(*boxes: tuple[int, int, int, int]) -> np.ndarray:
    """Instance map [P, P] with instance k + 1 at boxes[k] = (y, x, h, w)."""
    inst = np.zeros((P, P), np.int32)
    for k, (y, x, h, w) in enumerate(boxes):
        inst[y:y + h, x:x + w] = k + 1
    return inst


# known answers: (mask, prediction, pq, dq)
NUC, OTHER = (2, 2, 4, 4), (9, 9, 4, 4)
EMPTY = _rect()
CASES = [
    (_rect(NUC), _rect(NUC), 1.0, 1.0),  # found exactly
    (EMPTY, EMPTY, 1.0, 1.0),  # nothing asked, nothing found
    (EMPTY, _rect(NUC), 0.0, 0.0),  # nothing asked, a nucleus found
    (_rect(NUC), EMPTY, 0.0, 0.0),  # a nucleus asked, none found
    (_rect(NUC), _rect((2, 2, 4, 3)), 0.75, 1.0),  # found with IoU 12/16: SQ 0.75, DQ 1
    (_rect(NUC, OTHER), _rect(NUC), 2 / 3, 2 / 3),  # one of two found: DQ = 1 / (1 + 0.5)
]


def _write_bank(path, masks, *, origin="synthetic", magnification=None, table=LIZARD):
    attrs = {} if magnification is None else {"magnification": magnification}
    with PatchStoreWriter(path, patch_size=P, type_table=table, origin=origin, attrs=attrs) as w:
        for j, inst in enumerate(masks):
            w.append(make_image(inst, 1, j), inst, (inst > 0).astype(np.uint8), source="bank", parent=j, seed=j)
    return path


def _run_dir(path, weights=b"weights-1", table=LIZARD, magnification=None):
    """A HoVerNet run folder as the checks read it (the fakes never load its weights)."""
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(weights)
    HoVerNetConfig(model=SMALL).save(path / "config.json")
    info = {"type_table": table.to_json(), "patch_size": P}
    if magnification is not None:
        info["magnification"] = magnification
    (path / "data.json").write_text(json.dumps(info))
    return path


class FakeSegmenter:
    """Stands in for ``load_segmenter``: predicts ``predict(bank index)``; records what it segments."""

    def __init__(self, predict, fail_on_call=None):
        self.predict, self.fail_on_call = predict, fail_on_call
        self.loads, self.seen, self.calls = 0, [], 0

    def __call__(self, run_dir, device="cpu"):
        self.loads += 1

        def segment(images):
            self.calls += 1
            if self.calls == self.fail_on_call:
                raise KeyboardInterrupt  # a kill in the middle of the run
            idx = [int(im[0, 0, 0]) - 10 for im in images]
            self.seen += idx
            inst = np.stack([self.predict(i) for i in idx])
            return inst, (inst > 0).astype(np.uint8)

        return segment, list(LIZARD.names)


@pytest.fixture
def fake(monkeypatch):
    def install(predict, fail_on_call=None):
        f = FakeSegmenter(predict, fail_on_call)
        monkeypatch.setattr("nasdm_aug.metrics.evaluate.load_segmenter", f)
        return f

    return install


@pytest.fixture
def cases_bank(tmp_path):
    return _write_bank(tmp_path / "cases.h5", [c[0] for c in CASES])


@pytest.fixture
def seg(tmp_path):
    return _run_dir(tmp_path / "hv")


# -- per-patch scores ---------------------------------------------------------------------------------
@pytest.mark.parametrize("criterion, col", [("pq", 2), ("dq", 3)])
def test_known_scores(cases_bank, seg, fake, criterion, col):
    f = fake(lambda i: CASES[i][1])
    scores = score_bank(cases_bank, seg, criterion=criterion, batch_size=4, progress=False)
    want = np.array([c[col] for c in CASES], np.float32)
    np.testing.assert_allclose(scores, want, atol=1e-6)
    np.testing.assert_allclose(read_scores(cases_bank), want, atol=1e-6)
    assert sorted(f.seen) == list(range(len(CASES))) and f.loads == 1
    for mask, pred, pq, dq in CASES:
        assert patch_score(mask, pred, criterion) == pytest.approx(pq if criterion == "pq" else dq)
    info = read_score_info(cases_bank)
    assert info["criterion"] == criterion and info["scoring_version"] == 1
    assert info["segmenter_weights"] == file_sha256(seg / "model.safetensors")[:16]
    assert info["n_scored"] == info["n_patches"] == len(CASES)
    assert len(PatchStore(cases_bank)) == len(CASES)  # still a valid PatchStore


def test_resume_scores_only_the_rest(cases_bank, seg, fake):
    killed = fake(lambda i: CASES[i][1], fail_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        score_bank(cases_bank, seg, batch_size=2, progress=False)
    part = read_scores(cases_bank)
    assert killed.seen == [0, 1] and np.isnan(part[2:]).all()
    np.testing.assert_allclose(part[:2], [1.0, 1.0])
    again = fake(lambda i: CASES[i][1])
    scores = score_bank(cases_bank, seg, batch_size=2, progress=False)
    assert again.seen == [2, 3, 4, 5]
    np.testing.assert_allclose(scores, [c[2] for c in CASES], atol=1e-6)
    done = fake(lambda i: CASES[i][1])
    np.testing.assert_allclose(score_bank(cases_bank, seg, progress=False), scores)
    assert done.loads == 0  # a finished bank loads no segmenter


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def test_refusals_write_nothing(tmp_path, cases_bank, seg, fake):
    f = fake(lambda i: CASES[i][1])
    real = _write_bank(tmp_path / "real.h5", [c[0] for c in CASES], origin="real")
    at40 = _write_bank(tmp_path / "at40.h5", [c[0] for c in CASES], magnification=40.0)
    other_types = _run_dir(tmp_path / "hv-consep", table=CONSEP)
    at20 = _run_dir(tmp_path / "hv-20x", magnification=20.0)
    for bank, segmenter, words in (
        (real, seg, ["real.h5", "not a synthetic bank"]),
        (cases_bank, tmp_path / "nowhere", ["nowhere", "no such HoVerNet run"]),
        (cases_bank, other_types, ["hv-consep", "cases.h5", "'consep'", "'lizard'"]),
        (at40, at20, ["hv-20x", "at40.h5", "20x", "40x"]),
    ):
        digest = file_sha256(bank)
        with pytest.raises(InputError) as exc:
            score_bank(bank, segmenter, progress=False)
        msg = _one_line(exc)
        assert all(w in msg for w in words), msg
        assert file_sha256(bank) == digest and read_scores(bank) is None
    with pytest.raises(InputError, match="criterion"):
        score_bank(cases_bank, seg, criterion="aji", progress=False)
    assert f.loads == 0 and read_scores(cases_bank) is None


def test_another_segmenter_or_criterion_needs_overwrite(tmp_path, cases_bank, seg, fake):
    fake(lambda i: CASES[i][1])
    first = score_bank(cases_bank, seg, criterion="pq", progress=False)
    other = _run_dir(tmp_path / "hv-other", weights=b"weights-2")
    for segmenter, criterion in ((seg, "dq"), (other, "pq")):
        digest = file_sha256(cases_bank)
        with pytest.raises(InputError) as exc:
            score_bank(cases_bank, segmenter, criterion=criterion, progress=False)
        assert "overwrite" in _one_line(exc)
        assert file_sha256(cases_bank) == digest
    np.testing.assert_allclose(read_scores(cases_bank), first)
    dq = score_bank(cases_bank, seg, criterion="dq", overwrite=True, progress=False)
    np.testing.assert_allclose(dq, [c[3] for c in CASES], atol=1e-6)
    assert read_score_info(cases_bank)["criterion"] == "dq"


def test_cli_score_prints_mean_and_quartiles(cases_bank, seg, fake):
    fake(lambda i: CASES[i][1])
    res = CliRunner().invoke(cli, ["score", str(cases_bank), "--segmenter", str(seg), "--quiet"])
    assert res.exit_code == 0, res.output
    pq = np.array([c[2] for c in CASES])
    q1, q2, q3 = np.quantile(pq, [0.25, 0.5, 0.75])
    assert "6 patches scored (6 now, 0 before)" in res.output
    assert f"mean {pq.mean():.4f}; quartiles {q1:.4f} / {q2:.4f} / {q3:.4f}" in res.output
    res = CliRunner().invoke(cli, ["score", str(cases_bank), "--segmenter", str(seg), "--criterion", "dq"])
    assert isinstance(res.exception, InputError) and "--overwrite" in str(res.exception)


@pytest.mark.usefixtures("one_thread")
def test_a_real_hovernet_scores_the_bank(tmp_path, cases_bank):
    import torch
    from safetensors.torch import save_file

    from hovernet.model import HoVerNet

    hv = _run_dir(tmp_path / "hv-real")
    torch.manual_seed(0)
    model = HoVerNet(SMALL)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(hv / "model.safetensors"))
    scores = score_bank(cases_bank, hv, device="cpu", batch_size=4, progress=False)
    assert scores.shape == (len(CASES),) and np.isfinite(scores).all()
    assert ((scores >= 0) & (scores <= 1)).all()
    assert read_score_info(cases_bank)["segmenter"] == str(hv.resolve())


# -- selection -------------------------------------------------------------------------------------------
def test_select_by_fidelity():
    scores = np.array([0.2, 0.9, np.nan, 0.9, 0.5, 0.1])
    every = np.arange(6)
    assert select_by_fidelity(scores, every, min_fidelity=0.5).tolist() == [1, 3, 4]  # 0.5 passes
    # 5 scored -> the best round(0.5 x 5) = 3 of the whole bank, ties by index
    assert select_by_fidelity(scores, every, top_fraction=0.5).tolist() == [1, 3, 4]
    assert select_by_fidelity(scores, every, top_fraction=0.2).tolist() == [1]
    assert select_by_fidelity(scores, np.array([4, 0, 3]), top_fraction=0.5).tolist() == [4, 3]  # bank-wide rank
    assert select_by_fidelity(scores, every, top_fraction=1.0).tolist() == [0, 1, 3, 4, 5]  # never a NaN
    assert select_by_fidelity(scores, every).tolist() == every.tolist()
    for kw in ({"min_fidelity": 1.5}, {"min_fidelity": -0.1}, {"top_fraction": 0.0}, {"top_fraction": 1.1},
               {"min_fidelity": 0.5, "top_fraction": 0.5}, {"min_fidelity": float("nan")}):
        with pytest.raises(InputError):
            select_by_fidelity(scores, every, **kw)


# -- plans filtered by the scores ----------------------------------------------------------------------
@pytest.fixture
def scored(stores, tmp_path, fake):
    """The mixing tests' stores with a copy of the bank scored 1.0 at even indices, 0.0 at odd ones."""
    real, bank = stores
    copy = tmp_path / "bank.h5"
    shutil.copy(bank, copy)
    st = PatchStore(copy)
    masks = {j: st[j]["inst"] for j in range(len(st))}
    st.close()
    fake(lambda j: masks[j] if j % 2 == 0 else EMPTY)
    score_bank(copy, _run_dir(tmp_path / "hv"), progress=False)
    return real, copy


EVEN = np.arange(0, 30, 2)


@pytest.mark.parametrize("mode, ratio", [("add", 0.25), ("synthetic", 1.0), ("balance", 0.5), ("replace", 0.5)])
@pytest.mark.parametrize("kw", [{"min_fidelity": 0.5}, {"top_fraction": 0.5}])
def test_plans_draw_only_passing_patches(scored, mode, ratio, kw):
    real, bank = scored
    plan = build_plan(PatchStore(real), PatchStore(bank), MixConfig(mode=mode, ratio=ratio, **kw))
    syn = plan.indices("synthetic")
    assert len(syn) and np.isin(syn, EVEN).all()
    assert plan.fidelity_kept == (15, 30)
    if mode == "synthetic":  # every passing patch whose parent is in Train (bank j has parent j, 0..23)
        assert syn.tolist() == list(range(0, 24, 2))
    if mode == "replace":  # 12 of the 24 Train patches replaced: exactly those with a passing counterpart
        assert sorted(syn.tolist()) == list(range(0, 24, 2)) and len(plan) == 24


def test_top_fraction_one_is_no_filter(scored):
    real, bank = scored
    for mode in ("add", "synthetic", "replace"):
        plain = build_plan(PatchStore(real), PatchStore(bank), MixConfig(mode=mode))
        full = build_plan(PatchStore(real), PatchStore(bank), MixConfig(mode=mode, top_fraction=1.0))
        assert plain.entries() == full.entries()
        assert plain.fidelity_kept is None and full.fidelity_kept == (30, 30)


def test_dataset_passes_the_filter_and_summarises_it(scored):
    real, bank = scored
    ds = SyntheticMixDataset(real, bank, mode="synthetic", min_fidelity=0.5)
    assert len(ds) == 12 and all(ds[k]["index"] % 2 == 0 for k in range(len(ds)))
    assert "fidelity filter min_fidelity 0.5: kept 15 of the bank's 30 patches" in ds.summary()
    assert "fidelity" not in SyntheticMixDataset(real, bank, mode="synthetic").summary()


def test_filter_needs_a_wholly_scored_bank(stores, tmp_path):
    real, bank = stores
    with pytest.raises(InputError) as exc:
        build_plan(PatchStore(real), PatchStore(bank), MixConfig(mode="add", min_fidelity=0.5))
    msg = _one_line(exc)
    assert str(bank) in msg and "nasdm-aug score" in msg
    copy = tmp_path / "part.h5"
    shutil.copy(bank, copy)
    with h5py.File(copy, "r+") as f:  # as an interrupted scoring leaves it
        f.create_dataset(SCORES_KEY, data=np.r_[np.ones(10), np.full(20, np.nan)].astype(np.float32))
    with pytest.raises(InputError) as exc:
        build_plan(PatchStore(real), PatchStore(copy), MixConfig(mode="add", top_fraction=0.5))
    assert "20 of the bank's 30 patches have none" in _one_line(exc)
    with pytest.raises(InputError, match="no bank was given"):
        build_plan(PatchStore(real), None, MixConfig(mode="real", min_fidelity=0.5))


def test_filter_leaving_too_few_is_refused(scored):
    real, bank = scored
    with pytest.raises(InputError) as exc:
        build_plan(PatchStore(real), PatchStore(bank), MixConfig(mode="replace", ratio=0.75, min_fidelity=0.5))
    assert "only 12 have a counterpart" in _one_line(exc) and "keeps 15 of the bank's 30" in str(exc.value)


@pytest.mark.parametrize("kw", [{"min_fidelity": 1.01}, {"min_fidelity": -1.0}, {"top_fraction": 0},
                                {"top_fraction": 2.0}, {"min_fidelity": 0.1, "top_fraction": 0.1}])
def test_config_validates_the_filter(kw):
    with pytest.raises(InputError):
        MixConfig(**kw)


def test_old_config_json_loads(tmp_path):
    old = {"mode": "add", "split": "Train", "ratio": 0.5, "base_fraction": 0.25, "include_generated": False,
           "seed": 3, "target": "sqrt"}
    (tmp_path / "old.json").write_text(json.dumps(old))
    cfg = MixConfig.load(tmp_path / "old.json")
    assert cfg.seed == 3 and cfg.min_fidelity is None and cfg.top_fraction is None and not cfg.filters_bank
    new = MixConfig(mode="add", top_fraction=0.25)
    assert MixConfig.from_dict(new.to_dict()) == new


# -- exports --------------------------------------------------------------------------------------------
def _manifest_rows(out):
    with open(out / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_export_a_bank_filtered(scored, tmp_path):
    real, bank = scored
    man = export(bank, tmp_path / "b", "png", min_fidelity=0.5, progress=False)
    assert [int(r["index"]) for r in _manifest_rows(tmp_path / "b")] == EVEN.tolist()
    f = man["fidelity_filter"]
    assert (f["min_fidelity"], f["top_fraction"], f["kept"], f["of"]) == (0.5, None, 15, 30)
    assert f["scores"]["criterion"] == "pq"
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["fidelity_filter"]["kept"] == 15
    assert export(bank, tmp_path / "c", "png", progress=False)["fidelity_filter"] is None
    with pytest.raises(InputError, match="real store"):
        export(real, tmp_path / "d", "png", top_fraction=0.5, progress=False)
    assert not (tmp_path / "d").exists()


def test_cli_export_a_mix_filtered(scored, tmp_path):
    real, bank = scored
    res = CliRunner().invoke(cli, ["export", f"{real}:Train", str(tmp_path / "m"), "--format", "png", "--mode",
                                   "synthetic", "--bank", str(bank), "--top-fraction", "0.5", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "fidelity filter (top fraction 0.5): kept 15 of 30 bank patches" in res.output
    rows = _manifest_rows(tmp_path / "m")
    assert [int(r["index"]) for r in rows] == list(range(0, 24, 2)) and {r["origin"] for r in rows} == {"synthetic"}
    man = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert man["plan"]["config"]["top_fraction"] == 0.5 and man["fidelity_filter"]["kept"] == 15
