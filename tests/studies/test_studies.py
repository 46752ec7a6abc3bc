import json

import numpy as np
import pytest
from click.testing import CliRunner

from html_check import check_in_browser, check_self_contained, find_browser

from cli.main import cli
from nasdm_aug.sampling import SamplerOptions
from nasdm_aug.data.store import PatchStore
from nasdm_aug.data.store_writer import PatchStoreWriter
from nasdm_aug.mixing import SyntheticMixDataset
from nasdm_aug.studies import STUDIES, StudyConfig, check_store, get_study_preset, plan_study, run_studies
from nasdm_aug.types import LIZARD
from nasdm_aug.utils import InputError
from nasdm_test_runs import make_run

P = 32


def _store(path, n_per_image, splits, origin="real", parents=None):
    rng = np.random.default_rng(len(str(path)))
    yy, xx = np.mgrid[:P, :P]
    with PatchStoreWriter(path, patch_size=P, type_table=LIZARD, origin=origin) as w:
        i = 0
        for name in sorted({n for names in splits.values() for n in names}):
            for _ in range(n_per_image):
                inst = np.zeros((P, P), np.int32)
                type_map = np.zeros((P, P), np.uint8)
                for k in range(1, 4):
                    cy, cx = rng.integers(6, P - 6, 2)
                    disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= 16
                    inst[disk], type_map[disk] = k, rng.integers(1, 7)
                image = np.full((P, P, 3), 220, np.uint8)
                image[inst > 0] = (90, 40, 140)
                w.append(image, inst, type_map, source=name, parent=-1 if parents is None else parents[i])
                i += 1
        w.set_splits(splits)
    return path


SPLITS = {"Test": ["t0", "t1"], "R2": ["a", "b"], "Train": ["c", "d"], "R1": ["c"]}


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return _store(tmp_path_factory.mktemp("s") / "real.h5", 4, SPLITS)  # R2: 8 patches, R1: 4, Test: 8


def test_plan_matches_the_paper_and_the_mixing_dataset(real, tmp_path):
    store = PatchStore(real)
    r2 = store.indices("R2")
    bank = _store(tmp_path / "s2.h5", 4, {"R2": ["a", "b"]}, origin="synthetic", parents=list(r2))
    cfg = StudyConfig(n_runs=1)
    expected = {  # (real, synthetic) per row, from Tables 3 and 4 with |R2| = 8
        "25% R2": (2, 0), "25% R2 + 25% S2": (2, 2), "25% R2 + 50% S2": (2, 4), "25% R2 + 75% S2": (2, 6),
        "R2": (8, 0), "75% R2 / 25% S2": (6, 2), "50% R2 / 50% S2": (4, 4), "25% R2 / 75% S2": (2, 6), "S2": (0, 8),
    }
    rows = STUDIES["addition"] + STUDIES["replacement"]
    for run, row in zip(plan_study(store, rows, cfg), rows):
        assert (run["n_real"], run["n_synthetic"]) == expected[row.label]
        ds = SyntheticMixDataset(store, bank, split=row.split, mode=row.mode, ratio=row.ratio, seed=0)
        plan = ds.plan()
        assert (int((plan.origin == 0).sum()), int((plan.origin == 1).sum())) == expected[row.label]
        if row.mode == "add":  # S2 masks come from the 75% of R2 outside the base
            assert not set(plan.mask[plan.origin == 1]) & set(plan.base)
    rvs = plan_study(store, STUDIES["real-vs-synthetic"], cfg.replace(n_runs=3))
    assert [(r["row"], r["seed"], r["n_patches"]) for r in rvs] == [
        ("R1", 0, 4), ("R1", 1, 4), ("R1", 2, 4), ("S1", 0, 4), ("S1", 1, 4), ("S1", 2, 4)]


def test_bad_input(real, tmp_path):
    with pytest.raises(InputError, match="unknown preset 'nope'; valid: demo, consep, lizard"):
        get_study_preset("nope")
    no_r1 = _store(tmp_path / "no_r1.h5", 1, {"Test": ["t"], "R2": ["a"], "Train": ["c"]})
    with pytest.raises(InputError, match="real-vs-synthetic needs a non-empty 'R1' split"):
        check_store(PatchStore(no_r1), STUDIES["real-vs-synthetic"])
    cfg = StudyConfig(store=str(real), model=(), n_runs=1)
    with pytest.raises(InputError, match="needs the synthetic bank S2 \\(one synthetic patch per real mask of R2\\): pass `model`"):
        run_studies(cfg, "replacement", tmp_path / "out", progress=False)


