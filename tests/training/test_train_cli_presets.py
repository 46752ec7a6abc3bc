"""``nasdm-aug train --preset P --dry-run`` on stores of other patch sizes: the preset's depth and
attention follow the store, and a store the preset cannot fit is one ``Error:`` line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from nasdm_aug.data.prepare import PrepareConfig, prepare
from nasdm_aug.data.store import PatchStore
from nasdm_aug.data.store_writer import PatchStoreWriter
from nasdm_aug.types import CONSEP


def _run(capsys, *args):
    """Run the console entry point in-process; returns (exit code, stdout, stderr)."""
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def store128(tmp_path_factory) -> Path:
    """A toy (Lizard-typed) store of 128-px patches."""
    out = tmp_path_factory.mktemp("s128") / "toy128.h5"
    prepare(PrepareConfig(format="toy", out=str(out), toy_images=3, toy_size=256, patch_size=128, stride=128,
                          split_counts=(1, 1, 1)), progress=False)
    return out


def _small_store(path: Path, size: int) -> Path:
    """A CoNSeP-typed store of two blank ``size``-px patches."""
    with PatchStoreWriter(path, patch_size=size, type_table=CONSEP) as w:
        for k, name in enumerate(("a", "b")):
            image = np.full((size, size, 3), (230, 170, 200), np.uint8)
            w.append(image, np.zeros((size, size), np.int32), np.zeros((size, size), np.uint8), source=name, y=0, x=0)
        w.set_splits({"Train": ["a"], "Test": ["b"]})
    return path


def _feature_sizes(model: dict) -> list[int]:
    return [model["image_size"] >> level for level in range(len(model["channel_mults"]))]


CASES = [  # kind, preset, channel_mults and attention at 128 px
    ("mask", "tiny", [1, 1, 2, 2], [16]),
    ("patch", "tiny", [1, 1, 2, 2], [16]),
    ("mask", "paper", [1, 1, 2, 3, 4], [32, 16, 8]),
    ("patch", "paper", [1, 1, 2, 3, 4], [32, 16, 8]),
    ("mask", "consep-cpu", [1, 1, 2, 2], [16]),
    ("patch", "consep-cpu", [1, 1, 2, 2], [16]),
]


@pytest.mark.parametrize("kind, preset, mults, attention", CASES)
def test_dry_run_fits_the_preset_to_a_128_px_store(store128, tmp_path, capsys, kind, preset, mults, attention):
    code, out, err = _run(capsys, "train", kind, "--store", str(store128), "--preset", preset,
                          "--out", str(tmp_path / "run"), "--dry-run")  # fmt: skip
    assert code == 0, err
    assert "Traceback" not in out + err
    cfg = json.loads(out)
    model = cfg["model"]
    assert cfg["kind"] == model["kind"] == kind
    assert model["image_size"] == 128 == PatchStore(store128).patch_size
    assert model["channel_mults"] == mults and model["attention_resolutions"] == attention
    assert set(model["attention_resolutions"]) <= set(_feature_sizes(model))
    assert model["n_types"] == 6  # the toy store is Lizard-typed
    if kind == "mask":
        assert model["in_channels"] == 9 and model["out_channels"] == 18
    assert not (tmp_path / "run").exists()


def test_consep_cpu_keeps_its_training_settings_at_128(store128, tmp_path, capsys):
    code, out, _ = _run(capsys, "train", "mask", "--store", str(store128), "--preset", "consep-cpu",
                        "--out", str(tmp_path / "run"), "--dry-run")  # fmt: skip
    cfg = json.loads(out)
    assert code == 0 and (cfg["steps"], cfg["lr"], cfg["batch_size"]) == (5000, 3e-4, 8)
    assert (cfg["lr_drop_step"], cfg["lr_after_drop"]) == (2450, 6e-5)


@pytest.mark.parametrize("kind, preset, size, bottom", [
    ("patch", "paper", 4, 8),
    ("mask", "paper", 6, 8),
    ("mask", "tiny", 8, 16),
    ("patch", "consep-cpu", 12, 16),
])  # fmt: skip
def test_store_the_preset_cannot_fit_is_one_error_line(tmp_path, capsys, kind, preset, size, bottom):
    store = _small_store(tmp_path / f"s{size}.h5", size)
    code, out, err = _run(capsys, "train", kind, "--store", str(store), "--preset", preset,
                          "--out", str(tmp_path / "run"), "--dry-run")  # fmt: skip
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    line = lines[0]
    assert line.startswith("Error: ")
    assert f"preset {preset!r}" in line and str(store) in line and f"({size}-px patches)" in line
    assert f"lowest feature size {bottom} px" in line
    assert not (tmp_path / "run").exists()


def test_small_but_fitting_stores_resolve(tmp_path, capsys):
    # 24 px with paper: 24, 12 (6 < 8) -> mults (3, 4), attention nearest to 32/16/8 -> 24, 12
    store = _small_store(tmp_path / "s24.h5", 24)
    code, out, err = _run(capsys, "train", "patch", "--store", str(store), "--preset", "paper",
                          "--out", str(tmp_path / "run"), "--dry-run")  # fmt: skip
    assert code == 0, err
    model = json.loads(out)["model"]
    assert model["image_size"] == 24 and model["channel_mults"] == [3, 4]
    assert model["attention_resolutions"] == [24, 12]
    # 16 px with tiny: a single level at the bottleneck size
    store = _small_store(tmp_path / "s16.h5", 16)
    code, out, err = _run(capsys, "train", "mask", "--store", str(store), "--preset", "tiny",
                          "--out", str(tmp_path / "run"), "--dry-run")  # fmt: skip
    assert code == 0, err
    model = json.loads(out)["model"]
    assert model["channel_mults"] == [2] and model["attention_resolutions"] == [16] and model["in_channels"] == 7


def test_resume_with_no_run_is_refused(tmp_path, capsys):
    store = _small_store(tmp_path / "s.h5", 64)
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "absent"):
        code, _, err = _run(capsys, "train", "mask", "--store", str(store), "--split", "Train", "--preset", "tiny",
                            "--out", str(out), "--resume", "--steps", "1", "--no-progress")
        assert code == 2 and err.strip() == f"Error: {out}: nothing to resume (no run there); drop --resume to start a new run"
    assert list((tmp_path / "empty").iterdir()) == [] and not (tmp_path / "absent").exists()


def _departures(cfg):
    return cfg["diffusion"]["loss_weighting"], cfg["diffusion"]["mean_type"], cfg["model"]["input_condition"], cfg["drop_unannotated"]


@pytest.mark.parametrize("kind", ["mask", "patch"])
def test_departures_from_the_paper_are_off_in_the_paper_presets(tmp_path, capsys, kind):
    store = _small_store(tmp_path / "s64.h5", 64)
    for preset in ("tiny", "paper"):
        code, out, err = _run(capsys, "train", kind, "--store", str(store), "--preset", preset, "--out",
                              str(tmp_path / "run"), "--dry-run")
        assert code == 0, err
        assert _departures(json.loads(out)) == ("none", "epsilon", "none", 0)
    code, out, err = _run(capsys, "train", kind, "--store", str(store), "--preset", "consep-cpu", "--out",
                          str(tmp_path / "run"), "--dry-run")
    # the CPU recipe's models predict x_0 with Min-SNR weighting, the patch model with the mask at its
    # input and without the training patches that hold 3+ dark blobs off their annotation
    want = ("min-snr", "start_x", "mask", 3) if kind == "patch" else ("min-snr", "start_x", "none", 0)
    assert _departures(json.loads(out)) == want


def test_departures_from_the_paper_are_options(tmp_path, capsys):
    store = _small_store(tmp_path / "s64.h5", 64)
    base = ["train", "patch", "--store", str(store), "--preset", "tiny", "--out", str(tmp_path / "run"), "--dry-run"]
    code, out, err = _run(capsys, *base, "--loss-weighting", "min-snr", "--mean-type", "v", "--input-condition", "mask")
    assert code == 0, err
    cfg = json.loads(out)
    assert _departures(cfg) == ("min-snr", "v", "mask", 0)
    code, out, err = _run(capsys, "train", "mask", *base[2:], "--input-condition", "mask")
    assert code != 0 and "Error: --input-condition mask is for the patch model" in err and "Traceback" not in err
    code, out, err = _run(capsys, *base, "--loss-weighting", "snr")
    assert code == 2 and "'snr' is not one of 'none', 'min-snr', 'p2'" in err
