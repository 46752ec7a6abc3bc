import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli
from nasdm_aug.data.store import PatchStore
from nasdm_aug.sampling import SamplerOptions
from nasdm_aug.synthesize import SynthesizeConfig, synthesize

FAST = dict(sampling=SamplerOptions("ddim", steps=3), batch_size=2)


def _args(runs, out, *extra):
    return ["synthesize", "--model", str(runs[0]), "--model", str(runs[1]), "--out", str(out),
            "--sampler", "ddim", "--steps", "3", "--batch-size", "2", "--device", "cpu", *extra]


def _assert_same_bank(a, b):
    sa, sb = PatchStore(a), PatchStore(b)
    assert len(sa) == len(sb)
    idx = np.arange(len(sa))
    ra = sa.read(idx, keys=("image", "inst", "type", "parent", "seed"))
    rb = sb.read(idx, keys=("image", "inst", "type", "parent", "seed"))
    for key in ra:
        np.testing.assert_array_equal(ra[key], rb[key], err_msg=key)


@pytest.fixture(scope="module")
def reference(runs, real_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "bank.h5"
    cfg = SynthesizeConfig(model=tuple(map(str, runs)), masks=str(real_store), split="R2", seed=5, **FAST)
    result = synthesize(cfg, out, device="cpu", preview=3, progress=False)
    return out, result


def test_bank_from_real_masks(reference, real_store):
    out, result = reference
    bank, real = PatchStore(out), PatchStore(real_store)
    parents = real.indices("R2")
    assert result["n_patches"] == len(parents) == len(bank) and bank.origin == "synthetic"
    np.testing.assert_array_equal(bank.meta("parent"), parents)
    np.testing.assert_array_equal(bank.read(range(len(bank)))["inst"], real.read(parents)["inst"])
    assert bank.splits == real.splits and list(bank.meta("source")) == list(real.meta("source")[parents])
    prov = bank.attrs["provenance"]
    assert prov["sampler"] == "ddim" and prov["steps"] == 3 and len(prov["model_hash"]) == 16
    assert len(set(bank.meta("seed"))) == len(bank)
    assert Path(result["preview"]).stat().st_size > 0
    assert not Path(str(out) + ".parts").exists()


def test_generated_masks_via_cli(runs, tmp_path):
    out = tmp_path / "gen.h5"
    res = CliRunner().invoke(cli, _args(runs, out, "--types", "epithelial,lymphocyte", "--num", "3"))
    assert res.exit_code == 0, res.output
    bank = PatchStore(out)
    assert len(bank) == 3 and set(bank.meta("parent")) == {-1}


def test_resume_after_kill_9(runs, real_store, reference, tmp_path):
    out = tmp_path / "bank.h5"
    cmd = [sys.executable, "-c", "from cli.main import main; main()",
           *_args(runs, out, "--masks", str(real_store), "--split", "R2", "--seed", "5")]
    parts = Path(str(out) + ".parts")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(parts.glob("part_*.h5")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = list(parts.glob("part_*.h5"))
    assert done and not out.exists(), "the kill should land after the first chunk and before the merge"
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert '"chunks_done_before": 0' not in res.stdout
    _assert_same_bank(out, reference[0])


def test_two_ranks_match_one_process(runs, real_store, reference, tmp_path):
    out = tmp_path / "bank.h5"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cli.main", *_args(runs, out, "--masks", str(real_store), "--split", "R2", "--seed", "5")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    _assert_same_bank(out, reference[0])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--types", "macrophage", "--num", "2"], "unknown type 'macrophage'"),
        (["--types", "all", "--num", "0"], "num must be >= 1"),
        (["--masks", "MISSING.h5"], "no such PatchStore"),
        (["--masks", "REAL", "--split", "R9"], "no split 'R9'"),
    ],
)
def test_bad_input_one_line_nothing_written(runs, real_store, tmp_path, extra, message):
    out = tmp_path / "bank.h5"
    extra = [str(real_store) if e == "REAL" else str(tmp_path / e) if e.endswith(".h5") else e for e in extra]
    res = subprocess.run([sys.executable, "-m", "cli.main", *_args(runs, out, *extra)], capture_output=True, text=True)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_existing_out_needs_overwrite_or_resume(runs, real_store, reference, tmp_path):
    import shutil

    from nasdm_aug.utils import InputError

    out = reference[0]
    same = ["--masks", str(real_store), "--split", "R2", "--seed", "5"]
    res = CliRunner().invoke(cli, _args(runs, out, *same))
    assert res.exit_code != 0
    res = CliRunner().invoke(cli, _args(runs, out, *same, "--resume"))
    assert res.exit_code == 0 and "nothing to do" in res.output
    # --resume accepts only the bank these arguments and weights make, whole
    res = CliRunner().invoke(cli, _args(runs, out, "--types", "all", "--num", "1", "--resume"))
    assert isinstance(res.exception, InputError) and "made with other arguments (" in str(res.exception)
    assert "--overwrite" in str(res.exception)
    res = CliRunner().invoke(cli, _args(runs, out, *same, "--seed", "6", "--resume"))
    assert "made with other arguments (seed)" in str(res.exception)
    text = tmp_path / "notes.h5"
    text.write_text("not a bank\n")
    res = CliRunner().invoke(cli, _args(runs, text, *same, "--resume"))
    assert isinstance(res.exception, InputError) and "not a readable HDF5 file" in str(res.exception)
    cut = tmp_path / "cut.h5"
    cut.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    res = CliRunner().invoke(cli, _args(runs, cut, *same, "--resume"))
    assert isinstance(res.exception, InputError) and str(cut) in str(res.exception)
    # other weights at the same model path
    other = [tmp_path / "m", tmp_path / "p"]
    for src, dst in zip(runs, other):
        shutil.copytree(src, dst)
    small = tmp_path / "small.h5"
    gen_args = _args(other, small, "--types", "all", "--num", "2")
    assert CliRunner().invoke(cli, gen_args).exit_code == 0
    weights = next(other[1].rglob("ema.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    res = CliRunner().invoke(cli, gen_args + ["--resume"])
    assert "made by models with other weights" in str(res.exception)


def test_interrupted_parts_of_other_weights_are_not_mixed_in(runs, real_store, tmp_path):
    import json

    from nasdm_aug.utils import InputError

    out = tmp_path / "bank.h5"
    cfg = SynthesizeConfig(model=tuple(map(str, runs)), masks=str(real_store), split="R2", seed=5, **FAST)
    parts = Path(str(out) + ".parts")
    parts.mkdir()
    (parts / "config.json").write_text(json.dumps({"config": json.loads(cfg.to_json()), "model_hash": "0" * 16}))
    with pytest.raises(InputError, match="interrupted run made with other model weights"):
        synthesize(cfg, out, device="cpu", progress=False)
    from nasdm_aug.generator import model_weights_hash

    right = model_weights_hash(*map(str, runs))
    (parts / "config.json").write_text(json.dumps({"config": json.loads(cfg.to_json()), "model_hash": right,
                                                   "masks_sha256": "f" * 16}))
    with pytest.raises(InputError, match="interrupted run made from a mask store of other contents"):
        synthesize(cfg, out, device="cpu", progress=False)
    (parts / "config.json").write_text(cfg.to_json())  # a record from before weights were recorded
    with pytest.raises(InputError, match="did not record the model's weights"):
        synthesize(cfg, out, device="cpu", progress=False)
    assert not out.exists()
    synthesize(cfg, out, device="cpu", overwrite=True, progress=False)
    assert len(PatchStore(out)) == len(PatchStore(real_store).indices("R2")) and not parts.exists()


def test_precision_auto_resumes_in_the_precision_the_parts_were_sampled_in(runs, real_store, tmp_path, monkeypatch):
    """"auto" is bf16 on one machine and fp32 on another: parts sampled in one are not finished in
    the other (one line says how to finish them), and an explicit precision equal to the parts'
    finishes them without sampling them again."""
    import nasdm_aug.hardware as hw
    import nasdm_aug.synthesize.run as syn_run
    from nasdm_aug.synthesize import finished_bank_problem
    from nasdm_aug.utils import InputError

    out = tmp_path / "bank.h5"
    cfg = SynthesizeConfig(model=tuple(map(str, runs)), masks=str(real_store), split="R2", seed=5, **FAST)
    assert cfg.precision == "auto"
    monkeypatch.setattr(hw, "native_bf16", lambda device: True)

    def killed(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # every chunk sampled, killed before the merge
        m.setattr(syn_run, "_merge", killed)
        with pytest.raises(KeyboardInterrupt):
            synthesize(cfg, out, device="cpu", progress=False)
    parts = Path(str(out) + ".parts")
    assert json.loads((parts / "config.json").read_text())["config"]["precision"] == "bf16"
    monkeypatch.setattr(hw, "native_bf16", lambda device: False)
    with pytest.raises(InputError, match=r"\.parts holds an interrupted run sampled in bf16, but precision 'auto' "
                                         r"means fp32 on this machine; rerun with `precision` bf16"):
        synthesize(cfg, out, device="cpu", progress=False)
    sampled = []
    real_chunk = syn_run._make_chunk
    monkeypatch.setattr(syn_run, "_make_chunk", lambda *a, **k: sampled.append(1) or real_chunk(*a, **k))
    synthesize(cfg.replace(precision="bf16"), out, device="cpu", progress=False)
    bank = PatchStore(out)
    assert not sampled and bank.attrs["provenance"]["precision"] == "bf16" and not parts.exists()
    # a finished bank made in fp32 counts for "auto" only where "auto" means fp32
    f32 = tmp_path / "f32.h5"
    synthesize(cfg.replace(precision="fp32"), f32, device="cpu", progress=False)
    assert finished_bank_problem(f32, cfg, "cpu") is None
    monkeypatch.setattr(hw, "native_bf16", lambda device: True)
    assert finished_bank_problem(f32, cfg, "cpu") == "made with other arguments (precision)"
    assert finished_bank_problem(f32, cfg.replace(precision="fp32"), "cpu") is None


def test_parts_and_banks_that_recorded_a_dtype_are_read_as_its_precision(runs, real_store, tmp_path, monkeypatch):
    """Synthesis took torch dtype names (``dtype``: float32, bfloat16, auto) before it spoke in
    precisions: an interrupted run and a finished bank that recorded one are still the same run."""
    import h5py

    import nasdm_aug.hardware as hw
    import nasdm_aug.synthesize.run as syn_run
    from nasdm_aug.synthesize import finished_bank_problem

    monkeypatch.setattr(hw, "native_bf16", lambda device: False)
    out = tmp_path / "bank.h5"
    cfg = SynthesizeConfig(model=tuple(map(str, runs)), masks=str(real_store), split="R2", seed=5, **FAST)
    with monkeypatch.context() as m:  # every chunk sampled, killed before the merge
        m.setattr(syn_run, "_merge", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            synthesize(cfg, out, device="cpu", progress=False)
    record_path = Path(str(out) + ".parts") / "config.json"
    record = json.loads(record_path.read_text())
    record["config"]["dtype"] = {"fp32": "float32", "bf16": "bfloat16"}[record["config"].pop("precision")]
    record_path.write_text(json.dumps(record))  # as the version before wrote it
    sampled = []
    real_chunk = syn_run._make_chunk
    monkeypatch.setattr(syn_run, "_make_chunk", lambda *a, **k: sampled.append(1) or real_chunk(*a, **k))
    assert synthesize(cfg, out, device="cpu", progress=False)["chunks_done_before"] > 0 and not sampled
    with h5py.File(out, "r") as f:
        recorded = json.loads(f.attrs["config"])
    for dtype, precision in (("auto", "auto"), ("float32", "fp32"), ("bfloat16", "bf16")):
        with h5py.File(out, "r+") as f:
            f.attrs["config"] = json.dumps({**{k: v for k, v in recorded.items() if k != "precision"}, "dtype": dtype})
        assert finished_bank_problem(out, cfg.replace(precision=precision), "cpu") is None
    assert finished_bank_problem(out, cfg, "cpu") == "made with other arguments (precision)"  # bf16: not auto here
    assert SynthesizeConfig.from_dict({"types": "all", "num": 1, "dtype": "bfloat16"}).precision == "bf16"
    with pytest.raises(ValueError, match="not dtype"):
        SynthesizeConfig.from_dict({"types": "all", "num": 1, "dtype": "bfloat16", "precision": "bf16"})


def test_dtype_flag_still_works_and_says_what_replaces_it(tmp_path):
    def dry(*extra):
        return CliRunner().invoke(cli, ["synthesize", "--out", str(tmp_path / "o.h5"), "--dry-run", *extra])

    res = dry("--dtype", "bfloat16")
    assert res.exit_code == 0 and "--dtype is replaced by --precision" in res.output
    assert json.loads(res.output[res.output.index("{"): res.output.rindex("}") + 1])["precision"] == "bf16"
    res = dry("--precision", "fp32")
    assert json.loads(res.output[: res.output.rindex("}") + 1])["precision"] == "fp32"
    assert "--dtype" not in CliRunner().invoke(cli, ["synthesize", "--help"]).output  # hidden
    res = dry("--dtype", "float32", "--precision", "bf16")
    assert res.exit_code != 0 and "give --precision (bf16), not --dtype (float32)" in str(res.exception)


def test_wrong_patch_size_and_dry_run(runs, tmp_path):
    from nasdm_aug.data.store_writer import PatchStoreWriter
    from nasdm_aug.types import LIZARD

    store = tmp_path / "big.h5"
    with PatchStoreWriter(store, patch_size=32, type_table=LIZARD) as w:
        w.append(np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.int32), np.zeros((32, 32), np.uint8))
    res = subprocess.run([sys.executable, "-m", "cli.main", *_args(runs, tmp_path / "o.h5", "--masks", str(store))],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "has 32-px patches but the model" in res.stderr and "has 16-px patches" in res.stderr
    res = CliRunner().invoke(cli, _args(runs, tmp_path / "o.h5", "--types", "all", "--num", "7", "--dry-run"))
    assert res.exit_code == 0 and "patches: 7" in res.output and not (tmp_path / "o.h5").exists()


def test_steps_default_to_the_samplers_own():
    from nasdm_aug.sampling import DEFAULT_STEPS_BY_SAMPLER

    def cfg(**sampling):
        return SynthesizeConfig(types="all", num=1, sampling=SamplerOptions(**sampling))

    for sampler, steps in DEFAULT_STEPS_BY_SAMPLER.items():
        assert cfg(sampler=sampler).sampling.steps == steps
    assert cfg(sampler="ddim").sampling.steps == 250  # not the ddpm 50
    assert cfg(sampler="ddim", steps=12).sampling.steps == 12
    # stored resolved: a config written before this default reads back the same
    c = SynthesizeConfig(types="all", num=1)
    assert SynthesizeConfig.from_dict(c.to_dict()) == c and c.to_dict()["sampling"]["steps"] == 50


def test_the_generator_passes_the_options_through_unchanged(monkeypatch):
    import torch

    from nasdm_aug import generator as g

    seen = []

    def fake_sample(model_fn, shape, kwargs, *, options, **_):
        seen.append(options)
        return torch.zeros(shape)

    monkeypatch.setattr(g, "sample", fake_sample)
    gen = g.NASDMGenerator.from_pretrained("toy")
    inst = np.zeros((1, gen.patch_size, gen.patch_size), np.int32)
    inst[0, 4:10, 4:10] = 1
    opts = SamplerOptions("ddim", eta=0.3)
    gen.generate_patches(inst, (inst > 0).astype(np.uint8), sampling=opts)
    gen.generate_masks("all", 1, sampling=opts)
    assert seen == [opts, opts] and seen[0].steps == 250 and seen[0].eta == 0.3


def test_cli_sampler_options_reach_the_config(runs, tmp_path):
    def dry(*extra, config=None):
        args = ["synthesize", "--out", str(tmp_path / "o.h5"), "--dry-run", *extra]
        if config:
            args += ["--config", str(config)]
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, res.output
        return json.loads(res.output[: res.output.rindex("}") + 1])["sampling"]

    assert dry()["sampler"] == "ddpm" and dry()["steps"] == 50
    assert dry("--sampler", "ddim") == {"sampler": "ddim", "steps": 250, "eta": 0.0, "spacing": "logsnr",
                                         "clip_denoised": True}
    assert dry("--sampler", "ddim", "--eta", "0.4", "--steps", "9")["eta"] == 0.4
    saved = tmp_path / "c.json"
    SynthesizeConfig(types="all", num=1, sampling=SamplerOptions("ddim", steps=9, eta=0.2)).save(saved)
    assert dry(config=saved)["steps"] == 9
    assert dry("--sampler", "dpmpp_2m", config=saved) == {"sampler": "dpmpp_2m", "steps": 50, "eta": 0.0,
                                                           "spacing": "logsnr", "clip_denoised": True}
    bad = CliRunner().invoke(cli, ["synthesize", "--out", str(tmp_path / "o.h5"), "--sampler", "euler"])
    assert bad.exit_code == 2 and "'euler' is not one of" in bad.output
    bad = CliRunner().invoke(cli, ["synthesize", "--out", str(tmp_path / "o.h5"), "--eta", "0.5", "--dry-run"])
    assert bad.exit_code != 0 and "eta is an option of the ddim sampler, not of 'ddpm'" in str(bad.exception)


def test_a_bank_recorded_before_a_new_field_still_counts_as_finished(reference, runs, real_store, tmp_path):
    """A bank recorded by an older version (sampler options as top-level fields, no eta yet) is read
    as this version writes it, so it still counts as finished."""
    import shutil

    import h5py

    from nasdm_aug.synthesize import finished_bank_problem

    out, _ = reference
    old = tmp_path / "old.h5"
    shutil.copy(out, old)
    cfg = SynthesizeConfig(model=tuple(map(str, runs)), masks=str(real_store), split="R2", seed=5, **FAST)
    with h5py.File(old, "r+") as f:
        recorded = json.loads(f.attrs["config"])
        sampling = recorded.pop("sampling")
        recorded.update(sampler=sampling["sampler"], steps=sampling["steps"])
        f.attrs["config"] = json.dumps(recorded)
    assert finished_bank_problem(old, cfg) is None
    with h5py.File(old, "r+") as f:  # no layout recorded: made before it was a choice, in NCHW
        f.attrs["config"] = json.dumps({k: v for k, v in recorded.items() if k != "layout"})
    assert finished_bank_problem(old, cfg) == "made with other arguments (layout)"
    assert finished_bank_problem(old, cfg.replace(layout="contiguous")) is None
    with h5py.File(old, "r+") as f:  # no precision recorded: made before it was a choice, in fp32
        f.attrs["config"] = json.dumps({k: v for k, v in recorded.items() if k != "precision"})
    assert finished_bank_problem(old, cfg.replace(precision="fp32")) is None
    assert finished_bank_problem(old, cfg.replace(precision="bf16")) == "made with other arguments (precision)"
    with h5py.File(old, "r+") as f:  # no marker threshold recorded: a bank of real masks decodes none
        f.attrs["config"] = json.dumps({k: v for k, v in recorded.items() if k != "marker_threshold"})
    assert finished_bank_problem(old, cfg) is None
    with h5py.File(old, "r+") as f:  # no mask guidance recorded: a bank of real masks samples no mask
        f.attrs["config"] = json.dumps({k: v for k, v in recorded.items() if k != "mask_guidance"})
    assert finished_bank_problem(old, cfg) is None
    with h5py.File(old, "r+") as f:  # no guidance interval recorded: every step was guided
        f.attrs["config"] = json.dumps({k: v for k, v in recorded.items() if k != "guidance_interval"})
    assert finished_bank_problem(old, cfg) is None
    assert finished_bank_problem(old, cfg.replace(guidance_interval=(0.3, 5.0))) == \
        "made with other arguments (guidance_interval)"
    with h5py.File(old, "r+") as f:  # no mask guidance interval recorded: a bank of real masks samples no mask
        f.attrs["config"] = json.dumps({k: v for k, v in recorded.items() if k != "mask_guidance_interval"})
    assert finished_bank_problem(old, cfg) is None
    # nor do the mask model's settings asked of a bank of real masks keep it from counting as made
    assert finished_bank_problem(old, cfg.replace(mask_guidance_interval=(0.0, 3.0), mask_guidance=7.0)) is None
    with h5py.File(old, "r+") as f:  # a real difference is still one
        f.attrs["config"] = json.dumps({**recorded, "seed": 6})
    assert finished_bank_problem(old, cfg) == "made with other arguments (seed)"


def test_the_mask_models_settings_are_recorded_for_generated_masks_alone():
    from nasdm_aug.generator import DEFAULT_MASK_GUIDANCE, DEFAULT_MASK_GUIDANCE_INTERVAL
    from nasdm_aug.synthesize.records import _as_current

    asked = {"mask_guidance": 7.0, "mask_guidance_interval": (0.0, 3.0)}
    for source in ({"types": "all", "num": 2}, {"combinations": ("epithelial:2",)}):
        cfg = SynthesizeConfig(**source, **asked)
        assert (cfg.mask_guidance, cfg.mask_guidance_interval) == (7.0, (0.0, 3.0))
    cfg = SynthesizeConfig(masks="real.h5", **asked)
    assert (cfg.mask_guidance, cfg.mask_guidance_interval) == (DEFAULT_MASK_GUIDANCE, DEFAULT_MASK_GUIDANCE_INTERVAL)
    # a bank of generated masks recorded before the interval was a choice was guided at every step
    recorded = json.loads(SynthesizeConfig(types="all", num=2, mask_guidance_interval=(0.0, 3.0)).to_json())
    del recorded["mask_guidance_interval"]
    assert _as_current(recorded)["mask_guidance_interval"] is None


def test_generated_masks_recorded_before_the_marker_threshold_were_decoded_with_edge_markers():
    from nasdm_aug.synthesize.records import _as_current

    recorded = json.loads(SynthesizeConfig(types="epithelial", num=2).to_json())
    assert recorded["marker_threshold"] == 0.5  # today's default
    del recorded["marker_threshold"]
    assert _as_current(recorded)["marker_threshold"] == 0.0


def test_generated_masks_recorded_before_the_mask_guidance_were_sampled_at_the_one_guidance():
    from nasdm_aug.synthesize.records import _as_current

    recorded = json.loads(SynthesizeConfig(types="epithelial", num=2, guidance=1.2).to_json())
    assert recorded["mask_guidance"] == 2.5  # today's default, not the patches' scale
    del recorded["mask_guidance"]
    assert _as_current(recorded)["mask_guidance"] == 1.2
    combos = json.loads(SynthesizeConfig(combinations=("epithelial:2",)).to_json())
    del combos["mask_guidance"]
    assert _as_current(combos)["mask_guidance"] == 1.5


def test_the_mask_guidance_reaches_the_mask_model_alone(monkeypatch, runs, tmp_path):
    import h5py

    from nasdm_aug import generator as g

    seen = []
    real_cfg = g.classifier_free_guidance
    monkeypatch.setattr(g, "classifier_free_guidance", lambda net, s, **kw: seen.append((net.config.kind, s)) or real_cfg(net, s, **kw))
    for extra, want in (([], 2.5), (["--mask-guidance", "1", "--guidance", "2"], 1.0)):
        seen.clear()
        out = tmp_path / f"b{want}.h5"
        res = CliRunner().invoke(cli, [*_args(runs, out, "--types", "all", "--num", "2"), *extra])
        assert res.exit_code == 0, res.output
        patch_scale = 2.0 if extra else 1.5
        assert sorted(set(seen)) == sorted({("mask", want), ("patch", patch_scale)})
        with h5py.File(out, "r") as f:
            assert json.loads(f.attrs["config"])["mask_guidance"] == want
    # resuming with another mask guidance is refused, naming it
    res = CliRunner().invoke(cli, [*_args(runs, tmp_path / "b2.5.h5", "--types", "all", "--num", "2"),
                                   "--mask-guidance", "3", "--resume"])
    assert res.exit_code != 0 and "other arguments (mask_guidance)" in res.output + str(res.exception)
    bad = CliRunner().invoke(cli, [*_args(runs, tmp_path / "bad.h5", "--types", "all", "--num", "1"),
                                   "--mask-guidance", "-1"])
    assert bad.exit_code == 2 and "--mask-guidance" in bad.output


@pytest.mark.parametrize("option,kind,other", [("--guidance-interval", "patch", "mask"),
                                                ("--mask-guidance-interval", "mask", "patch")])
def test_each_guidance_interval_reaches_its_own_model_alone(monkeypatch, runs, tmp_path, option, kind, other):
    import h5py

    from nasdm_aug import generator as g

    key = option[2:].replace("-", "_")
    seen = []
    real_cfg = g.classifier_free_guidance
    monkeypatch.setattr(g, "classifier_free_guidance",
                        lambda net, s, guided=None: seen.append((net.config.kind, guided is None or int(guided.sum())))
                        or real_cfg(net, s, guided=guided))
    for extra, want in (([], None), ([option, "0.3,5"], [0.3, 5.0]), ([option, "all"], None)):
        seen.clear()
        out = tmp_path / f"b{len(extra)}{want}.h5"
        res = CliRunner().invoke(cli, [*_args(runs, out, "--types", "all", "--num", "2"), *extra])
        assert res.exit_code == 0, res.output
        guided = dict(seen)
        assert guided[other] is True  # the other model is guided at every step, whatever this interval
        if want is None:
            assert guided[kind] is True
        else:  # a count of guided steps, not True (every step)
            assert guided[kind] is not True and 0 < guided[kind] < 1000
        with h5py.File(out, "r") as f:
            assert json.loads(f.attrs["config"])[key] == want
        assert PatchStore(out).attrs["provenance"][key] == want
    res = CliRunner().invoke(cli, [*_args(runs, tmp_path / "b0None.h5", "--types", "all", "--num", "2"),
                                   option, "0.3,5", "--resume"])
    assert res.exit_code != 0 and f"other arguments ({key})" in res.output + str(res.exception)
    for bad, message in (("5,0.3", "0 <= low < high"), ("x", "LOW,HIGH"), ("1,inf", "finite")):
        res = CliRunner().invoke(cli, [*_args(runs, tmp_path / "bad.h5", "--types", "all", "--num", "1"),
                                       option, bad])
        assert res.exit_code == 2 and option in res.output and message in res.output, (bad, res.output)


def test_the_mask_sampler_reaches_the_mask_model_alone(sampled, runs, real_store, tmp_path):
    import h5py

    seen = sampled
    cases = (([], ("ddim", 3), None),  # _args samples by ddim in 3 steps: both models, as before
             (["--mask-sampler", "ddpm", "--mask-steps", "2"], ("ddpm", 2), {"sampler": "ddpm", "steps": 2}),
             (["--mask-steps", "2"], ("ddim", 2), {"sampler": "ddim", "steps": 2}),
             (["--mask-sampler", "ddim", "--mask-steps", "3"], ("ddim", 3), None))  # the same as --sampler's
    for i, (extra, want, recorded) in enumerate(cases):
        seen.clear()
        out = tmp_path / f"b{i}.h5"
        res = CliRunner().invoke(cli, [*_args(runs, out, "--types", "all", "--num", "2"), *extra])
        assert res.exit_code == 0, res.output
        assert set(seen) == {("mask", *want), ("patch", "ddim", 3)}, extra
        with h5py.File(out, "r") as f:
            cfg = json.loads(f.attrs["config"])["mask_sampling"]
        assert (cfg and {k: cfg[k] for k in ("sampler", "steps")}) == recorded
        prov = PatchStore(out).attrs["provenance"]
        assert (prov["mask_sampler"], prov["mask_steps"]) == want
    res = CliRunner().invoke(cli, [*_args(runs, tmp_path / "b1.h5", "--types", "all", "--num", "2"),
                                   "--mask-sampler", "ddpm", "--mask-steps", "3", "--resume"])
    assert res.exit_code != 0 and "other arguments (mask_sampling.steps)" in res.output + str(res.exception)
    # a bank of real masks samples no mask: nothing of the mask sampler is recorded or sampled
    seen.clear()
    out = tmp_path / "real.h5"
    res = CliRunner().invoke(cli, [*_args(runs, out, "--masks", str(real_store), "--indices", "0,1"),
                                   "--mask-sampler", "ddpm"])
    assert res.exit_code == 0, res.output
    assert {k for k, *_ in seen} == {"patch"}
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["config"])["mask_sampling"] is None
    assert PatchStore(out).attrs["provenance"]["mask_sampler"] is None
    bad = CliRunner().invoke(cli, [*_args(runs, tmp_path / "bad.h5", "--types", "all", "--num", "1"),
                                   "--mask-sampler", "euler"])
    assert bad.exit_code == 2 and "--mask-sampler" in bad.output and "ddpm" in bad.output


def test_the_marker_threshold_reaches_the_decoder(monkeypatch, runs, tmp_path):
    from nasdm_aug.data import masks as masks_mod
    from nasdm_aug import generator as g

    seen = []

    def recording(rep, n_types, min_size=10, marker_threshold=0.0):
        seen.append(marker_threshold)
        return masks_mod.decode_mask(rep, n_types, min_size, marker_threshold)

    monkeypatch.setattr(g, "decode_mask", recording)
    for extra, want in (([], 0.5), (["--marker-threshold", "0.3"], 0.3), (["--marker-threshold", "0"], 0.0)):
        seen.clear()
        res = CliRunner().invoke(cli, [*_args(runs, tmp_path / f"b{want}.h5", "--types", "all", "--num", "2"), *extra])
        assert res.exit_code == 0, res.output
        assert seen == [want, want]
    bad = CliRunner().invoke(cli, [*_args(runs, tmp_path / "bad.h5", "--types", "all", "--num", "1"),
                                   "--marker-threshold", "1"])
    assert bad.exit_code == 2 and "--marker-threshold" in bad.output


def test_from_options_replaces_the_configs_source_and_keeps_the_rest(real_store, tmp_path):
    from nasdm_aug.utils import InputError

    saved = tmp_path / "c.json"
    SynthesizeConfig(types="all", num=3, seed=4, precision="bf16", sampling=SamplerOptions("ddim", steps=9)).save(saved)
    cfg = SynthesizeConfig.from_options(saved, masks=str(real_store), indices="1, 2", guidance=2.0, steps=5)
    assert (cfg.masks, cfg.indices, cfg.types, cfg.num) == (str(real_store), (1, 2), "", 0)  # the source: replaced
    assert (cfg.seed, cfg.precision, cfg.guidance, cfg.sampling.sampler, cfg.sampling.steps) == (4, "bf16", 2.0, "ddim", 5)
    assert SynthesizeConfig.from_options() == SynthesizeConfig(types="all", num=1)
    assert SynthesizeConfig.from_options(recombine=str(real_store), num=4).recombine.n == 4
    with pytest.raises(InputError, match="`indices` must be comma-separated integers, got '1,x'"):
        SynthesizeConfig.from_options(masks=str(real_store), indices="1,x")
    with pytest.raises(InputError, match="`recombine`: .* has no split 'R9'"):
        SynthesizeConfig.from_options(recombine=f"{real_store}:R9")
    with pytest.raises(InputError, match="give exactly one source"):
        SynthesizeConfig.from_options(masks=str(real_store), types="all")
