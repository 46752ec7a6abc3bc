"""bf16 is chosen only where the machine runs it natively; layouts and precisions by name; the
trainers' shared layout timing."""

from __future__ import annotations

import json
import platform
import time

import pytest
import torch

import nasdm_aug.hardware as hw


@pytest.mark.parametrize("flags, native", [({"avx2", "avx512f"}, False), ({"avx512f", "avx512_bf16"}, True),
                                           ({"amx_bf16", "amx_tile"}, True), (set(), False)])
def test_auto_dtype_is_bf16_only_where_native(monkeypatch, flags, native):
    monkeypatch.setattr(hw, "cpu_flags", lambda: frozenset(flags))
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(var, raising=False)
    assert hw.native_bf16("cpu") is native
    assert hw.resolve_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)
    assert hw.resolve_dtype("float32", "cpu") == torch.float32 and hw.resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert ("bf16 native" if native else "bf16 emulated") in hw.describe_machine()


@pytest.mark.parametrize("cap, native", [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", True),
                                         ("AVX512_CORE_AMX", True), ("ALL", True), ("nonsense", True), ("", True)])
def test_a_onednn_isa_cap_below_bf16_makes_bf16_emulated(monkeypatch, cap, native):
    # an AVX512-BF16 CPU whose oneDNN is capped: its bf16 convolutions then run emulated
    monkeypatch.setattr(hw, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert hw.native_bf16("cpu") is native
    assert hw.resolve_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)
    assert (f"oneDNN ISA capped at {cap.upper()}" in hw.describe_machine()) is bool(cap)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", cap)  # the older name oneDNN still reads
    assert hw.native_bf16("cpu") is native


@pytest.mark.parametrize("majors, device, native", [({0: 7}, "cuda", False), ({0: 8}, "cuda", True),
                                                    ({0: 9}, "cuda:0", True), ({0: 8, 1: 7}, "cuda:1", False),
                                                    ({0: 7, 1: 9}, "cuda:1", True)])
def test_bf16_on_a_gpu_is_native_from_ampere_on(monkeypatch, majors, device, native):
    # a T4 or V100 (7.x) runs bf16 emulated, which torch.cuda.is_bf16_supported() counts by default
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: type("P", (), {"major": majors[i]})())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert hw.native_bf16(device) is native
    assert hw.resolve_dtype("auto", device) == (torch.bfloat16 if native else torch.float32)


def test_bf16_without_cuda_is_not_native_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hw.native_bf16("cuda") is False and hw.native_bf16("mps") is False


def test_names_are_checked():
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, auto, got 'fp16'"):
        hw.resolve_dtype("fp16", "cpu")
    with pytest.raises(ValueError, match="layout must be one of channels_last, contiguous"):
        hw.memory_format("nhwc")
    assert hw.memory_format("channels_last") == torch.channels_last
    assert hw.memory_format("contiguous") == torch.contiguous_format


def test_one_precision_vocabulary_for_training_hovernet_and_synthesis(monkeypatch):
    from hovernet.config import HoVerNetConfig
    from nasdm_aug.synthesize import SynthesizeConfig
    from nasdm_aug.training.config import PRECISIONS, get_train_preset

    monkeypatch.setattr(hw, "native_bf16", lambda device: True)
    assert [hw.resolve_precision(p, "cpu") for p in hw.PRECISIONS] == ["fp32", "bf16", "bf16"]
    assert hw.resolve_precision("auto", "cpu", recorded="fp32") == "fp32"  # a run keeps what it started in
    assert hw.resolve_precision("bf16", "cpu", recorded="fp32") == "bf16"  # an explicit choice stays
    monkeypatch.setattr(hw, "native_bf16", lambda device: False)
    assert hw.resolve_precision("auto", "cpu") == "fp32" and hw.resolve_precision("auto", "cpu", "f16") == "fp32"
    assert [hw.precision_name(n) for n in ("float32", "bfloat16", "auto", "fp32", "bf16")] == \
        ["fp32", "bf16", "auto", "fp32", "bf16"]
    assert hw.precision_dtype("bf16") == torch.bfloat16 and hw.precision_dtype("fp32") == torch.float32
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, auto, got 'float32'"):
        hw.resolve_precision("float32", "cpu")  # the older dtype names are read by precision_name only
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, auto, got 'fp16'"):
        hw.precision_name("fp16")
    assert PRECISIONS is hw.PRECISIONS
    train = get_train_preset("mask", "tiny")
    assert [train.replace(precision=p).resolved_precision("cpu") for p in hw.PRECISIONS] == ["fp32", "bf16", "fp32"]
    for p in hw.PRECISIONS:
        assert HoVerNetConfig(precision=p).precision == SynthesizeConfig(types="all", num=1, precision=p).precision
    for make in (lambda: HoVerNetConfig(precision="float32"), lambda: train.replace(precision="float32"),
                 lambda: SynthesizeConfig(types="all", num=1, precision="float32")):
        with pytest.raises(ValueError, match="precision must be one of fp32, bf16, auto, got 'float32'"):
            make()


