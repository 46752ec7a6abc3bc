"""Banks as records, equal steps, the low-label rows, verdicts against a baseline, and the options
that reach a StudyConfig from the command line."""

import json
from collections import Counter

import numpy as np

import pytest
from click.testing import CliRunner

from cli.main import cli
from nasdm_aug.data.store import PatchStore
from nasdm_aug.studies.config import StudyConfig, parse_bank_args, study_config
from nasdm_aug.studies.data import ensure_banks
from nasdm_aug.studies.registry import (BANK_REGISTRY, STUDY_REGISTRY, Study, StudyRow, low_label_rows,
                                        select_rows)
from nasdm_aug.studies.plan import epoch_patches, protocol, training_data
from nasdm_aug.studies.summary import compare_rows
from nasdm_aug.utils import InputError

from test_studies import SPLITS, _store  # noqa: F401  (same tiny stores as the study tests)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return _store(tmp_path_factory.mktemp("rec") / "real.h5", 5, SPLITS)  # R2: 10 patches, R1: 5, Test: 10


def test_every_row_names_a_bank_record_and_a_baseline_of_its_study():
    for study in STUDY_REGISTRY.values():
        labels = [r.label for r in study.rows]
        for row in study.rows:
            assert row.bank is None or row.bank in BANK_REGISTRY
            assert row.baseline is None or row.baseline in labels
    assert STUDY_REGISTRY["balance"].banks == ("B", "RC")
    assert {b.split for b in BANK_REGISTRY.values()} == {"R1", "R2"}


def test_a_study_refuses_rows_naming_what_does_not_exist():
    row = StudyRow("x", "a", "real", "R2", 1.0)
    with pytest.raises(ValueError, match="baselines \\['nope'\\]"):
        Study("x", "t", (row, StudyRow("x", "b", "real", "R2", 1.0, baseline="nope")), "axis")
    with pytest.raises(ValueError, match="banks \\['S9'\\]"):
        Study("x", "t", (StudyRow("x", "b", "add", "R2", 0.5, bank="S9"),), "axis")


def test_low_label_rows_follow_the_configured_fractions():
    rows = select_rows("low-label", StudyConfig(label_fractions=(0.5,), label_synthetic_ratio=0.3))
    assert [r.label for r in rows] == ["50% R2", "50% R2 + S2", "50% R2 + S2 (filtered)", "50% R2 + copy-paste"]
    assert [(r.base_fraction, r.ratio, r.bank, r.filtered, r.paste) for r in rows] == [
        (0.5, 0.0, None, False, None), (0.5, 0.3, "S2", False, None), (0.5, 0.3, "S2", True, None),
        (0.5, 0.0, None, False, "uniform")]
    assert {r.baseline for r in rows[1:]} == {"50% R2"} and rows[0].baseline is None
    assert [r.label for r in select_rows("low-label")] == [r.label for r in low_label_rows()]


def test_old_configs_with_per_bank_fields_load_into_banks(tmp_path):
    path = tmp_path / "config.json"
    data = StudyConfig().to_dict()
    del data["banks"]
    path.write_text(json.dumps({**data, "s1": "a.h5", "s2": "", "balance_bank": "b.h5"}))
    assert StudyConfig.load(path).banks == {"S1": "a.h5", "B": "b.h5"}


