"""A model's own recommended sampling (``sampling.json`` in its run directory) fills the sampling
options that ``nasdm-aug synthesize`` and the studies are not given."""

import json
import shutil

import h5py
import pytest
from click.testing import CliRunner

from cli.main import cli
from nasdm_aug.data.store import PatchStore
from nasdm_aug.sampling import SamplerOptions
from nasdm_aug.synthesize import SynthesizeConfig, model_recommendations
from nasdm_aug.training.model_runs import recommended_sampling
from nasdm_aug.utils import InputError

PATCH_REC = {"sampling": {"sampler": "ddim", "steps": 3}, "guidance": 1.25, "guidance_interval": [0.0, 4.0],
             "why": "test"}
MASK_REC = {"sampling": {"sampler": "ddpm", "steps": 2}, "guidance": 3.0}


@pytest.fixture()
def rec_runs(runs, tmp_path):
    """Copies of the tiny runs whose patch and mask runs each recommend a sampling."""
    mask, patch = shutil.copytree(runs[0], tmp_path / "mask"), shutil.copytree(runs[1], tmp_path / "patch")
    (patch / "sampling.json").write_text(json.dumps(PATCH_REC))
    (mask / "sampling.json").write_text(json.dumps(MASK_REC))
    return mask, patch


def _synth(rec_runs, out, *extra):
    return CliRunner().invoke(cli, ["synthesize", "--model", str(rec_runs[0]), "--model", str(rec_runs[1]),
                                    "--out", str(out), "--batch-size", "2", "--device", "cpu", *extra])


def test_the_file_is_read_and_checked(rec_runs, runs, tmp_path):
    got = recommended_sampling(rec_runs[1])
    assert got == {"sampling": SamplerOptions("ddim", steps=3), "guidance": 1.25, "guidance_interval": (0.0, 4.0)}
    assert recommended_sampling(runs[1]) == {} and recommended_sampling(None) == {}
    path = rec_runs[1] / "sampling.json"
    for text, message in (("{", "not a readable JSON file"),
                          ('{"steps": 3}', r"keys among sampling, guidance, guidance_interval, why, got \['steps'\]"),
                          ('{"sampling": {"sampler": "euler"}}', "unknown sampler 'euler'.*ddpm"),
                          ('{"guidance": -1}', "guidance must be a number >= 0, got -1"),
                          ('{"guidance": "2"}', "guidance must be a number >= 0"),
                          ('{"guidance_interval": [5, 1]}', "0 <= low < high")):
        path.write_text(text)
        with pytest.raises(InputError, match=f"{path}: .*{message}"):
            recommended_sampling(rec_runs[1])
    bad = _synth(rec_runs, tmp_path / "bad.h5", "--types", "all", "--num", "1")
    assert bad.exit_code != 0 and "sampling.json" in bad.output + str(bad.exception)


def test_unset_options_sample_as_the_models_recommend(sampled, rec_runs, real_store, tmp_path):
    seen = sampled
    out = tmp_path / "rec.h5"
    res = _synth(rec_runs, out, "--types", "all", "--num", "2")
    assert res.exit_code == 0, res.output
    assert set(seen) == {("mask", "ddpm", 2), ("patch", "ddim", 3)}
    prov = PatchStore(out).attrs["provenance"]
    assert (prov["sampler"], prov["steps"], prov["guidance"], prov["guidance_interval"]) == ("ddim", 3, 1.25, [0.0, 4.0])
    assert (prov["mask_sampler"], prov["mask_steps"], prov["mask_guidance"]) == ("ddpm", 2, 3.0)
    # the bank records the resolved sampling, so the same command resumes it
    again = _synth(rec_runs, out, "--types", "all", "--num", "2", "--resume")
    assert again.exit_code == 0 and "is complete" in again.output
    # options given win over the recommendation, each model's on its own
    seen.clear()
    res = _synth(rec_runs, tmp_path / "given.h5", "--types", "all", "--num", "2", "--steps", "2", "--guidance", "1",
                 "--mask-guidance", "1.5", "--guidance-interval", "all")
    assert res.exit_code == 0, res.output
    assert set(seen) == {("mask", "ddpm", 2), ("patch", "ddim", 2)}
    prov = PatchStore(tmp_path / "given.h5").attrs["provenance"]
    assert (prov["guidance"], prov["guidance_interval"], prov["mask_guidance"]) == (1.0, None, 1.5)
    # a bank of real masks samples no mask and records none of the mask model's recommendation
    seen.clear()
    res = _synth(rec_runs, tmp_path / "real.h5", "--masks", str(real_store), "--indices", "0,1")
    assert res.exit_code == 0, res.output
    assert set(seen) == {("patch", "ddim", 3)}
    with h5py.File(tmp_path / "real.h5", "r") as f:
        cfg = json.loads(f.attrs["config"])
    assert (cfg["mask_sampling"], cfg["mask_guidance"]) == (None, 2.5)


