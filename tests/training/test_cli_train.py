"""``nasdm-aug train``: dry-run config resolution, user errors as one line, a short run and its resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _trainer_helpers import small_config

from cli.main import main
from nasdm_aug.training.checkpoint import list_checkpoints


def _run(capsys, *args):
    """Run the console entry point; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main(list(args))
        raise SystemExit(0)  # main() returns normally on success
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_dry_run_takes_types_and_size_from_the_store(store_path, tmp_path, capsys):
    code, out, _ = _run(capsys, "train", "mask", "--store", str(store_path), "--out", str(tmp_path / "r"),
                        "--preset", "tiny", "--steps", "7", "--seed", "3", "--dry-run")  # fmt: skip
    cfg = json.loads(out)
    assert code == 0 and cfg["steps"] == 7 and cfg["seed"] == 3 and cfg["kind"] == "mask"
    assert cfg["model"]["n_types"] == 4 and cfg["model"]["image_size"] == 32 and cfg["model"]["in_channels"] == 7
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--store", "missing.h5"], "no such PatchStore file"),
        (["--config", "nope.json"], "config file not found"),
    ],
)
def test_user_errors_are_one_line(store_path, tmp_path, capsys, args, message):
    base = ["train", "patch", "--store", str(store_path), "--out", str(tmp_path / "r"), "--dry-run"]
    code, _, err = _run(capsys, *base, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_config_of_the_other_kind_is_refused(store_path, tmp_path, capsys):
    small_config("mask").save(tmp_path / "mask.json")
    code, _, err = _run(capsys, "train", "patch", "--store", str(store_path), "--out", str(tmp_path / "r"),
                        "--config", str(tmp_path / "mask.json"), "--dry-run")  # fmt: skip
    assert code == 2 and "is for the 'mask' model" in err


def test_short_run_then_resume_extends_it(store_path, tmp_path, capsys):
    small_config("mask", steps=2, ckpt_every=2).save(tmp_path / "run.json")
    out = tmp_path / "run"
    common = ["train", "mask", "--store", str(store_path), "--out", str(out), "--no-progress"]
    code, stdout, _ = _run(capsys, *common, "--config", str(tmp_path / "run.json"))
    assert code == 0 and "trained mask model" in stdout and [s for s, _ in list_checkpoints(out)] == [2]
    code, _, err = _run(capsys, *common, "--config", str(tmp_path / "run.json"))  # a second fresh run is refused
    assert code == 2 and "--resume" in err
    code, _, _ = _run(capsys, *common, "--resume", "--steps", "3")
    assert code == 0 and [s for s, _ in list_checkpoints(out)] == [3]
    assert json.loads((out / "config.json").read_text())["steps"] == 3
    # a resume on a store with other contents at any path is refused, naming both
    from _trainer_helpers import write_store

    other = write_store(tmp_path / "other.h5", seed=5)
    code, _, err = _run(capsys, "train", "mask", "--store", str(other), "--out", str(out), "--no-progress",
                        "--resume", "--steps", "4")
    assert code == 2 and "holds other patches" in err and str(other) in err and len(err.strip().splitlines()) == 1
    assert [s for s, _ in list_checkpoints(out)] == [3]


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(store_path, tmp_path, capsys, monkeypatch):
    from nasdm_aug.training.trainer import Trainer

    small_config("mask", steps=2, ckpt_every=2).save(tmp_path / "run.json")
    out = tmp_path / "run"
    common = ["train", "mask", "--store", str(store_path), "--out", str(out), "--no-progress",
              "--config", str(tmp_path / "run.json")]
    assert _run(capsys, *common)[0] == 0
    old_weights = (list_checkpoints(out)[-1][1] / "ema.safetensors").read_bytes()

    def stopped(self):  # Ctrl-C before the first checkpoint of the new run
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "run", stopped)
    with pytest.raises(SystemExit) as stop:
        main([*common, "--overwrite", "--seed", "9"])
    assert stop.value.code == 130
    assert (list_checkpoints(out)[-1][1] / "ema.safetensors").read_bytes() == old_weights
    assert not (tmp_path / "run.replaced").exists()
    monkeypatch.undo()
    assert _run(capsys, *common, "--overwrite", "--seed", "9")[0] == 0  # a finished replacement drops the old run
    assert (list_checkpoints(out)[-1][1] / "ema.safetensors").read_bytes() != old_weights
    assert not (tmp_path / "run.replaced").exists()


