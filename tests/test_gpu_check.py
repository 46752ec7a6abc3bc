"""benchmarks/gpu_check.py, the prepared GPU check, runs end to end on the CPU under --smoke."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_check  # noqa: E402


STEP_SECONDS = 0.25


@pytest.fixture
def fixed_step_time(monkeypatch):
    """Every timed step (training, HoVerNet) runs once and takes STEP_SECONDS: the rates are then known."""
    calls = []

    def median_seconds(fn, device, warmup=1, repeats=3):
        fn()
        calls.append(device)
        return STEP_SECONDS

    monkeypatch.setattr(gpu_check, "median_seconds", median_seconds)
    return calls


def test_smoke_run_prints_the_table_and_writes_every_number(tmp_path, capsys, fixed_step_time):
    out = tmp_path / "sub" / "gpu_check.json"
    res = gpu_check.main(["--smoke", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert res["smoke"] and res["device"] == "cpu" and res["preset"] == "tiny"
    assert not [k for k, v in res.items() if isinstance(v, dict) and "error" in v]
    for kind in ("patch", "mask"):
        a, b = res[f"train_{kind}"]["at_8"], res[f"train_{kind}"]["largest"]
        assert a["batch"] == 2 and b["batch"] == 4
        assert a["samples_per_s"] == 2 / STEP_SECONDS and b["samples_per_s"] == 4 / STEP_SECONDS
    assert set(res["sampling"]) == {"patch_eager_b2", "patch_eager_b4", "mask_eager_b2", "largest_sampling_batch"}
    assert res["hovernet"]["batch"] == 2 and res["hovernet"]["patches_per_s"] == 2 / STEP_SECONDS
    assert len(fixed_step_time) == 5  # at 8 and largest for each model, and HoVerNet
    # the projection is the two sampling stages at their rates
    rate = max(res["sampling"]["patch_eager_b2"], res["sampling"]["patch_eager_b4"])
    expected = gpu_check.S2_PATCHES * (1 / res["sampling"]["mask_eager_b2"] + 1 / rate) / 3600
    assert res["s2_bank_projected_hours"] == pytest.approx(expected)
    table = capsys.readouterr().out
    assert "SMOKE: numbers mean nothing" in table and table.count("\n| ") == 10 and "S2 bank (8639 patches)" in table


def test_a_failing_section_is_recorded_and_the_others_still_run(tmp_path, capsys, monkeypatch, fixed_step_time):
    written = []
    real_write = gpu_check._write_json

    def write(res, path):  # the file is rewritten after every section, so a killed run keeps its numbers
        written.append(sorted(k for k in res if k.startswith(("train_", "sampling", "hovernet"))))
        real_write(res, path)

    def no_sampling(args, device, bf16):
        raise RuntimeError("no kernel image is available for execution on the device\nCUDA kernel errors ...")

    monkeypatch.setattr(gpu_check, "_write_json", write)
    monkeypatch.setattr(gpu_check, "measure_sampling", no_sampling)
    out = tmp_path / "gpu_check.json"
    res = gpu_check.main(["--smoke", "--json", str(out)])
    assert res["sampling"] == {"error": "RuntimeError: no kernel image is available for execution on the device"}
    assert res["train_patch"]["at_8"]["samples_per_s"] == 2 / STEP_SECONDS
    assert res["hovernet"]["patches_per_s"] == 2 / STEP_SECONDS
    assert res["s2_bank_projected_hours"] is None
    assert json.loads(out.read_text())["sampling"] == res["sampling"]
    assert written[:4] == [["train_patch"], ["train_mask", "train_patch"], ["sampling", "train_mask", "train_patch"],
                           ["hovernet", "sampling", "train_mask", "train_patch"]]
    captured = capsys.readouterr()
    assert "| sampling | - | failed: RuntimeError: no kernel image" in captured.out
    assert "| S2 bank (8639 patches), projected | - | - | - |" in captured.out
    assert "gpu_check: sampling failed: RuntimeError" in captured.err


def test_largest_batch_stops_at_the_first_out_of_memory():
    tried = []

    def fits_below_64(b):
        tried.append(b)
        if b >= 64:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    best, stopped = gpu_check.largest_batch(fits_below_64, 8, 1024, torch.device("cpu"))
    assert best == 32 and tried == [8, 16, 32, 64] and stopped.startswith("batch 64: OutOfMemoryError: CUDA out")
    assert gpu_check.largest_batch(lambda b: None, 8, 20, torch.device("cpu")) == (16, None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without a GPU")
def test_without_a_gpu_the_full_check_says_so():
    with pytest.raises(SystemExit, match="no CUDA device here; run with --smoke"):
        gpu_check.main([])


def test_compiled_sampling_is_checked_against_eager(tmp_path, capsys, monkeypatch):
    """The compiled section compares its patches with eager ones: a compiled network that computes
    something else is reported as DIFFERENT. (torch.compile is replaced by a wrapper that shifts the
    network's output; the real compile runs in the slow test below and in the GPU check.)"""

    class Shifted(torch.nn.Module):
        def __init__(self, mod):
            super().__init__()
            self.mod = mod

        def forward(self, *a, **k):
            return self.mod(*a, **k) + 0.5

        def __getattr__(self, name):
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.mod, name)

    monkeypatch.setattr(torch, "compile", lambda mod, **k: Shifted(mod))
    res = gpu_check.main(["--smoke", "--compile", "--json", str(tmp_path / "g.json")])
    comp = res["sampling_compiled"]
    assert comp["compiled_matches_eager"] is False and comp["compiled_vs_eager_mean_abs"] > 1.0
    assert "grey levels: DIFFERENT" in capsys.readouterr().out


