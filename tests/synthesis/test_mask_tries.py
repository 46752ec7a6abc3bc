"""Redrawing generated masks that miss their request (``max_tries`` / ``--mask-tries``): which
draw is kept, that redraws are seeded per (seed, sample, draw) whatever the batch, and how
``synthesize`` takes, records and reports them."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from nasdm_aug import generator as g
from nasdm_aug.data.store import PatchStore
from nasdm_aug.generator import NASDMGenerator, resolve_types, types_as_requested
from nasdm_aug.sampling import SamplerOptions
from nasdm_aug.synthesize import SynthesizeConfig

OPTS = dict(sampling=SamplerOptions("ddim", steps=3), seed=3)


@pytest.fixture()
def fresh(runs):
    return NASDMGenerator.from_pretrained(*runs, device="cpu", dtype="float32")


def _args(runs, out, *extra):
    return ["synthesize", "--model", str(runs[0]), "--model", str(runs[1]), "--out", str(out),
            "--sampler", "ddim", "--steps", "3", "--batch-size", "3", "--device", "cpu", *extra]


def _result(output):  # the JSON result, after the progress bar's lines
    return json.loads(output[output.index("{\n"): output.rindex("}") + 1])


def test_types_as_requested_is_an_exact_match():
    type_map = np.zeros((4, 4), np.uint8)
    type_map[0, 0], type_map[1, 1] = 2, 3
    assert types_as_requested(type_map, np.array([0, 1, 1, 0], np.float32))
    assert not types_as_requested(type_map, np.array([0, 1, 0, 0], np.float32))  # type 3 not asked for
    assert not types_as_requested(type_map, np.array([1, 1, 1, 0], np.float32))  # type 1 missing
    assert types_as_requested(np.zeros((4, 4), np.uint8), np.zeros(4, np.float32))


def test_the_first_draw_that_holds_the_request_is_kept(fresh, monkeypatch):
    """A scripted decoder: draw a of sample i holds the types SCRIPT[i][a]. Only the masks that
    missed are drawn again, each draw with a noise stream of its own, and a mask that never holds
    its types keeps its first draw."""
    script = {0: [[2]], 1: [[], [1], [2]], 2: [[1], [], [3]], 3: [[2, 3], [2]]}  # asked: epithelial (2)
    calls, drawn = [], []  # drawn: the sample index of every draw, in order

    def sampler(model_fn, shape, model_kwargs, *, seed, indices, **kw):
        calls.append((seed, list(indices)))
        x = torch.zeros(shape)
        for b, i in enumerate(indices):
            drawn.append(i)
            x[b, 0, 0, 0] = len(drawn) / 1000.0  # the draw's position, read back by the decoder
        return x

    def decoder(rep, n_types, min_size=10, marker_threshold=0.0):
        pos = int(round(float(rep[0, 0, 0]) * 1000))
        i = drawn[pos - 1]
        attempt = drawn[:pos].count(i) - 1
        type_map = np.zeros(rep.shape[1:], np.uint8)
        type_map[0, : len(script[i][attempt])] = script[i][attempt]
        return (type_map > 0).astype(np.int32), type_map

    monkeypatch.setattr(g, "sample", sampler)
    monkeypatch.setattr(g, "decode_mask", decoder)
    _, types = fresh.generate_masks(["epithelial"], 4, max_tries=3, batch_size=4, **OPTS)
    assert [sorted(set(np.unique(t)) - {0}) for t in types] == [[2], [2], [1], [2]]  # sample 2 never held it
    assert [c[1] for c in calls] == [[0, 1, 2, 3], [1, 2, 3], [1, 2]]
    seeds = [c[0] for c in calls]
    assert seeds[0] == OPTS["seed"] ^ g._MASK_SEED_SALT and len(set(seeds)) == 3
    calls.clear(), drawn.clear()
    _, once = fresh.generate_masks(["epithelial"], 4, max_tries=1, batch_size=4, **OPTS)
    assert [c[1] for c in calls] == [[0, 1, 2, 3]]
    assert [sorted(set(np.unique(t)) - {0}) for t in once] == [[2], [], [1], [2, 3]]
    with pytest.raises(g.InputError, match="max_tries must be >= 1, got 0"):
        fresh.generate_masks(["epithelial"], 1, max_tries=0, **OPTS)


def test_redraws_change_only_the_masks_that_missed_whatever_the_batch(fresh):
    # the random-weight test model draws neutrophils or nothing: asked for neutrophils, some miss
    n = 8
    presence = resolve_types("neutrophil", n, fresh.type_table)
    inst1, type1 = fresh.generate_masks("neutrophil", n, max_tries=1, batch_size=4, **OPTS)
    inst4, type4 = fresh.generate_masks("neutrophil", n, max_tries=4, batch_size=4, **OPTS)
    held1 = [types_as_requested(t, p) for t, p in zip(type1, presence)]
    held4 = [types_as_requested(t, p) for t, p in zip(type4, presence)]
    assert 0 < sum(held1) < n and sum(held4) > sum(held1)  # the test asks something of the redraws
    for i in range(n):
        if held1[i]:
            np.testing.assert_array_equal(inst4[i], inst1[i])
        elif not held4[i]:  # never held: the first draw stays
            np.testing.assert_array_equal(inst4[i], inst1[i])
    inst4b, _ = fresh.generate_masks("neutrophil", n, max_tries=4, batch_size=3, **OPTS)
    np.testing.assert_array_equal(inst4b, inst4)
    # draw 1 of a sample is its own: alone or in a batch the same, and not draw 0
    both = fresh.sample_mask_representations(presence[:2], indices=[0, 1], attempt=1, **OPTS)
    alone = fresh.sample_mask_representations(presence[1:2], indices=[1], attempt=1, **OPTS)
    first = fresh.sample_mask_representations(presence[1:2], indices=[1], **OPTS)
    torch.testing.assert_close(both[1:], alone)
    assert not torch.allclose(alone, first)


def test_synthesize_takes_records_and_reports_mask_tries(runs, real_store, tmp_path):
    outs = {}
    for tries in (1, 4):
        out = tmp_path / f"t{tries}.h5"
        res = CliRunner().invoke(cli, _args(runs, out, "--types", "neutrophil", "--num", "8", "--seed", "3",
                                            "--mask-tries", str(tries)))
        assert res.exit_code == 0, res.output
        result = _result(res.output)
        bank = PatchStore(out)
        types = bank.read(np.arange(len(bank)), keys=("type",))["type"]
        off = sum(not types_as_requested(t, np.eye(6)[0]) for t in types)
        assert result["masks_off_request"] == off == bank.attrs["provenance"]["masks_off_request"]
        assert bank.config["mask_tries"] == tries == bank.attrs["provenance"]["mask_tries"]
        outs[tries] = off
    assert outs[4] < outs[1]
    # the same command with another --mask-tries is another bank
    again = CliRunner().invoke(cli, _args(runs, tmp_path / "t4.h5", "--types", "neutrophil", "--num", "8",
                                          "--seed", "3", "--mask-tries", "2", "--resume"))
    assert again.exit_code != 0 and "mask_tries" in str(again.exception)
    # real masks draw no mask: the option does not apply, and is neither recorded nor reported
    real = tmp_path / "real.h5"
    res = CliRunner().invoke(cli, _args(runs, real, "--masks", str(real_store), "--split", "R2", "--mask-tries", "5"))
    assert res.exit_code == 0, res.output
    assert "masks_off_request" not in _result(res.output)
    assert PatchStore(real).config["mask_tries"] == 1
    bad = CliRunner().invoke(cli, _args(runs, tmp_path / "bad.h5", "--types", "all", "--num", "1", "--mask-tries", "0"))
    assert bad.exit_code == 2 and "--mask-tries" in bad.output and not (tmp_path / "bad.h5").exists()


def test_a_config_with_bad_mask_tries_is_refused_and_old_records_read_as_one_draw(tmp_path):
    from nasdm_aug.synthesize.records import _as_current
    from nasdm_aug.utils import InputError

    for bad in (0, 1.5, True, "3"):
        with pytest.raises(ValueError, match="mask_tries must be an integer >= 1"):
            SynthesizeConfig(types="all", num=1, mask_tries=bad)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"types": "all", "num": 1, "mask_tries": 0}))
    with pytest.raises(InputError, match="mask_tries must be an integer >= 1, got 0"):
        SynthesizeConfig.from_options(path)
    recorded = json.loads(SynthesizeConfig(types="all", num=2, mask_tries=3).to_json())
    del recorded["mask_tries"]  # a bank made before redraws existed drew each mask once
    assert _as_current(recorded)["mask_tries"] == 1



def test_masks_off_request_counts_each_mask_against_its_own_request(runs, tmp_path):
    # two combinations across chunks of 3: each mask must be held to its own row of the plan
    out = tmp_path / "combos.h5"
    res = CliRunner().invoke(cli, _args(runs, out, "--combination", "neutrophil:4", "--combination", "epithelial:4",
                                        "--seed", "3"))
    assert res.exit_code == 0, res.output
    bank = PatchStore(out)
    types = bank.read(np.arange(len(bank)), keys=("type",))["type"]
    asked = np.repeat(np.eye(6)[[0, 1]], 4, axis=0)
    off = [not types_as_requested(t, p) for t, p in zip(types, asked)]
    assert sum(off[:4]) != sum(off[4:])  # a count against one request for all would differ
    assert _result(res.output)["masks_off_request"] == sum(off)
