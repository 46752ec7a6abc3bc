"""Sampling's layout "auto": NCHW on a CUDA GPU, channels_last elsewhere; the default of the
generator, SynthesizeConfig and the CLI, with configs and interrupted runs of an explicit layout
(channels_last, the default before "auto") loading and resuming unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import nasdm_aug.generator as generator_module
import nasdm_aug.synthesize.records as syn_records
import nasdm_aug.synthesize.run as syn_run
from cli.main import cli
from nasdm_aug.generator import NASDMGenerator
from nasdm_aug.hardware import resolve_sampling_layout
from nasdm_aug.sampling import SamplerOptions
from nasdm_aug.data.store import PatchStore
from nasdm_aug.synthesize import SynthesizeConfig, finished_bank_problem, synthesize
from nasdm_aug.utils import InputError

FAST = dict(sampling=SamplerOptions("ddim", steps=3), batch_size=2)
LAYOUT_ERROR = "layout must be one of auto, channels_last, contiguous, got 'nhwc'"


def _as_on_a_gpu(name: str, device) -> str:
    """The resolver as it answers for a CUDA device, for a test machine without one."""
    return resolve_sampling_layout(name, torch.device("cuda"))


def test_auto_is_contiguous_on_cuda_and_channels_last_on_a_cpu():
    for cuda in (torch.device("cuda"), "cuda:1", torch.device("cuda", 0)):
        assert resolve_sampling_layout("auto", cuda) == "contiguous"
    assert resolve_sampling_layout("auto", torch.device("cpu")) == "channels_last"
    assert resolve_sampling_layout("auto", "cpu") == "channels_last"
    for layout in ("channels_last", "contiguous"):  # an explicit layout is kept on any device
        assert resolve_sampling_layout(layout, "cuda") == resolve_sampling_layout(layout, "cpu") == layout
    with pytest.raises(ValueError, match=LAYOUT_ERROR):
        resolve_sampling_layout("nhwc", "cpu")


def test_generator_auto_is_channels_last_on_a_cpu_with_the_same_samples(runs, real_store):
    from nasdm_aug.data.store import PatchStore

    d = PatchStore(real_store).read(range(3), keys=("inst", "type"))
    opts = dict(sampling=SamplerOptions("ddim", steps=3), guidance=2.0, seed=3)
    default = NASDMGenerator.from_pretrained(*runs, device="cpu", dtype="float32")
    auto = NASDMGenerator.from_pretrained(*runs, device="cpu", dtype="float32", layout="auto")
    cl = NASDMGenerator.from_pretrained(*runs, device="cpu", dtype="float32", layout="channels_last")
    conv = lambda g: next(p for p in g.patch_model.parameters() if p.dim() == 4)  # noqa: E731
    for g in (default, auto):
        assert g.layout == "channels_last" and conv(g).is_contiguous(memory_format=torch.channels_last)
    a = auto.generate_patches(d["inst"], d["type"], **opts)
    np.testing.assert_array_equal(a, cl.generate_patches(d["inst"], d["type"], **opts))
    np.testing.assert_array_equal(a, default.generate_patches(d["inst"], d["type"], **opts))
    with pytest.raises(InputError, match=LAYOUT_ERROR) as err:
        NASDMGenerator(cl.patch_model, cl.patch_config, cl.type_table, device="cpu", layout="nhwc")
    assert "\n" not in str(err.value)


def test_generator_auto_on_a_gpu_is_contiguous(runs, monkeypatch):
    monkeypatch.setattr(generator_module, "resolve_sampling_layout", _as_on_a_gpu)
    gen = NASDMGenerator.from_pretrained(*runs, device="cpu", dtype="float32")
    conv = next(p for p in gen.patch_model.parameters() if p.dim() == 4)
    assert gen.layout == "contiguous" and conv.is_contiguous()


def test_config_default_old_records_and_cli(runs, tmp_path):
    cfg = SynthesizeConfig(types="all", num=2)
    assert cfg.layout == "auto"
    old = {**cfg.to_dict(), "layout": "channels_last"}  # a config saved when channels_last was the default
    assert SynthesizeConfig.from_dict(old).layout == "channels_last"
    assert SynthesizeConfig.from_dict(json.loads(json.dumps(old))) == cfg.replace(layout="channels_last")
    with pytest.raises(ValueError, match=LAYOUT_ERROR):
        SynthesizeConfig(types="all", num=2, layout="nhwc")
    base = ["synthesize", "--model", str(runs[0]), "--model", str(runs[1]), "--types", "all", "--num", "2",
            "--out", str(tmp_path / "o.h5"), "--dry-run"]
    res = CliRunner().invoke(cli, base)
    assert res.exit_code == 0 and json.loads(res.output.split("\npatches:")[0])["layout"] == "auto"
    res = CliRunner().invoke(cli, base + ["--layout", "auto"])
    assert res.exit_code == 0
    bad = CliRunner().invoke(cli, base + ["--layout", "nhwc"])
    assert bad.exit_code == 2 and "'nhwc' is not one of 'auto', 'channels_last', 'contiguous'" in bad.output
    helptext = CliRunner().invoke(cli, ["synthesize", "--help"]).output
    assert "in sampling contiguous on a CUDA GPU, channels_last elsewhere" in " ".join(helptext.split())


def test_parts_of_an_explicit_layout_resume_under_it_and_under_auto_where_it_means_it(runs, real_store, tmp_path,
                                                                                       monkeypatch):
    """Parts sampled in channels_last (the old default, stored explicitly) resume under "auto" on a
    CPU and under "channels_last" anywhere; "auto" on a GPU (contiguous there) is refused in one
    line that says how to finish them. The record keeps the resolved layout, never "auto"."""
    out = tmp_path / "bank.h5"
    cfg = SynthesizeConfig(model=tuple(map(str, runs)), masks=str(real_store), split="R2", seed=5, **FAST)
    parts = Path(str(out) + ".parts")

    def killed(*a, **k):
        raise KeyboardInterrupt

    def interrupted(config):
        with monkeypatch.context() as m:  # every chunk sampled, killed before the merge
            m.setattr(syn_run, "_merge", killed)
            with pytest.raises(KeyboardInterrupt):
                synthesize(config, out, device="cpu", progress=False)
        return json.loads((parts / "config.json").read_text())["config"]["layout"]

    assert interrupted(cfg) == "channels_last"  # "auto" on this CPU, recorded as what it meant
    assert interrupted(cfg.replace(layout="channels_last")) == "channels_last"  # the same parts: resumed
    sampled = []
    real_chunk = syn_run._make_chunk
    monkeypatch.setattr(syn_run, "_make_chunk", lambda *a, **k: sampled.append(1) or real_chunk(*a, **k))
    with monkeypatch.context() as m:  # on a GPU, "auto" means contiguous: not these parts
        m.setattr(generator_module, "resolve_sampling_layout", _as_on_a_gpu)
        with pytest.raises(InputError, match=r"\.parts holds an interrupted run sampled in layout channels_last, "
                                             r"but layout 'auto' means contiguous on this device; rerun with "
                                             r"`layout` channels_last") as err:
            synthesize(cfg, out, device="cpu", progress=False)
        assert "\n" not in str(err.value)
        synthesize(cfg.replace(layout="channels_last"), out, device="cpu", progress=False)  # explicit: resumes
    assert not sampled and not parts.exists()
    bank = PatchStore(out)
    assert bank.attrs["provenance"]["layout"] == "channels_last"
    # the finished bank, made with an explicit channels_last, counts for "auto" where "auto" means it
    assert finished_bank_problem(out, cfg, "cpu") is None
    assert finished_bank_problem(out, cfg.replace(layout="channels_last"), "cpu") is None
    monkeypatch.setattr(syn_records, "resolve_sampling_layout", _as_on_a_gpu)
    assert finished_bank_problem(out, cfg, "cpu") == "made with other arguments (layout)"
