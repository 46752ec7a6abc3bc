"""``nasdm-aug synthesize --balance-for``: the planned type combinations, made and recorded."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli
from nasdm_aug.sampling import SamplerOptions
from nasdm_aug.data.store import PatchStore
from nasdm_aug.generator import NASDMGenerator
from nasdm_aug.mixing import plan_balance_synthesis
from nasdm_aug.synthesize import SynthesizeConfig, combination_presence
from nasdm_aug.types import LIZARD


def _args(runs, out, *extra):
    return ["synthesize", "--model", str(runs[0]), "--model", str(runs[1]), "--out", str(out),
            "--sampler", "ddim", "--steps", "3", "--batch-size", "3", "--seed", "2", "--device", "cpu", *extra]


def test_balance_for_makes_the_planned_combinations(runs, real_store, tmp_path, monkeypatch):
    import torch

    from nasdm_aug.nets.unet import MaskUNet

    seen = []  # every condition the mask model is given, so the expectation does not come from it
    forward = MaskUNet.forward
    monkeypatch.setattr(MaskUNet, "forward", lambda self, x, t, cond: seen.append(cond.clone()) or forward(self, x, t, cond))
    out = tmp_path / "bal.h5"
    plan = plan_balance_synthesis(PatchStore(real_store), "Train", "uniform", 1.0)
    dry = CliRunner().invoke(cli, _args(runs, out, "--balance-for", f"{real_store}:Train", "--target", "uniform",
                                        "--ratio", "1", "--dry-run"))
    assert dry.exit_code == 0, dry.output
    assert f"patches: {plan.n_patches}" in dry.output and plan.summary() in dry.output
    res = CliRunner().invoke(cli, _args(runs, out, "--balance-for", f"{real_store}:Train", "--target", "uniform",
                                        "--ratio", "1"))
    assert res.exit_code == 0, res.output
    bank = PatchStore(out)
    assert len(bank) == plan.n_patches == sum(plan.record["counts"].values())
    assert set(bank.meta("parent")) == {-1}
    assert bank.attrs["balance_plan"] == json.loads(json.dumps(plan.record))
    assert tuple(bank.config["combinations"]) == plan.combinations
    # the mask model was asked, batch by batch (3 sampler steps each), for the plan's presence vectors
    asked = torch.cat([c[(c != MaskUNet.NULL_VALUE).any(dim=1)] for c in seen[::3]])
    np.testing.assert_array_equal(asked.numpy(), combination_presence(plan.combinations, LIZARD))
    # patch i's mask is the mask model's sample for its own combination's presence vector at index i
    gen = NASDMGenerator.from_pretrained(*runs, device="cpu")
    start = 0
    for combo in plan.combinations:
        names, n = combo.rsplit(":", 1)
        inst, _ = gen.generate_masks(names.split("+"), int(n), sampling=SamplerOptions("ddim", steps=3), seed=2,
                                     sample_offset=start)
        np.testing.assert_array_equal(bank.read(range(start, start + int(n)), keys=("inst",))["inst"], inst)
        start += int(n)


def test_combinations_expand_in_order():
    presence = combination_presence(("neutrophil+eosinophil:2", "plasma:1"), LIZARD)
    np.testing.assert_array_equal(presence, [[1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 1, 0], [0, 0, 0, 1, 0, 0]])
    cfg = SynthesizeConfig(combinations=("neutrophil:3", "plasma+eosinophil:2"))
    assert SynthesizeConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("extra, message", [
    (["--balance-for", "{store}:Nope"], "has no split 'Nope' (splits: "),
    (["--balance-for", "{store}", "--ratio", "0"], r"ratio 0 is outside (0, 1]"),
    (["--balance-for", "{store}", "--target", "macrophage=1"], "names type 'macrophage', which the type table 'lizard'"),
    (["--balance-for", "{store}", "--target", "flat"], "expected 'uniform', 'sqrt' or name=weight"),
    (["--combination", "neutrophil:x"], "combination 'neutrophil:x': expected 'name+name:count'"),
])
def test_bad_input(runs, real_store, tmp_path, extra, message):
    extra = [e.format(store=real_store) for e in extra]
    res = CliRunner().invoke(cli, _args(runs, tmp_path / "x.h5", *extra, "--dry-run"))
    assert res.exit_code != 0 and message in (res.output + str(res.exception)), res.output


def test_unknown_combination_type_fails_before_work(runs, tmp_path):
    res = CliRunner().invoke(cli, _args(runs, tmp_path / "x.h5", "--combination", "macrophage:2"))
    assert res.exit_code != 0 and "combination 'macrophage:2': unknown type 'macrophage'" in \
        (res.output + str(res.exception))
    assert not (tmp_path / "x.h5").exists()
