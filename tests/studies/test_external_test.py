"""``benchmark --test``: an external test set (a PatchStore split or a dataset folder) for the studies."""

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli, main
from hovernet.eval_data import eval_split, open_eval_store, parse_data_arg
from nasdm_aug.data.prepare import PrepareConfig, prepare
from nasdm_aug.data.store import PatchStore
from nasdm_aug.data.store_writer import PatchStoreWriter
from nasdm_aug.studies import STUDY_PRESETS, STUDY_REGISTRY, StudyConfig, resolve_test_set, run_studies
from nasdm_aug.types import CONSEP, LIZARD
from nasdm_aug.utils import InputError


def _write(path, splits, *, size=32, table=LIZARD, magnification=20.0, n_per_image=2):
    """A small hand-made store: a few disks per patch, ``n_per_image`` patches per source image."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:size, :size]
    attrs = {} if magnification is None else {"magnification": magnification}
    with PatchStoreWriter(path, patch_size=size, type_table=table, attrs=attrs) as w:
        for name in sorted({n for names in splits.values() for n in names}):
            for _ in range(n_per_image):
                inst, typ = np.zeros((size, size), np.int32), np.zeros((size, size), np.uint8)
                for k in range(1, 4):
                    cy, cx = rng.integers(6, size - 6, 2)
                    disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= 12
                    inst[disk], typ[disk] = k, rng.integers(1, table.n_types + 1)
                image = np.full((size, size, 3), 220, np.uint8)
                image[inst > 0] = (90, 40, 140)
                w.append(image, inst, typ, source=name)
        if splits:
            w.set_splits(splits)
    return path


@pytest.fixture(scope="module")
def study_store(tmp_path_factory):
    """Toy tissue at 10x (half Lizard's 20x), 32-px patches, stride 16, and an empty Test split."""
    path = tmp_path_factory.mktemp("study") / "real.h5"
    prepare(PrepareConfig(format="toy", toy_images=4, toy_size=128, patch_size=32, stride=16, magnification=10.0,
                          split_counts=(0, 2, 1), out=str(path)), progress=False)
    store = PatchStore(path)
    assert len(store.indices("Test")) == 0 and len(store.indices("R2")) > 0 and store.magnification == 10.0
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A toy dataset folder in the Lizard layout (3 images, 128 px at 20x)."""
    root = tmp_path_factory.mktemp("folder")
    prepare(PrepareConfig(format="toy", toy_images=3, toy_size=128, patch_size=64, seed=11,
                          keep_source=str(root / "src"), out=str(root / "unused.h5")), progress=False)
    return root / "src"


def test_store_split_parsing_and_default(tmp_path):
    many = _write(tmp_path / "many.h5", {"Test": ["t"], "Train": ["a", "b"]})
    one = _write(tmp_path / "one.h5", {"R2": ["x", "y"]})
    no_test = _write(tmp_path / "no_test.h5", {"R2": ["x"], "Train": ["y"]})
    assert parse_data_arg(f"{many}:Train") == (many, "Train", False)
    assert parse_data_arg(str(many)) == (many, None, False)
    assert parse_data_arg(str(tmp_path)) == (tmp_path, None, True)
    assert open_eval_store(many)[1:] == ("Test", 2)  # several splits: Test
    assert open_eval_store(f"{many}")[0].path == many and open_eval_store(many, "Train")[1:] == ("Train", 4)
    assert open_eval_store(one)[1:] == (None, 4)  # one split only: the whole store
    assert eval_split(PatchStore(_write(tmp_path / "none.h5", {})), None) is None
    with pytest.raises(InputError, match=r"many.h5: no split 'R1' \(splits here: Test=2, Train=4\)"):
        open_eval_store(many, "R1")
    with pytest.raises(InputError, match=r"no_test.h5: no 'Test' split to default to \(splits here: R2=2, Train=2\)"):
        open_eval_store(no_test)
    with pytest.raises(InputError, match="nope.h5: no such test store"):
        parse_data_arg(str(tmp_path / "nope.h5:Test"))
    with pytest.raises(InputError, match="is a dataset folder; it takes no :SPLIT"):
        parse_data_arg(f"{tmp_path}:Test")


def test_type_table_patch_size_and_magnification_mismatches(study_store, tmp_path):
    study = PatchStore(study_store)
    cases = {
        "types": (_write(tmp_path / "types.h5", {"Test": ["t"]}, table=CONSEP, magnification=10.0),
                  f"test store {tmp_path / 'types.h5'} has type table 'consep' (other, inflammatory, epithelial, "
                  f"spindle-shaped) but study store {study_store} has 'lizard' (neutrophil, epithelial, lymphocyte, "
                  "plasma, eosinophil, connective)"),
        "size": (_write(tmp_path / "size.h5", {"Test": ["t"]}, size=64, magnification=10.0),
                 f"test store {tmp_path / 'size.h5'} has 64-px patches but study store {study_store} has "
                 "32-px patches"),
        "mag": (_write(tmp_path / "mag.h5", {"Test": ["t"]}, magnification=20.0),
                f"test store {tmp_path / 'mag.h5'} is at 20x but study store {study_store} is at 10x magnification"),
    }
    for path, message in cases.values():
        cfg = StudyConfig(store=str(study_store), test=f"{path}:Test")
        with pytest.raises(InputError) as exc:
            resolve_test_set(cfg, study, tmp_path / "out")
        assert str(exc.value) == message
        with pytest.raises(InputError) as exc:  # run_studies refuses before writing anything
            run_studies(cfg.replace(n_runs=1), "replacement", tmp_path / "out", progress=False)
        assert str(exc.value) == message and not (tmp_path / "out").exists()
    # an unrecorded magnification is not compared; a matching store passes
    ok = _write(tmp_path / "ok.h5", {"Test": ["t"]}, magnification=None)
    test = resolve_test_set(StudyConfig(test=str(ok)), study, tmp_path / "out")
    assert (test.path, test.split, test.n_patches, test.external) == (str(ok), None, 2, True)  # its one split
    # the dry run shows the test set and checks it; a mismatched one is one error line
    args = ["benchmark", "--study", "replacement", "--store", str(study_store), "--out", str(tmp_path / "o2"),
            "--dry-run"]
    res = CliRunner().invoke(cli, args + ["--test", str(ok)])
    assert res.exit_code == 0 and f"test set (external): {ok} (whole store): 2 patches" in res.output, res.output
    res = CliRunner().invoke(cli, args)  # without --test the study store's own (empty) Test split is required
    assert isinstance(res.exception, InputError) and "every study needs a non-empty 'Test' split" in str(res.exception)
    with pytest.raises(SystemExit) as code:
        main(args + ["--test", str(cases["mag"][0])])
    assert code.value.code == 2 and not (tmp_path / "o2").exists()


def test_dataset_folder_is_prepared_like_the_study_store(study_store, folder, tmp_path):
    study = PatchStore(study_store)
    out = tmp_path / "out"
    cfg = StudyConfig(store=str(study_store), test=str(folder))
    dry = resolve_test_set(cfg, study, out, make=False)  # the dry run prepares nothing
    assert dry.n_patches is None and not out.exists()
    assert "(lizard, 3 images, 32-px patches, stride 16, at 10x; all Test)" in dry.describe()
    test = resolve_test_set(cfg, study, out)
    made = PatchStore(out / "data" / "test.h5")
    assert made.config["format"] == "lizard" and made.attrs["source_format"] == "lizard"
    assert (made.patch_size, made.config["stride"], made.magnification) == (32, 16, 10.0)
    assert made.config["consep_classes"] == study.config["consep_classes"]
    assert sorted(made.splits["Test"]) == ["toy_00000", "toy_00001", "toy_00002"]
    assert all(len(made.splits[s]) == 0 for s in ("Train", "R1", "R2"))
    assert test.n_patches == len(made.indices("Test")) == len(made) > 0
    assert (test.split, test.source) == ("Test", str(folder.resolve()))
    # a rerun reuses it; one with another folder is refused and leaves it alone
    stamp = (out / "data" / "test.h5").stat().st_mtime_ns
    assert resolve_test_set(cfg, study, out).n_patches == test.n_patches
    other = tmp_path / "other"
    other.mkdir()
    for sub in ("Images", "Labels"):
        (other / sub).symlink_to(folder / sub)
    with pytest.raises(InputError) as exc:
        resolve_test_set(cfg.replace(test=str(other)), study, out)
    assert str(exc.value) == (f"{out / 'data' / 'test.h5'} was prepared from {folder.resolve()}, not "
                              f"{other.resolve()}; delete it or use another `out`")
    # the same folder with other settings (a study store at another stride) is refused too
    restrided = tmp_path / "restrided.h5"
    prepare(PrepareConfig(format="toy", toy_images=4, toy_size=128, patch_size=32, stride=32, magnification=10.0,
                          split_counts=(0, 2, 1), out=str(restrided)), progress=False)
    with pytest.raises(InputError, match=r"was prepared from .* with other settings \(stride 16, now 32\)"):
        resolve_test_set(cfg.replace(store=str(restrided)), PatchStore(restrided), out)
    assert (out / "data" / "test.h5").stat().st_mtime_ns == stamp
    # the study's own folder is not a test set
    with pytest.raises(InputError, match="is the study's own dataset folder"):
        resolve_test_set(cfg.replace(source=str(folder)), study, out)


def test_consep_preset_is_at_20x():
    cfg = STUDY_PRESETS["consep"]
    assert (cfg.magnification, cfg.patch_size, cfg.stride, cfg.source_format) == (20.0, 64, 32, "consep")
    # its banks: DPM-Solver++(2M) in 15 steps, the patch model guided at 1.5 up to sigma 5.42, and
    # the mask model by ancestral DDPM in 50 steps
    assert (cfg.sampling.sampler, cfg.sampling.steps) == ("dpmpp_2m", 15)
    assert (cfg.guidance, cfg.guidance_interval) == (1.5, (0.0, 5.42))
    assert (cfg.mask_sampling.sampler, cfg.mask_sampling.steps) == ("ddpm", 50)
    with pytest.raises(ValueError, match="magnification must be >= 0"):
        StudyConfig(magnification=-1)


def test_run_studies_on_an_external_test_set(study_store, folder, tmp_path, monkeypatch):
    one_row = dataclasses.replace(STUDY_REGISTRY["replacement"], rows=STUDY_REGISTRY["replacement"].rows[:1])
    monkeypatch.setitem(STUDY_REGISTRY, "replacement", one_row)  # one real-only row: "R2"
    study = PatchStore(study_store)
    test_store = tmp_path / "ext.h5"
    prepare(PrepareConfig(format="toy", toy_images=3, toy_size=128, patch_size=32, stride=32, magnification=10.0,
                          seed=3, split_counts=(3, 0, 0), out=str(test_store)), progress=False)
    n_test = len(PatchStore(test_store))
    out = tmp_path / "bench"
    cfg = StudyConfig(name="test", store=str(study_store), test=str(test_store), epochs=(0, 1), batch_size=4,
                      n_runs=1, device="cpu")
    with pytest.raises(InputError, match="needs a non-empty 'Test' split"):  # no --test: the empty Test refuses
        run_studies(cfg.replace(test=""), "replacement", out, progress=False)
    summary = run_studies(cfg, "replacement", out, progress=False)
    record = {"path": str(test_store.resolve()), "split": "Test", "n_patches": n_test, "source": "",
              "external": True}
    assert summary["test_set"] == record and summary["runs"][0]["test_set"] == record
    assert json.loads((out / "results.json").read_text())["test_set"]["n_patches"] == n_test
    assert StudyConfig.load(out / "config.json").test == str(test_store)
    run = summary["runs"][0]
    assert run["n_patches"] == len(study.indices("R2")) and sum(v["n_gt"] for v in run["per_type"].values()) > 0
    # the scores are the kept model's on the external store, not on the study store's own patches
    from hovernet.data import store_dataset
    from hovernet.evaluate import evaluate_model, load_hovernet

    model, hcfg, _ = load_hovernet(next(out.glob("runs/**/hovernet")), "cpu")
    names = list(study.type_table.names)
    rescored, _ = evaluate_model(model, store_dataset(test_store, "Test"), hcfg, names, progress=False)
    assert run["metrics"]["dice"] == pytest.approx(rescored["dice"], abs=1e-6)
    # another test set: the trained model is scored again, not retrained and not reused as it was
    ckpts = {p: p.stat().st_mtime_ns for p in out.glob("runs/**/model.safetensors")}
    again = run_studies(cfg.replace(test=str(folder)), "replacement", out, progress=False)
    made = PatchStore(out / "data" / "test.h5")
    assert again["runs"][0]["test_set"]["n_patches"] == len(made) != n_test
    assert again["runs"][0]["test_set"]["source"] == str(folder.resolve())
    assert {p: p.stat().st_mtime_ns for p in ckpts} == ckpts
