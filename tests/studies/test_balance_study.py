"""The rare-type balancing study: plan, bank synthesis, end-to-end run and its report."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli
from nasdm_aug.sampling import SamplerOptions
from nasdm_aug.data.store import PatchStore
from nasdm_aug.data.store_writer import PatchStoreWriter
from nasdm_aug.studies.report import format_per_type
from nasdm_aug.studies import STUDIES, StudyConfig, plan_study, select_rows, summarise
from nasdm_aug.studies.data import ensure_banks
from nasdm_aug.types import LIZARD
from nasdm_test_runs import make_run

P = 32
SPLITS = {"Test": ["t0", "t1"], "R2": ["a", "b"], "Train": ["c"], "R1": ["c"]}


def _write(path, type_lists, sources, origin="real"):
    yy, xx = np.mgrid[:P, :P]
    with PatchStoreWriter(path, patch_size=P, type_table=LIZARD, origin=origin) as w:
        for types, source in zip(type_lists, sources):
            inst, type_map = np.zeros((P, P), np.int32), np.zeros((P, P), np.uint8)
            for k, t in enumerate(types, 1):
                cy, cx = 8 + 16 * ((k - 1) // 2), 8 + 16 * ((k - 1) % 2)
                disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= 16
                inst[disk], type_map[disk] = k, t
            image = np.full((P, P, 3), 220, np.uint8)
            image[inst > 0] = (90, 40, 140)
            w.append(image, inst, type_map, source=source)
        if origin == "real":
            w.set_splits(SPLITS)
    return path


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    # R2 (indices 0..7): epithelial-heavy, one neutrophil; Test and Train: every type
    r2 = [[2, 2, 3]] * 7 + [[2, 1, 6]]
    rest = [[1, 2, 3, 4], [5, 6, 1, 2], [3, 4, 5, 6], [2, 1, 4, 5]]
    sources = ["a"] * 4 + ["b"] * 4 + ["t0", "t0", "t1", "t1"] + ["c"] * 4
    return _write(tmp_path_factory.mktemp("bal") / "real.h5", r2 + rest + rest, sources)


def test_rows_plan_and_dry_run(real, tmp_path):
    assert [r.label for r in select_rows("balance")] == [
        "R2", "R2 + balanced", "R2 + balanced (recombined masks)", "R2 + copy-paste (rare types)"]
    assert not any(r.study == "balance" for r in select_rows("all"))
    runs = plan_study(PatchStore(real), STUDIES["balance"], StudyConfig(n_runs=2))
    assert [(r["row"], r["n_real"], r["n_synthetic"], r["upto"]) for r in runs[::2]] == [
        ("R2", 8, 0, False), ("R2 + balanced", 8, 4, True), ("R2 + balanced (recombined masks)", 8, 4, True),
        ("R2 + copy-paste (rare types)", 8, 0, False)]
    res = CliRunner().invoke(cli, ["benchmark", "--study", "balance", "--store", str(real), "--out", str(tmp_path),
                                   "--dry-run"])
    assert res.exit_code == 0 and "seed 1: 12 patches (8 real + up to 4 synthetic)" in res.output


def test_bank_is_synthesized_from_the_balance_plan(real, tmp_path):
    runs = (make_run(tmp_path / "m", "mask", 1, size=P), make_run(tmp_path / "p", "patch", 2, size=P))
    cfg = StudyConfig(model=tuple(map(str, runs)), sampling=SamplerOptions("ddim", steps=3), device="cpu")
    banks = ensure_banks(cfg, PatchStore(real), STUDIES["balance"], tmp_path, progress=False)
    # the recombined bank: one patch per real mask of R2 it may add (0.5 x 8), each a real mask of R2
    # with rare nuclei added, recorded in the bank
    recombined = banks["RC"]
    assert len(recombined) == 4 and set(recombined.meta("parent")) <= set(PatchStore(real).indices("R2").tolist())
    assert recombined.attrs["recombine"]["split"] == "R2"
    bank = banks["B"]
    record = bank.attrs["balance_plan"]
    assert record["split"] == "R2" and record["nuclei_before"]["epithelial"] == 15
    assert len(bank) == record["n_patches"] == sum(record["counts"].values()) <= 4
    assert tuple(bank.config["combinations"]) == tuple(f"{k}:{v}" for k, v in record["counts"].items())
    assert set(bank.meta("parent")) == {-1}


def test_end_to_end_with_a_given_bank(real, tmp_path):
    # generated rare-type patches: neutrophil / eosinophil / plasma / connective / lymphocyte
    bank = _write(tmp_path / "B.h5", [[1, 5, 4, 6], [1, 5, 4, 3], [5, 1, 6, 4], [1, 1, 5, 5]], ["gen"] * 4,
                  origin="synthetic")
    out = tmp_path / "bench"
    StudyConfig(name="test", epochs=(0, 1), batch_size=4, n_runs=1, device="cpu").save(tmp_path / "cfg.json")
    res = CliRunner().invoke(cli, ["benchmark", "--preset", str(tmp_path / "cfg.json"), "--study", "balance",
                                   "--out", str(out), "--store", str(real), "--balance-bank", str(bank),
                                   "--bank", f"RC={bank}"])
    assert res.exit_code == 0, res.output
    assert "--balance-bank is replaced by --bank B=BANK.h5" in res.output
    summary = json.loads((out / "results.json").read_text())
    real_row, bal_row, _, paste_row = summary["table"]
    assert (paste_row["n_real"], paste_row["n_synthetic"]) == (8, 0)
    assert paste_row["vs_baseline"]["baseline"] == "R2" and "verdict" in paste_row["vs_baseline"]["dice"]
    assert (real_row["n_patches"], bal_row["n_real"], bal_row["runs"]) == (8, 8, 1)
    assert 1 <= bal_row["n_synthetic"] <= 4
    # the mixed set holds more of the rare types than R2 alone, and never fewer of any type
    assert real_row["train_nuclei"] == {"neutrophil": 1, "epithelial": 15, "lymphocyte": 7, "plasma": 0,
                                        "eosinophil": 0, "connective": 1}
    assert all(bal_row["train_nuclei"][n] >= v for n, v in real_row["train_nuclei"].items())
    assert bal_row["train_nuclei"]["eosinophil"] > 0 and bal_row["train_nuclei"]["plasma"] > 0
    for entry in (real_row, bal_row):
        assert set(entry["per_type"]) == set(LIZARD.names)
        assert all("f1_std" in v and "pq_std" in v for v in entry["per_type"].values())
    tables = (out / "tables.md").read_text()
    assert "Rare-type balancing" in tables and "| F1 R2 | F1 R2 + balanced |" in tables
    assert "| R2 + copy-paste (rare types) | 8 (8 + 0) |" in tables
    assert (out / "study_balance.png").stat().st_size > 0


def test_per_type_mean_and_std_over_runs():
    def run(seed, f1_neu, pq_neu):
        per_type = {n: {"f1": 0.5, "pq": 0.25, "n_gt": 3} for n in LIZARD.names}
        per_type["neutrophil"] = {"f1": f1_neu, "pq": pq_neu, "n_gt": 3}
        return {"study": "balance", "row": "R2 + balanced", "seed": seed, "n_patches": 12, "n_real": 8,
                "n_synthetic": 4, "metrics": {"dice": 0.5, "miou": 0.4, "pq": 0.3, "aji": 0.2}, "per_type": per_type,
                "train_nuclei": {"neutrophil": 9}}
    runs = [run(0, 0.2, None), run(1, 0.4, 0.1), run(2, 0.6, 0.3)]  # None: PQ undefined (JSON null)
    entry = summarise(runs, STUDIES["balance"])[0]
    neu = entry["per_type"]["neutrophil"]
    assert neu["f1"] == pytest.approx(0.4) and neu["f1_std"] == pytest.approx(0.2)  # ddof=1
    assert neu["pq"] == pytest.approx(0.2) and neu["pq_std"] == pytest.approx(np.sqrt(0.02))
    assert entry["per_type"]["plasma"]["f1_std"] == 0.0 and entry["train_nuclei"] == {"neutrophil": 9}
    assert "| neutrophil | 3 | 0.4000 ± 0.2000 | 0.2000 ± 0.1414 | 9 |" in format_per_type([entry])
