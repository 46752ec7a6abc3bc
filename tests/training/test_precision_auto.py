"""The NASDM trainer's precision: fp32, bf16, or auto (bf16 only where it is native), as HoVerNet's;
configs and run folders written with the old ``bf16`` flag still load and resume."""

from __future__ import annotations

import json

import pytest
import torch
from _trainer_helpers import small_config
from click.testing import CliRunner

import nasdm_aug.hardware as hw
from nasdm_aug.training.config import TrainConfig, get_train_preset
from nasdm_aug.training.run import resolve_run_config
from nasdm_aug.utils import InputError


def _old_dict(cfg: TrainConfig, bf16: bool) -> dict:
    data = cfg.to_dict()
    del data["precision"]
    data["bf16"] = bf16
    return data


@pytest.mark.parametrize("bf16, precision", [(True, "bf16"), (False, "fp32")])
def test_an_old_config_with_the_bf16_flag_loads_as_its_precision(bf16, precision):
    cfg = TrainConfig.from_dict(_old_dict(small_config("mask"), bf16))
    assert cfg.precision == precision and "bf16" not in cfg.to_dict()


def test_auto_is_bf16_only_where_it_is_native(monkeypatch):
    cfg = small_config("mask", precision="auto")
    monkeypatch.setattr(hw, "native_bf16", lambda device: False)
    assert cfg.resolved_precision("cpu") == "fp32"
    assert cfg.resolved_precision("cpu", recorded="bf16") == "bf16"  # a resumed run keeps its own
    monkeypatch.setattr(hw, "native_bf16", lambda device: True)
    assert cfg.resolved_precision("cpu") == "bf16"
    assert small_config("mask", precision="fp32").resolved_precision("cpu") == "fp32"
    assert small_config("mask", precision="bf16").resolved_precision("cpu") == "bf16"


def test_the_trainer_trains_in_the_resolved_precision_and_keeps_it_on_resume(store_path, tmp_path, monkeypatch):
    from nasdm_aug.nets import build_model
    from nasdm_aug.training.checkpoint import latest_checkpoint
    from nasdm_aug.training.data import NASDMDataset
    from nasdm_aug.training.trainer import Trainer

    cfg = small_config("mask", steps=1, precision="auto", layout="contiguous")
    ds = NASDMDataset(store_path, "mask", "Train")
    autocast = []
    real = torch.autocast

    def spy(device_type, dtype=None, enabled=True, **kw):
        autocast.append(enabled)
        return real(device_type, dtype=dtype, enabled=enabled, **kw)

    monkeypatch.setattr(torch, "autocast", spy)
    monkeypatch.setattr(hw, "native_bf16", lambda device: False)
    trainer = Trainer(build_model(cfg.model), cfg.diffusion.build(), ds, cfg, tmp_path, progress=False)
    trainer.run()
    assert trainer.precision == "fp32" and autocast and not any(autocast)
    monkeypatch.setattr(hw, "native_bf16", lambda device: True)  # resumed where bf16 is native
    resumed = Trainer(build_model(cfg.model), cfg.diffusion.build(), ds, cfg, tmp_path, progress=False)
    assert resumed.precision == "bf16"
    resumed.load(latest_checkpoint(tmp_path))
    assert resumed.precision == "fp32"


def test_the_paper_preset_and_the_cpu_patch_recipe_are_auto_the_others_fp32():
    assert get_train_preset("patch", "paper").precision == "auto"
    assert get_train_preset("mask", "paper").precision == "auto"
    assert get_train_preset("mask", "tiny").precision == "fp32"
    # the CPU patch recipe trains in bf16 where it is native (measured as good, 1.65x faster);
    # its mask recipe was not measured in bf16 at its width and stays fp32
    assert get_train_preset("patch", "consep-cpu").precision == "auto"
    assert get_train_preset("mask", "consep-cpu").precision == "fp32"


def test_an_unknown_precision_is_one_error_listing_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"^precision must be one of fp32, bf16, auto, got 'fp16'$"):
        small_config("mask", precision="fp16")
    path = tmp_path / "run.json"
    path.write_text(json.dumps({**small_config("mask").to_dict(), "precision": "fp16"}))
    with pytest.raises(InputError) as info:
        TrainConfig.load(path)
    assert "\n" not in str(info.value) and "fp32, bf16, auto" in str(info.value)


def test_an_old_run_folder_resumes_with_its_own_or_an_old_config(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    old = _old_dict(small_config("mask"), False)
    (run / "config.json").write_text(json.dumps(old))
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert resolve_run_config(run, None, resume=True).precision == "fp32"
    assert resolve_run_config(run, TrainConfig.load(tmp_path / "old.json"), resume=True).precision == "fp32"
    with pytest.raises(InputError, match=r"differs from the run's in \['precision'\]"):
        resolve_run_config(run, small_config("mask", precision="bf16"), resume=True)


def test_train_cli_takes_precision(store_path, tmp_path):
    from cli.train import train_command

    out = tmp_path / "run"
    res = CliRunner().invoke(train_command, ["mask", "--store", str(store_path), "--out", str(out), "--precision",
                                             "auto", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["precision"] == "auto"
    assert "--precision [fp32|bf16|auto]" in CliRunner().invoke(train_command, ["--help"]).output