def test_studies_end_to_end_and_resume(real, tmp_path):
    runs = (make_run(tmp_path / "m", "mask", 1, size=P), make_run(tmp_path / "p", "patch", 2, size=P))
    out = tmp_path / "bench"
    args = ["benchmark", "--preset", str(tmp_path / "cfg.json"), "--study", "real-vs-synthetic", "--out", str(out),
            "--store", str(real), "--model", str(runs[0]), "--model", str(runs[1]), "--device", "cpu"]
    StudyConfig(name="test", sampling=SamplerOptions("ddim", steps=3), epochs=(0, 1), batch_size=4, n_runs=2).save(tmp_path / "cfg.json")
    res = CliRunner().invoke(cli, args + ["--dry-run"])
    assert res.exit_code == 0 and "S1                       seed 1: 4 patches (0 real + 4 synthetic)" in res.output
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "results.json").read_text())
    assert [(e["row"], e["runs"], e["n_patches"]) for e in summary["table"]] == [("R1", 2, 4), ("S1", 2, 4)]
    for entry in summary["table"]:  # the table is the mean and sample std of its runs
        dice = [r["metrics"]["dice"] for r in summary["runs"] if r["row"] == entry["row"]]
        assert entry["dice"] == pytest.approx(np.mean(dice)) and entry["dice_std"] == pytest.approx(np.std(dice, ddof=1))
    assert PatchStore(out / "banks" / "S1.h5").origin == "synthetic"
    assert "Table 5" in (out / "tables.md").read_text() and (out / "study_real-vs-synthetic.png").stat().st_size
    page = check_self_contained((out / "report.html").read_text(), n_tables=2, n_images=1)
    assert [r[0] for r in page.tables[0]] == ["training data", "R1", "S1"]
    if find_browser():
        check_in_browser(out / "report.html", n_tables=2, n_images=1, screenshot=out / "report-screenshot.png")
    assert len((out / "results.csv").read_text().splitlines()) == 3
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/**/result.json")}
    assert len(stamps) == 4
    res = CliRunner().invoke(cli, args)  # a rerun reuses every finished run
    assert res.exit_code == 0 and {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # another recipe in the same --out: refused before any training, naming what changed
    StudyConfig(name="test", sampling=SamplerOptions("ddim", steps=3), epochs=(1, 1), batch_size=4, n_runs=2).save(tmp_path / "cfg.json")
    before = (out / "config.json").read_text()
    res = CliRunner().invoke(cli, args)
    msg = str(res.exception)  # InputError: main() prints it as one "Error:" line
    assert isinstance(res.exception, InputError) and "\n" not in msg
    assert "4 of 4 finished or partial runs were made with another configuration" in msg
    assert "hovernet (phase1_epochs)" in msg and "--overwrite" in msg
    assert (out / "config.json").read_text() == before
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # another bank: named too
    import shutil

    shutil.copy(out / "banks" / "S1.h5", tmp_path / "other_s1.h5")
    StudyConfig(name="test", sampling=SamplerOptions("ddim", steps=3), epochs=(0, 1), batch_size=4, n_runs=2).save(tmp_path / "cfg.json")
    res = CliRunner().invoke(cli, args + ["--s1", str(tmp_path / "other_s1.h5")])
    assert "2 of 4" in str(res.exception) and ": bank (path)" in str(res.exception), res.exception
    # a run folder from before fingerprints were recorded is not trusted either
    legacy = next(out.glob("runs/**/seed0"))
    (legacy / "fingerprint.json").unlink()
    res = CliRunner().invoke(cli, args)
    assert "did not record its configuration" in str(res.exception)
    # --overwrite trains again only the stale run, and the table is consistent with the config
    res = CliRunner().invoke(cli, args + ["--overwrite"])
    assert res.exit_code == 0, res.output
    changed = [p for p in stamps if p.stat().st_mtime_ns != stamps[p]]
    assert changed == [legacy / "result.json"] and (legacy / "fingerprint.json").is_file()
    # a bank this study made before, with other synthesis settings: refused, not reused
    StudyConfig(name="test", sampling=SamplerOptions("ddim", steps=4), epochs=(0, 1), batch_size=4, n_runs=2).save(tmp_path / "cfg.json")
    res = CliRunner().invoke(cli, args)
    assert isinstance(res.exception, InputError)
    assert "S1.h5: made with other arguments (sampling.steps); rerun with --overwrite" in str(res.exception)
    # the preset's guidance interval reaches the bank's synthesis (so the old bank no longer fits)
    StudyConfig(name="test", sampling=SamplerOptions("ddim", steps=3), guidance_interval=(0.3, 5.0), epochs=(0, 1),
                batch_size=4, n_runs=2).save(tmp_path / "cfg.json")
    res = CliRunner().invoke(cli, args)
    assert "S1.h5: made with other arguments (guidance_interval)" in str(res.exception), res.exception
    with pytest.raises(ValueError, match="guidance interval"):
        StudyConfig(name="test", guidance_interval=(5.0, 0.3))


def test_every_study_mode_and_sampler_is_reachable_from_the_cli():
    from cli.benchmark import benchmark
    from cli.export import export_command
    from cli.synthesize import synthesize
    from nasdm_aug.sampling import SAMPLERS
    from nasdm_aug.mixing.plan import MIX_MODES
    from nasdm_aug.studies.registry import BANK_REGISTRY, STUDY_REGISTRY

    choices = {p.name: p.type.choices for p in benchmark.params if p.name == "study"}["study"]
    assert set(choices) == {*STUDY_REGISTRY, "all"}
    assert {p.name: tuple(p.type.choices) for p in export_command.params if p.name == "mode"}["mode"] == tuple(MIX_MODES)
    assert set({p.name: p.type.choices for p in synthesize.params if p.name == "sampler"}["sampler"]) == set(SAMPLERS)
    for study in STUDY_REGISTRY.values():  # every row can be planned: its mode and bank exist
        assert all(r.mode in MIX_MODES and (r.bank is None or r.bank in BANK_REGISTRY) for r in study.rows), study.name


def test_the_mask_models_sampling_reaches_generated_mask_banks_alone(monkeypatch, tmp_path):
    """A study's mask guidance, its interval and the mask sampler go to the bank of generated masks (B), not to banks
    of real masks, which sample no mask and whose records would then differ for nothing."""
    import nasdm_aug.synthesize as synth_mod
    from nasdm_aug.studies import data as data_mod
    from nasdm_aug.studies.registry import BANK_REGISTRY, StudyRow

    made = {}
    monkeypatch.setitem(data_mod.MASK_SOURCES, "balanced",
                        lambda bank, store, config, ratio: ({"combinations": ("epithelial:2",)}, None))
    monkeypatch.setitem(data_mod.MASK_SOURCES, "real",
                        lambda bank, store, config, ratio: ({"masks": "real.h5", "split": bank.split}, None))
    monkeypatch.setattr(synth_mod, "synthesize", lambda cfg, path, **kw: made.__setitem__(path.stem, cfg))
    config = StudyConfig(name="test", model=("toy",), mask_guidance=3.5, mask_guidance_interval=(0.0, 8.0),
                         sampling=SamplerOptions("ddim", steps=7), mask_sampling=SamplerOptions("ddpm", steps=5),
                         mask_tries=4)
    for name in ("B", "S2"):
        bank = BANK_REGISTRY[name]
        data_mod._make_bank(bank, config, None, [StudyRow("s", "x", "add", "R2", 0.5, bank=name)],
                            tmp_path / f"{name}.h5", progress=False, overwrite=False)
    assert made["B"].mask_guidance == 3.5 and made["B"].mask_guidance_interval == (0.0, 8.0)
    assert made["B"].mask_tries == 4 and made["S2"].mask_tries == 1
    assert made["B"].mask_sampler_options == SamplerOptions("ddpm", steps=5)
    assert made["B"].sampling == made["S2"].sampling == SamplerOptions("ddim", steps=7)
    assert made["S2"].mask_sampling is None
    default = synth_mod.SynthesizeConfig(masks="real.h5")
    assert (made["S2"].mask_guidance, made["S2"].mask_guidance_interval) == \
        (default.mask_guidance, default.mask_guidance_interval)
    # unset, with models that recommend nothing (toy), the bank gets synthesize's defaults
    made.clear()
    data_mod._make_bank(BANK_REGISTRY["B"], StudyConfig(name="test", model=("toy",)), None,
                        [StudyRow("s", "x", "add", "R2", 0.5, bank="B")], tmp_path / "B.h5", progress=False, overwrite=False)
    assert (made["B"].mask_guidance, made["B"].mask_guidance_interval, made["B"].mask_sampling, made["B"].mask_tries) == \
        (default.mask_guidance, default.mask_guidance_interval, None, 1)
    # unset, a model that recommends its sampling (sampling.json) gets it; a study's own setting wins
    made.clear()
    shipped = synth_mod.model_recommendations("consep-cpu")
    for name, config in (("B", StudyConfig(name="test", model=("consep-cpu",))),
                         ("B2", StudyConfig(name="test", model=("consep-cpu",), sampling=SamplerOptions("ddim", steps=7),
                                            mask_guidance=3.0))):
        data_mod._make_bank(BANK_REGISTRY["B"], config, None, [StudyRow("s", "x", "add", "R2", 0.5, bank="B")],
                            tmp_path / f"{name}.h5", progress=False, overwrite=False)
    assert (made["B"].sampling, made["B"].guidance, made["B"].guidance_interval) == \
        (shipped["sampling"], shipped["guidance"], shipped["guidance_interval"]) == \
        (SamplerOptions("dpmpp_2m", steps=15), 1.5, (0.0, 5.42))
    assert made["B"].mask_sampler_options == made["B2"].mask_sampler_options == SamplerOptions("ddpm", steps=50)
    assert (made["B2"].sampling, made["B2"].mask_guidance, made["B2"].guidance) == (SamplerOptions("ddim", steps=7), 3.0, 1.5)
    with pytest.raises(ValueError, match="guidance interval"):
        StudyConfig(name="test", mask_guidance_interval=(8.0, 0.0))
    with pytest.raises(ValueError, match="mask_guidance must be >= 0"):
        StudyConfig(name="test", mask_guidance=-1.0)
    with pytest.raises(ValueError, match="mask_tries must be an integer >= 1, got 0"):
        StudyConfig(name="test", mask_tries=0)