def test_bank_options(tmp_path):
    assert parse_bank_args(["S2=s2.h5", "B=/x/b.h5"]) == {"S2": "s2.h5", "B": "/x/b.h5"}
    with pytest.raises(InputError, match="unknown bank 'S3'; valid: S1, S2, B, RC"):
        parse_bank_args(["S3=x.h5"])
    with pytest.raises(InputError, match="expected NAME=BANK.h5"):
        parse_bank_args(["s2.h5"])
    cfg = study_config("consep", banks={"S2": "s2.h5"}, epochs="1,2", label_fractions="0.2,0.4", equal_steps=True)
    assert (cfg.banks, cfg.epochs, cfg.label_fractions, cfg.equal_steps) == ({"S2": "s2.h5"}, (1, 2), (0.2, 0.4), True)
    with pytest.raises(InputError, match="label_fractions must be shares in \\(0, 1\\]"):
        study_config("demo", label_fractions="0.2,1.5")
    # the removed per-bank flag still works, says what replaces it, and lands in the same place
    res = CliRunner().invoke(cli, ["benchmark", "--study", "real-vs-synthetic", "--out", str(tmp_path),
                                   "--s1", "old.h5", "--bank", "S2=new.h5", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "--s1 is replaced by --bank S1=BANK.h5" in res.output
    assert json.loads(res.output[res.output.index("{"):res.output.index("\n}") + 2])["banks"] == {
        "S1": "old.h5", "S2": "new.h5"}


def test_equal_steps_gives_every_row_the_largest_rows_epoch(real):
    store = PatchStore(real)
    rows = select_rows("low-label", StudyConfig(label_fractions=(0.2, 0.5)))
    # |R2| = 10: 0.5 x 10 real + round(0.25 x 10) = 3 synthetic is the largest row
    assert epoch_patches(store, rows, StudyConfig()) == 8  # the low-label study's own protocol
    assert epoch_patches(store, rows, StudyConfig(equal_steps=False)) is None
    assert epoch_patches(store, rows, StudyConfig(epoch_patches=12)) == 12
    assert epoch_patches(store, select_rows("addition"), StudyConfig()) is None  # the paper's protocol
    line = protocol(StudyConfig(epochs=(2, 3), batch_size=8), 446)
    assert "446 patches (280 optimiser steps" in line  # ceil(446 / 8) = 56 steps x 5 epochs


def test_equal_steps_repeats_a_rows_own_patches_evenly(real):
    store = PatchStore(real)
    row = select_rows("low-label", StudyConfig(label_fractions=(0.2,)))[0]  # 2 real patches
    data, train = training_data(row, 0, store, None, StudyConfig(), epoch=7)
    assert len(data) == 2 and len(train) == 7
    seen = Counter(int(train[i]["index"]) for i in range(7))
    assert sorted(seen.values()) == [3, 4] and set(seen) == set(int(i) for i in data.plan().indices("real"))
    same, _ = training_data(row, 0, store, None, StudyConfig(), epoch=None)
    assert len(same) == 2


def test_verdicts_call_a_gain_only_beyond_both_spreads():
    base = {"row": "R", "dice": 0.70, "dice_std": 0.01, "pq": 0.30, "pq_std": 0.02,
            "per_type": {"a": {"f1": 0.5, "f1_std": 0.05}}}
    up = {"row": "R+S", "dice": 0.73, "dice_std": 0.01, "pq": 0.32, "pq_std": 0.01,
          "per_type": {"a": {"f1": 0.35, "f1_std": 0.05}}}
    vs = compare_rows(up, base)
    assert vs["baseline"] == "R"
    assert vs["dice"]["verdict"] == "gain" and vs["dice"]["diff"] == pytest.approx(0.03)
    assert vs["dice"]["spread"] == pytest.approx(0.02)
    assert vs["pq"]["verdict"] == "within spread"  # 0.02 < 0.01 + 0.02
    assert vs["per_type_f1"]["a"]["verdict"] == "loss"  # -0.15 < -(0.05 + 0.05)
    assert compare_rows({**up, "dice": None}, base)["dice"] is None


def test_filtered_rows_need_scores_or_a_segmenter(real, tmp_path):
    store = PatchStore(real)
    bank = _store(tmp_path / "s2.h5", 5, {"R2": ["a", "b"]}, origin="synthetic", parents=list(store.indices("R2")))
    rows = [r for r in select_rows("low-label") if r.filtered]
    cfg = StudyConfig(banks={"S2": str(bank)})
    with pytest.raises(InputError, match="filtered rows need fidelity scores.*pass `segmenter`"):
        ensure_banks(cfg, store, rows, tmp_path, progress=False)
    # the study refuses it before writing anything
    from nasdm_aug.studies.run import run_studies

    with pytest.raises(InputError, match="holds none; pass `segmenter`"):
        run_studies(cfg.replace(store=str(real)), "low-label", tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()
    unfiltered = [r for r in select_rows("low-label") if r.bank and not r.filtered]
    assert set(ensure_banks(cfg, store, unfiltered, tmp_path, progress=False)) == {"S2"}


def test_a_missing_bank_names_the_flag_that_gives_it(real, tmp_path):
    with pytest.raises(InputError, match="needs the synthetic bank S1 .*`--bank S1=BANK.h5`"):
        ensure_banks(StudyConfig(), PatchStore(real), select_rows("real-vs-synthetic"), tmp_path, progress=False)
    with pytest.raises(InputError, match="does not exist"):
        ensure_banks(StudyConfig(banks={"S1": str(tmp_path / "none.h5")}), PatchStore(real),
                     select_rows("real-vs-synthetic"), tmp_path, progress=False)


def test_a_row_builds_its_dataset_from_its_own_mix_config(real, tmp_path):
    from nasdm_aug.mixing import SyntheticMixDataset

    store = PatchStore(real)
    bank = _store(tmp_path / "s2.h5", 5, {"R2": ["a", "b"]}, origin="synthetic", parents=list(store.indices("R2")))
    row = select_rows("low-label", StudyConfig(label_fractions=(0.2,)))[1]  # 20% R2 + S2
    data, train = training_data(row, 3, store, PatchStore(bank), StudyConfig(equal_steps=False))
    direct = SyntheticMixDataset(store, bank, split="R2", mode="add", ratio=0.25, base_fraction=0.2, seed=3,
                                 target="uniform")
    assert data is train and data.plan().entries() == direct.plan().entries()
    assert SyntheticMixDataset.from_config(store, bank, row.mix_config(3, "uniform")).plan().entries() == \
        direct.plan().entries()


def test_low_label_end_to_end_at_equal_steps(real, tmp_path):
    """Every row of the low-label study trains the same steps; the filtered row draws only the
    bank's best-scored patches, the copy-paste row pastes nuclei, and the report compares each
    row with its fraction's real-only row."""
    import h5py

    store = PatchStore(real)
    r2 = store.indices("R2")
    bank = _store(tmp_path / "s2.h5", 5, {"R2": ["a", "b"]}, origin="synthetic", parents=list(r2))
    scores = np.linspace(0.0, 1.0, len(r2)).astype(np.float32)  # bank patch i scores i / 9
    with h5py.File(bank, "a") as f:
        f.create_dataset("fidelity", data=scores)
    out = tmp_path / "ll"
    StudyConfig(name="test", epochs=(0, 1), batch_size=4, n_runs=1, device="cpu", label_fractions=(0.2,),
                label_synthetic_ratio=0.2, filter_top_fraction=0.5, paste_prob=1.0).save(tmp_path / "cfg.json")
    res = CliRunner().invoke(cli, ["benchmark", "--preset", str(tmp_path / "cfg.json"), "--study", "low-label",
                                   "--out", str(out), "--store", str(real), "--bank", f"S2={bank}"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "results.json").read_text())
    assert [e["row"] for e in summary["table"]] == ["20% R2", "20% R2 + S2", "20% R2 + S2 (filtered)",
                                                    "20% R2 + copy-paste"]
    # equal steps: 2 real + 2 synthetic is the largest row, so every row's epoch holds 4 patches
    assert "of 4 patches (1 optimiser steps" in summary["protocol"]["low-label"]
    for slug in ("20-r2", "20-r2--copy-paste", "20-r2--s2"):  # HoVerNet saw 4 patches an epoch in every row
        assert json.loads((out / "runs/low-label" / slug / "seed0/hovernet/data.json").read_text())["n_train"] == 4
    fp = json.loads((out / "runs/low-label/20-r2--s2-filtered/seed0/fingerprint.json").read_text())
    assert fp["filter"] == {"top_fraction": 0.5, "min_fidelity": None} and fp["epoch_patches"] == 4
    # the filtered row's synthetic patches are among the best-scored half of the bank
    data, _ = training_data(select_rows("low-label", StudyConfig.from_dict(summary["config"]))[2], 0, store,
                            PatchStore(bank), StudyConfig.from_dict(summary["config"]), epoch=4)
    assert set(data.plan().indices("synthetic")) <= set(np.argsort(scores)[-5:].tolist())
    for entry in summary["table"][1:]:
        assert entry["vs_baseline"]["baseline"] == "20% R2"
    tables = (out / "tables.md").read_text()
    assert "Equal steps: every row trains 0 + 1 epochs" in tables and "| 20% R2 | 2 (2 + 0) |" in tables
    assert (out / "study_low-label.png").stat().st_size > 0