@pytest.mark.slow
def test_real_compile_samples_the_eager_patches(tmp_path):
    res = gpu_check.main(["--smoke", "--compile", "--json", str(tmp_path / "g.json")])
    assert res["sampling_compiled"]["compiled_matches_eager"] is True, res["sampling_compiled"]


def test_largest_batch_backs_off_on_any_error_and_records_it():
    """A huge batch can fail otherwise than out of memory (a kernel configuration, 32-bit indexing):
    the batches below it still count, and what stopped the search is kept."""
    tried = []

    def fails_from_64(b):
        tried.append(b)
        if b >= 64:
            raise RuntimeError("CUDA error: invalid configuration argument\nCUDA kernel errors might be ...")

    best, stopped = gpu_check.largest_batch(fails_from_64, 8, 1024, torch.device("cpu"))
    assert best == 32 and tried == [8, 16, 32, 64]
    assert stopped == "batch 64: RuntimeError: CUDA error: invalid configuration argument"
    # the start batch itself fails: halve below it until one runs
    tried.clear()
    best, stopped = gpu_check.largest_batch(lambda b: fails_from_64(b * 8), 16, 64, torch.device("cpu"))
    assert best == 4 and tried == [128, 64, 32] and stopped.startswith("batch 8: RuntimeError: CUDA error")


def test_a_section_keeps_the_largest_batch_that_ran_and_why_it_stopped(tmp_path, monkeypatch):
    real_step = gpu_check.nasdm_step

    def step(kind, preset, size, n_types, batch, device, bf16):
        if batch > 2:
            raise ValueError("batch too large for this kernel")
        return real_step(kind, preset, size, n_types, batch, device, bf16)

    monkeypatch.setattr(gpu_check, "nasdm_step", step)
    res = gpu_check.main(["--smoke", "--no-compile", "--json", str(tmp_path / "g.json")])
    sec = res["train_patch"]
    assert "error" not in sec and sec["largest"]["batch"] == 2 and sec["at_8"]["batch"] == 2
    assert sec["largest_stopped_by"] == "batch 4: ValueError: batch too large for this kernel"