def test_a_config_file_keeps_what_it_sets(rec_runs, tmp_path):
    cfg_path = tmp_path / "c.json"
    cfg_path.write_text(json.dumps({"types": "all", "num": 1, "guidance": 2.0,
                                    "model": [str(rec_runs[0]), str(rec_runs[1])]}))
    cfg = SynthesizeConfig.from_options(cfg_path)
    assert (cfg.guidance, cfg.sampling, cfg.guidance_interval) == (2.0, SamplerOptions("ddim", steps=3), (0.0, 4.0))
    # a bank's own record sets every field: it is read back as it was made
    full = tmp_path / "full.json"
    SynthesizeConfig(types="all", num=1, model=tuple(map(str, rec_runs))).save(full)
    assert SynthesizeConfig.from_options(full) == SynthesizeConfig.load(full)
    # models that recommend nothing keep the package defaults
    assert SynthesizeConfig.from_options(types="all", num=1) == SynthesizeConfig(types="all", num=1)


def test_the_shipped_consep_model_recommends_the_consep_study_presets_sampling():
    from nasdm_aug.studies.config import STUDY_PRESETS

    rec, preset = model_recommendations("consep-cpu"), STUDY_PRESETS["consep"]
    assert rec["sampling"] == preset.sampling == SamplerOptions("dpmpp_2m", steps=15)
    assert (rec["guidance"], rec["guidance_interval"]) == (preset.guidance, preset.guidance_interval)
    assert rec["mask_sampling"] == preset.mask_sampling
    assert rec["mask_guidance"] == 2.5 and rec["mask_guidance_interval"] is None
    assert model_recommendations("toy") == {} and model_recommendations(["/no/such/run"]) == {}


def test_the_generator_offers_its_recommendation_as_generate_arguments(rec_runs, runs):
    from nasdm_aug.generator import NASDMGenerator

    gen = NASDMGenerator.from_pretrained(*rec_runs, device="cpu")
    assert gen.recommended == model_recommendations(list(map(str, rec_runs))) == {
        "sampling": SamplerOptions("ddim", steps=3), "guidance": 1.25, "guidance_interval": (0.0, 4.0),
        "mask_sampling": SamplerOptions("ddpm", steps=2), "mask_guidance": 3.0}
    out = gen.generate("all", 2, seed=0, **gen.recommended)
    # the same as the bank synthesize makes from the same request with no sampling options
    cfg = SynthesizeConfig.from_options(models=list(map(str, rec_runs)), types="all", num=2)
    explicit = gen.generate("all", 2, seed=0, sampling=cfg.sampling, guidance=cfg.guidance,
                            guidance_interval=cfg.guidance_interval, mask_sampling=cfg.mask_sampling,
                            mask_guidance=cfg.mask_guidance)
    for key in out:
        assert (out[key] == explicit[key]).all(), key
    assert NASDMGenerator.from_pretrained(*runs, device="cpu").recommended == {}
