"""Mixing mode "balance": exact greedy choices on a hand-made store with known counts."""

import numpy as np
import pytest

from nasdm_aug.data.store import PatchStore
from nasdm_aug.data.store_writer import PatchStoreWriter
from nasdm_aug.mixing import SyntheticMixDataset, plan_balance_synthesis, resolve_target, type_counts
from nasdm_aug.mixing.plan import MixConfig, planned_counts
from nasdm_aug.types import NucleiTypeTable
from nasdm_aug.utils import InputError

P = 16
ABC = NucleiTypeTable("abc", ("a", "b", "c"), ((255, 0, 0), (0, 255, 0), (0, 0, 255)))
SPLITS = {"Train": ["r0", "r1"], "Test": ["t0"]}


def _patch(types, ids=None):
    """inst/type maps with one 2x2 nucleus per entry of ``types`` (type ids), instance ids ``ids``."""
    inst, typ = np.zeros((P, P), np.int32), np.zeros((P, P), np.uint8)
    for j, t in enumerate(types):
        y, x = 4 * (j // 4), 4 * (j % 4)
        inst[y:y + 2, x:x + 2] = (ids or range(1, 99))[j]
        typ[y:y + 2, x:x + 2] = t
    return inst, typ


def _write(path, patches, origin, parents=None, sources=None):
    with PatchStoreWriter(path, patch_size=P, type_table=ABC, origin=origin) as w:
        for i, types in enumerate(patches):
            inst, typ = _patch(types)
            w.append(np.zeros((P, P, 3), np.uint8), inst, typ, source=sources[i] if sources else "bank",
                     parent=-1 if parents is None else parents[i])
        if origin == "real":
            w.set_splits(SPLITS)
    return path


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    # Train: 4 patches of 2 "a" nuclei each (a 8, b 0, c 0); Test: 1 patch (index 4)
    return _write(tmp_path_factory.mktemp("bal") / "real.h5", [[1, 1]] * 4 + [[2, 3]], "real",
                  sources=["r0", "r0", "r1", "r1", "t0"])


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    # 0: b, 1: c, 2: bb, 3: cc, 4: ab, 5: empty, 6: bb made from the Test mask (never eligible)
    patches = [[2], [3], [2, 2], [3, 3], [1, 2], [], [2, 2]]
    return _write(tmp_path_factory.mktemp("bal") / "bank.h5", patches, "synthetic", parents=[-1, -1, -1, 0, -1, -1, 4])


def test_type_counts_are_vectorised_and_exact(tmp_path):
    inst, typ = _patch([1, 2, 2, 3, 0], ids=[5, 9, 2, 7, 3])  # arbitrary ids; a type-0 nucleus is not counted
    with PatchStoreWriter(tmp_path / "s.h5", patch_size=P, type_table=ABC) as w:
        w.append(np.zeros((P, P, 3), np.uint8), inst, typ)
        w.append(np.zeros((P, P, 3), np.uint8), *_patch([]))
        w.append(np.zeros((P, P, 3), np.uint8), *_patch([3, 3, 3]))
    counts = type_counts(PatchStore(tmp_path / "s.h5"), [2, 0, 1], batch_size=2)
    np.testing.assert_array_equal(counts, [[0, 0, 3], [1, 2, 1], [0, 0, 0]])


def test_targets_closed_form():
    np.testing.assert_allclose(resolve_target("sqrt", ABC, np.array([9, 4, 1])), [3 / 6, 2 / 6, 1 / 6])
    np.testing.assert_allclose(resolve_target("uniform", ABC, np.zeros(3)), [1 / 3] * 3)
    np.testing.assert_allclose(resolve_target({"c": 3, "a": 1}, ABC, np.zeros(3)), [0.25, 0, 0.75])
    np.testing.assert_allclose(resolve_target((1, 1, 2), ABC, np.zeros(3)), [0.25, 0.25, 0.5])


@pytest.mark.parametrize("ratio, chosen, after", [(1.0, [0, 1, 2, 3], [8, 3, 3]), (0.5, [2, 3], [8, 2, 2])])
def test_uniform_plan_exact_counts_and_cap(real, bank, ratio, chosen, after):
    # by hand: from (8, 0, 0) the L1 greedy takes bb and cc (0.933, then 0.667), then b and c (0.564, 0.476);
    # "ab" never helps, the empty patch changes nothing, and bank 6 carries a Test mask
    for seed in range(3):
        ds = SyntheticMixDataset(real, bank, mode="balance", target="uniform", ratio=ratio, seed=seed)
        plan = ds.plan()
        np.testing.assert_array_equal(plan.indices("real"), [0, 1, 2, 3])
        np.testing.assert_array_equal(plan.indices("synthetic"), chosen)
        assert plan.counts()["synthetic"] <= ratio * 4
        n_real, cap = planned_counts(MixConfig(mode="balance", split="Train", ratio=ratio), 4)
        assert plan.counts()["real"] == n_real and plan.counts()["synthetic"] <= cap == int(ratio * 4)
        assert plan.stats["nuclei before"] == {"a": 8, "b": 0, "c": 0}
        assert plan.stats["nuclei after"] == dict(zip("abc", after))
        np.testing.assert_array_equal(plan.mask[4:], [-1, -1, -1, 0][:len(chosen)] if ratio == 1 else [-1, 0])
    text = ds.summary()
    assert f"nuclei after: a 8, b {after[1]}, c {after[2]}" in text and "L1 to target: 1.3333 -> " in text


def test_seeded_tie_breaking_and_determinism(real, tmp_path):
    # two identical "bb" patches and room for one: the seeded permutation decides which
    twins = _write(tmp_path / "twins.h5", [[2, 2], [2, 2]], "synthetic")
    picks = {}
    for seed in range(8):
        plan = SyntheticMixDataset(real, twins, mode="balance", target={"a": 1, "b": 1}, ratio=0.25,
                                   seed=seed).plan()
        again = SyntheticMixDataset(real, twins, mode="balance", target={"a": 1, "b": 1}, ratio=0.25,
                                    seed=seed).plan()
        np.testing.assert_array_equal(plan.index, again.index)
        picks[seed] = int(plan.indices("synthetic")[0])
    assert set(picks.values()) == {0, 1}


def test_bad_input(real, bank, tmp_path):
    with pytest.raises(InputError, match=r"names type 'macrophage', which the type table 'abc' of .*bank.h5 lacks"):
        SyntheticMixDataset(real, bank, mode="balance", target={"macrophage": 1.0})
    only_b = _write(tmp_path / "only_b.h5", [[2], [2, 2]], "synthetic")
    with pytest.raises(InputError, match=r"only_b.h5 has no patch holding type 'c', which the target needs"):
        SyntheticMixDataset(real, only_b, mode="balance", target="uniform")
    for ratio in (0.0, 1.5):
        with pytest.raises(InputError, match=rf"ratio {ratio:g} is outside \(0, 1\] for mode 'balance'"):
            MixConfig(mode="balance", ratio=ratio)
    with pytest.raises(InputError, match="unknown balance target 'flat'; valid: uniform, sqrt"):
        MixConfig(mode="balance", target="flat")
    with pytest.raises(InputError, match="mode 'balance' with ratio 0.5 needs a synthetic bank"):
        SyntheticMixDataset(real, None, mode="balance")


def test_config_round_trip_keeps_weights():
    cfg = MixConfig(mode="balance", target=(1.0, 2.0, 3.0))
    assert MixConfig.from_dict(cfg.to_dict()) == cfg
    assert MixConfig.from_dict(MixConfig(mode="balance", target={"a": 2.0}).to_dict()).target == {"a": 2.0}


def test_synthesis_plan_moves_toward_target(real):
    # a 8 in 4 patches; b and c absent (estimated at the overall 2 nuclei per type-holding patch)
    # b+c patches (2 + 2 expected nuclei) beat single types; 4 of them reach uniform exactly
    plan = plan_balance_synthesis(PatchStore(real), "Train", "uniform", 1.0)
    assert plan.combinations == ("b+c:4",) and plan.n_patches == 4
    assert plan.record["nuclei_expected_after"] == {"a": 8, "b": 8, "c": 8}
    assert plan.record["l1_expected_after"] == pytest.approx(0.0, abs=1e-12)
    capped = plan_balance_synthesis(PatchStore(real), "Train", "uniform", 0.5)
    assert capped.combinations == ("b+c:2",) and capped.record["l1_expected_after"] < capped.record["l1_before"]
    # a target already met by the split: nothing to make
    with pytest.raises(InputError, match="already as close to the target"):
        plan_balance_synthesis(PatchStore(real), "Train", {"a": 1.0}, 1.0)
    with pytest.raises(InputError, match=r"ratio 2 is outside \(0, 1\]"):
        plan_balance_synthesis(PatchStore(real), "Train", "uniform", 2.0)


def test_synthesis_plan_requests_presence_vectors_the_split_shows(tmp_path):
    # the mask model draws what real patches of a presence vector hold, so "c" alone (1 nucleus,
    # 5 patches) and "a+c" (6 a and 2 c, 5 patches) are expected at their own means, not at c's
    # mean over every patch that holds it (1.5); "b" alone is seen twice, under min_support, and
    # b appears in no other vector, so it falls back to its per-type mean (2)
    patches = [[3]] * 5 + [[1] * 6 + [3, 3]] * 5 + [[2], [2, 2, 2]] + [[1]]
    store = PatchStore(_write(tmp_path / "r.h5", patches, "real", sources=["r0"] * 6 + ["r1"] * 6 + ["t0"]))
    plan = plan_balance_synthesis(store, "Train", "uniform", 1.0, min_support=5)
    allowed = {"c": {"a": 0.0, "b": 0.0, "c": 1.0}, "a+c": {"a": 6.0, "b": 0.0, "c": 2.0},
               "b": {"a": 0.0, "b": 2.0, "c": 0.0}}
    assert plan.record["expected_nuclei"] == {k: allowed[k] for k in plan.record["counts"]}
    assert set(plan.record["counts"]) == {"b", "c"}  # adding a+c moves a further from 1/3
    expected = np.array([30, 4, 15], float)
    for name, n in plan.record["counts"].items():
        expected += n * np.array(list(allowed[name].values()))
    assert plan.record["nuclei_expected_after"] == dict(zip("abc", np.round(expected).astype(int).tolist()))
    # a lower support makes "b" alone an observed vector with the same mean; a higher one leaves
    # c only to the fallback, at its per-type mean
    assert plan_balance_synthesis(store, "Train", "uniform", 1.0, min_support=2).record["expected_nuclei"]["b"]["b"] == 2.0
    high = plan_balance_synthesis(store, "Train", "uniform", 1.0, min_support=6)
    assert all(e["c"] in (0.0, 1.5) for e in high.record["expected_nuclei"].values())
    assert "a+c" not in high.record["counts"]
