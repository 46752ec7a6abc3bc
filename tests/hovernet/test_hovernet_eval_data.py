"""``hovernet evaluate --data``: a store split or a dataset folder prepared at the model's scale."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli, main
from hovernet.config import ModelConfig, HoVerNetConfig
from hovernet.eval_data import open_eval_data
from nasdm_aug.data.prepare import PrepareConfig, prepare
from nasdm_aug.data.store import PatchStore
from nasdm_aug.data.store_writer import PatchStoreWriter
from nasdm_aug.types import CONSEP, LIZARD
from nasdm_aug.utils import InputError

SMALL = ModelConfig(encoder="resnet18", decoder_channels=(16, 8, 8, 8, 8), dense_units=0, growth=4, n_types=6)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A toy Lizard-layout folder (3 images of 128 px at 20x) and a tiny HoVerNet trained for one
    epoch on 64-px toy patches."""
    from hovernet.trainer import train_hovernet
    from hovernet.data import store_dataset

    root = tmp_path_factory.mktemp("evdata")
    prepare(PrepareConfig(format="toy", toy_images=3, toy_size=128, patch_size=64, stride=64, seed=4,
                          keep_source=str(root / "src"), out=str(root / "train.h5")), progress=False)
    cfg = HoVerNetConfig(model=SMALL, phase1_epochs=1, phase2_epochs=0, lr_decay_epoch=1, batch_size=2, augment=False,
                      device="cpu")
    train = store_dataset(root / "train.h5", None)
    train_hovernet(train, root / "run", cfg, type_table=LIZARD, patch_size=64, progress=False)
    return root


def _evaluate(args, out):
    return CliRunner().invoke(cli, ["hovernet", "evaluate", *args, "--out", str(out), "--overlays", "1"])


def test_evaluate_a_dataset_folder(data, tmp_path, monkeypatch):
    import tempfile

    run, src = data / "run", data / "src"
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    res = _evaluate(["--model", str(run), "--data", str(src), "--format", "lizard"], tmp_path / "ev")
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    # prepared at the model's 64-px patches with stride 32: the same patches prepare itself makes
    ref = tmp_path / "ref.h5"
    prepare(PrepareConfig(format="lizard", src=str(src), patch_size=64, stride=32, split_counts=(3, 0, 0),
                          out=str(ref)), progress=False)
    assert metrics["n_patches"] == len(PatchStore(ref)) > 3
    n_ref = len(PatchStore(ref))
    assert metrics["data"].startswith(f"{src} (lizard, all 3 images as Test: {n_ref} patches of 64 px at 20x")
    assert set(metrics["per_type"]) == set(LIZARD.names)
    assert not list((tmp_path / "tmp").iterdir())  # the prepared folder is gone
    # the same folder prepared as a store gives the same scores
    res = _evaluate(["--model", str(run), "--data", f"{ref}:Test"], tmp_path / "ev2")
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "ev2" / "metrics.json").read_text())
    assert again["data"] == f"{ref}:Test" and again["dice"] == pytest.approx(metrics["dice"])


def test_magnification_recorded_by_the_model(data, tmp_path):
    run = tmp_path / "run10"
    import shutil

    shutil.copytree(data / "run", run)
    for info_path in run.glob("**/data.json"):  # a model trained at 10x
        info_path.write_text(json.dumps({**json.loads(info_path.read_text()), "magnification": 10.0}))
    with open_eval_data(data / "src", run, fmt="lizard") as (ds, desc):
        assert "64 px at 10x" in desc and len(ds) == 3  # 128 px at 20x -> 64 px at 10x: one patch per image
    store = tmp_path / "s20.h5"
    prepare(PrepareConfig(format="toy", toy_images=2, toy_size=64, patch_size=64, split_counts=(2, 0, 0),
                          out=str(store)), progress=False)
    with pytest.raises(InputError) as exc:
        with open_eval_data(store, run):
            pass
    assert str(exc.value) == f"test store {store} is at 20x but model {run} is at 10x magnification"
    with pytest.raises(InputError, match="`magnification` 20 is at 20x but model .* is at 10x"):
        with open_eval_data(data / "src", run, fmt="lizard", magnification=20.0):
            pass