def test_gap_weight_reaches_the_loss_and_a_resume_cannot_change_it(store_path, tmp_path, capsys):
    runs = {}
    for gap in (0.0, 10.0):
        small_config("mask", steps=1, ckpt_every=1, gap_weight=gap, gap_sigma=4.0).save(tmp_path / f"g{gap}.json")
        out = tmp_path / f"run{gap}"
        code, _, _ = _run(capsys, "train", "mask", "--store", str(store_path), "--out", str(out), "--no-progress",
                          "--config", str(tmp_path / f"g{gap}.json"))  # fmt: skip
        assert code == 0
        runs[gap] = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    # the same first step: the same unweighted MSE, a larger loss where the gaps weigh more
    assert runs[10.0]["mse"] == pytest.approx(runs[0.0]["mse"], rel=1e-6)
    assert runs[10.0]["loss"] > runs[0.0]["loss"] * 1.01
    small_config("mask", steps=2, ckpt_every=1, gap_weight=5.0, gap_sigma=2.0).save(tmp_path / "changed.json")
    code, _, err = _run(capsys, "train", "mask", "--store", str(store_path), "--out", str(tmp_path / "run10.0"),
                        "--no-progress", "--resume", "--config", str(tmp_path / "changed.json"))  # fmt: skip
    assert code == 2 and "gap_weight" in err and len(err.strip().splitlines()) == 1
    # a patch config asking for it is one line naming the option
    (tmp_path / "p.json").write_text(json.dumps({**small_config("patch").to_dict(), "gap_weight": 1.0}))
    code, _, err = _run(capsys, "train", "patch", "--store", str(store_path), "--out", str(tmp_path / "p"),
                        "--config", str(tmp_path / "p.json"), "--dry-run")  # fmt: skip
    assert code == 2 and "gap_weight" in err and len(err.strip().splitlines()) == 1


def test_gap_options_set_the_mask_config_and_are_refused_for_patches(store_path, tmp_path, capsys):
    code, out, _ = _run(capsys, "train", "mask", "--store", str(store_path), "--out", str(tmp_path / "r"),
                        "--gap-weight", "10", "--gap-sigma", "2.5", "--dry-run")  # fmt: skip
    cfg = json.loads(out)
    assert code == 0 and (cfg["gap_weight"], cfg["gap_sigma"]) == (10.0, 2.5)
    code, out, _ = _run(capsys, "train", "mask", "--store", str(store_path), "--out", str(tmp_path / "r"), "--dry-run")
    assert json.loads(out)["gap_weight"] == 0.0  # the presets keep the paper's loss
    code, out, _ = _run(capsys, "train", "mask", "--store", str(store_path), "--out", str(tmp_path / "r"),
                        "--preset", "consep-cpu", "--dry-run")  # fmt: skip
    assert code == 0 and (json.loads(out)["gap_weight"], json.loads(out)["gap_sigma"]) == (0.5, 3.0)
    shipped = json.loads((Path(__file__).resolve().parents[2] / "nasdm_aug/assets/consep-cpu/mask/config.json").read_text())
    assert (shipped["gap_weight"], shipped["gap_sigma"]) == (0.5, 3.0)  # the shipped model is that recipe's
    code, _, err = _run(capsys, "train", "patch", "--store", str(store_path), "--out", str(tmp_path / "p"),
                        "--gap-weight", "1", "--dry-run")  # fmt: skip
    assert code == 2 and "--gap-weight 1.0" in err and len(err.strip().splitlines()) == 1


def test_drop_unannotated_sets_the_config_records_what_it_left_out_and_a_resume_keeps_it(store_path, tmp_path, capsys):
    code, out, _ = _run(capsys, "train", "patch", "--store", str(store_path), "--out", str(tmp_path / "r"),
                        "--drop-unannotated", "3", "--dry-run")  # fmt: skip
    assert code == 0 and json.loads(out)["drop_unannotated"] == 3
    code, out, _ = _run(capsys, "train", "patch", "--store", str(store_path), "--out", str(tmp_path / "r"), "--dry-run")
    assert json.loads(out)["drop_unannotated"] == 0  # the presets keep every patch
    code, _, err = _run(capsys, "train", "patch", "--store", str(store_path), "--out", str(tmp_path / "r"),
                        "--drop-unannotated", "-1", "--dry-run")  # fmt: skip
    assert code == 2 and "--drop-unannotated" in err
    small_config("patch", steps=1, ckpt_every=1, drop_unannotated=1).save(tmp_path / "d.json")
    out_dir = tmp_path / "run"
    code, _, _ = _run(capsys, "train", "patch", "--store", str(store_path), "--out", str(out_dir), "--no-progress",
                      "--config", str(tmp_path / "d.json"))  # fmt: skip
    record = json.loads((out_dir / "data.json").read_text())
    # the disc patches' uniform pink holds no dark blob: all four Train patches stay, and it says so
    assert code == 0 and (record["n_items"], record["dropped_unannotated"]) == (4, 0) and record["blob_threshold"] > 0
    small_config("patch", steps=2, ckpt_every=1, drop_unannotated=2).save(tmp_path / "d2.json")
    code, _, err = _run(capsys, "train", "patch", "--store", str(store_path), "--out", str(out_dir), "--no-progress",
                        "--resume", "--config", str(tmp_path / "d2.json"))  # fmt: skip
    assert code == 2 and "drop_unannotated" in err and len(err.strip().splitlines()) == 1