def test_measured_layout_leaves_the_callers_random_state_as_it_was(monkeypatch, tmp_path):
    """The trainers' layout timing draws random numbers; the run that asked must not see it."""
    monkeypatch.setenv("NASDM_AUG_CACHE", str(tmp_path))
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    best = hw.measured_layout("probe", lambda fmt: (lambda: torch.randn(100)), "cpu")
    assert best in hw.LAYOUTS and torch.equal(torch.rand(3), expected)
    assert "probe" in next(iter(json.loads(hw.layout_cache_path().read_text())))


def test_optimizer_step_zeroes_the_gradients_of_each_step():
    w = torch.nn.Parameter(torch.tensor(1.0))
    step = hw.optimizer_step(lambda: 3 * w, torch.optim.SGD([w], lr=0.1))
    step()
    assert w.item() == pytest.approx(0.7)
    step()  # accumulated gradients would take it to 0.1
    assert w.item() == pytest.approx(0.4)


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu
"""


@pytest.fixture
def cpuinfo(monkeypatch, tmp_path):
    """Point cpu_flags at a file of the test's own (its cache cleared before and after)."""
    real_path = hw.Path
    path = tmp_path / "cpuinfo"
    monkeypatch.setattr(hw, "Path", lambda p: path if str(p) == "/proc/cpuinfo" else real_path(p))
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(var, raising=False)
    hw.cpu_flags.cache_clear()
    yield path
    hw.cpu_flags.cache_clear()


def test_cpu_flags_are_read_from_proc_cpuinfo(cpuinfo, monkeypatch):
    cpuinfo.write_text(CPUINFO)
    assert hw.cpu_flags() == {"fpu", "sse2", "avx2", "avx512f", "amx_bf16", "amx_tile"}  # the first CPU's
    assert hw.native_bf16("cpu") is True
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert hw.native_bf16("cpu") is False
    hw.cpu_flags.cache_clear()
    cpuinfo.write_text(CPUINFO.replace(" amx_bf16", ""))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert "amx_tile" in hw.cpu_flags() and hw.native_bf16("cpu") is False
    for text in ("processor\t: 0\nFeatures\t: fp asimd\n", None):  # an ARM cpuinfo; none at all
        hw.cpu_flags.cache_clear()
        cpuinfo.unlink(missing_ok=True)
        if text:
            cpuinfo.write_text(text)
        assert hw.cpu_flags() == frozenset() and hw.native_bf16("cpu") is False


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64", reason="an x86-64 Linux fact")
def test_this_machines_flags_are_read():
    assert {"fpu", "sse2"} <= hw.cpu_flags()  # every x86-64 CPU has them


def _steps(seconds: dict, calls: list):
    """make_step for fastest_layout whose layouts take the given seconds per step."""
    def make_step(fmt):
        name = "channels_last" if fmt == torch.channels_last else "contiguous"

        def step():
            calls.append(name)
            time.sleep(seconds[name])
        return step
    return make_step


def test_fastest_layout_measures_once_per_machine_and_key(monkeypatch, tmp_path):
    monkeypatch.setenv("NASDM_AUG_CACHE", str(tmp_path / "cache"))
    calls: list = []
    best, secs = hw.fastest_layout("model A", _steps({"channels_last": 0.03, "contiguous": 0.001}, calls), repeats=3)
    assert best == "contiguous" and secs["channels_last"] > secs["contiguous"]
    assert calls.count("channels_last") == calls.count("contiguous") == 4  # warm-up + 3 interleaved
    cached = json.loads((tmp_path / "cache" / "layouts.json").read_text())
    (key,) = cached
    assert "model A" in key and hw.describe_machine() in key and cached[key]["layout"] == "contiguous"

    def unused(fmt):
        raise AssertionError("a cached key must not be timed again")
    assert hw.fastest_layout("model A", unused)[0] == "contiguous"
    # another key (model, batch) is measured on its own
    calls.clear()
    assert hw.fastest_layout("model B", _steps({"channels_last": 0.001, "contiguous": 0.03}, calls))[0] == "channels_last"
    assert calls and len(json.loads((tmp_path / "cache" / "layouts.json").read_text())) == 2


def test_fastest_layout_survives_a_broken_or_unwritable_cache(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "layouts.json").write_text("{not json")
    monkeypatch.setenv("NASDM_AUG_CACHE", str(cache))
    assert hw.fastest_layout("m", _steps({"channels_last": 0.001, "contiguous": 0.02}, []), repeats=1)[0] == "channels_last"
    assert json.loads((cache / "layouts.json").read_text())  # rewritten whole
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("NASDM_AUG_CACHE", str(blocker / "sub"))  # a directory that cannot be made
    assert hw.fastest_layout("m", _steps({"channels_last": 0.02, "contiguous": 0.001}, []), repeats=1)[0] == "contiguous"