def test_refusals_are_one_line(data, tmp_path, capsys):
    run, src = data / "run", data / "src"
    consep = tmp_path / "consep.h5"
    rng = np.random.default_rng(0)
    with PatchStoreWriter(consep, patch_size=64, type_table=CONSEP) as w:
        inst = np.zeros((64, 64), np.int32)
        inst[10:20, 10:20] = 1
        w.append(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), inst, (inst > 0).astype(np.uint8), source="a")
        w.set_splits({"Test": ["a"]})
    cases = [
        (["--data", str(consep)], f"test store {consep} has type table 'consep' (other, inflammatory, epithelial, "
                                  f"spindle-shaped) but model {run} has 'lizard' (neutrophil, epithelial, lymphocyte, "
                                  "plasma, eosinophil, connective)"),
        (["--data", str(src)], f"--data {src} is a dataset folder: pass --format (conic, consep, lizard, pannuke)"),
        (["--data", str(consep), "--format", "lizard"],
         f"--format lizard reads a dataset folder, but --data {consep} is a store"),
        (["--data", f"{consep}:R2"], f"{consep}: no split 'R2' (splits here: Test=1)"),
        (["--data", str(src), "--format", "consep"], None),  # a Lizard folder does not read as CoNSeP
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(["hovernet", "evaluate", "--model", str(run), *args, "--out", str(tmp_path / "ev")])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1, err
        if message:
            assert err == f"Error: {message}"
        assert not (tmp_path / "ev").exists()
    (tmp_path / "taken").mkdir()  # an existing --out is refused before the folder is prepared
    with pytest.raises(SystemExit):
        main(["hovernet", "evaluate", "--model", str(run), "--data", str(src), "--format", "lizard",
              "--out", str(tmp_path / "taken")])
    assert "taken already exists; pass --overwrite" in capsys.readouterr().err


def _two_nuclei_outputs(size: int = 64) -> tuple[dict, np.ndarray]:
    """(network outputs, instances): outputs that are exactly the targets of a 197-px disk and a
    4 x 4 square. The run's own post-processing (the defaults) keeps both; the hovernet preset's
    5 x 5 opening removes the square's marker, and that preset drops unmarked blobs."""
    import torch

    from hovernet.targets import compute_targets

    inst = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    inst[(yy - 20) ** 2 + (xx - 20) ** 2 <= 64] = 1
    inst[40:44, 40:44] = 2
    t = compute_targets(inst, (inst > 0).astype(np.uint8))
    logit = (torch.as_tensor(t["np"].numpy()).float() * 2 - 1) * 10
    return {"np": torch.stack([-logit, logit])[None], "hv": torch.as_tensor(t["hv"].numpy()).float()[None],
            "nc": torch.zeros(1, SMALL.n_types + 1, size, size)}, inst


def test_postprocess_preset_replaces_the_runs_own(data, tmp_path, monkeypatch):
    import hovernet.evaluate as ev
    from hovernet.model import HoVerNet

    outputs, inst = _two_nuclei_outputs()
    monkeypatch.setattr(HoVerNet, "forward", lambda self, x: {k: v.expand(len(x), -1, -1, -1) for k, v in outputs.items()})
    found, real_postprocess = [], ev.postprocess

    def postprocess(out, cfg):
        result = real_postprocess(out, cfg)
        found.extend(result[0])
        return result

    monkeypatch.setattr(ev, "postprocess", postprocess)
    ref = tmp_path / "ref.h5"
    prepare(PrepareConfig(format="lizard", src=str(data / "src"), patch_size=64, stride=64, split_counts=(3, 0, 0),
                          out=str(ref)), progress=False)
    scores, instances = {}, {}
    for name in ("hovernet", None):
        args = ["--model", str(data / "run"), "--data", f"{ref}:Test"] + (["--postprocess", name] if name else [])
        found.clear()
        res = _evaluate(args, tmp_path / f"ev-{name}")
        assert res.exit_code == 0, res.output
        scores[name] = json.loads((tmp_path / f"ev-{name}" / "metrics.json").read_text())
        instances[name] = list(found)
    assert len(instances[None]) == len(instances["hovernet"]) == scores[None]["n_patches"] == 12  # 3 images x 4
    for own, preset in zip(instances[None], instances["hovernet"]):
        np.testing.assert_array_equal(own, inst)  # both nuclei
        np.testing.assert_array_equal(preset, np.where(inst == 1, 1, 0))  # the square dropped
    assert scores["hovernet"]["postprocess"]["preset"] == "hovernet"
    assert scores["hovernet"]["postprocess"]["sobel_kernel_size"] == 21
    assert scores[None]["postprocess"]["preset"] == "the run's"
    for m in ("dice", "dice_with_bg", "miou_with_bg", "mpq_plus", "mpq_plus_present"):
        assert m in scores[None]
    res = _evaluate(["--model", str(data / "run"), "--data", f"{ref}:Test", "--postprocess", "cellpose"], tmp_path / "x")
    assert res.exit_code != 0 and "cellpose" in res.output
