"""Per-image splits on small datasets: minimum held-out sizes with fractions, explicit counts that
leave Train empty, and seeded shuffles that put every nucleus type in Test, R2 and R1."""

import numpy as np
import pytest

from cli.main import main
from nasdm_aug.data.splits import SplitSpec, make_splits, split_counts, split_of, split_type_coverage
from nasdm_aug.data.store import PatchStore

SPLITS = ("Test", "R2", "Train", "R1")


def _names(n):
    return [f"img{i:03d}" for i in range(n)]


def _sizes(s):
    return tuple(len(s[k]) for k in SPLITS)


def _check_partition(s, names):
    test, r2, train, r1 = (set(s[k]) for k in SPLITS)
    assert test | r2 | train == set(names)
    assert not (test & r2 or test & train or r2 & train)
    assert r1 <= train


def _old_rule(names, counts, seed):
    """The assignment of the seed's permutation: Test, then R2, then Train (whose first ones are R1)."""
    uniq = sorted(names)
    order = [uniq[i] for i in np.random.default_rng(seed).permutation(len(uniq))]
    t, r2, r1 = counts
    return {"Test": sorted(order[:t]), "R2": sorted(order[t:t + r2]), "Train": sorted(order[t + r2:]),
            "R1": sorted(order[t + r2:t + r2 + r1])}


def _covering(cov, n_types):
    """Splits whose nuclei cover every one of the ``n_types`` types."""
    return {k for k, v in cov.items() if all(c > 0 for c in v[:n_types])}


# -- sizes -----------------------------------------------------------------------------------------
def test_paper_split_is_exact_on_238_images():
    assert split_counts(238) == {"Test": 12, "R2": 36, "Train": 190, "R1": 36}
    s = make_splits(_names(238))
    assert _sizes(s) == (12, 36, 190, 36)
    _check_partition(s, _names(238))


def test_consep_27_images_hold_at_least_three_per_split():
    assert split_counts(27) == {"Test": 3, "R2": 4, "Train": 20, "R1": 4}
    s = make_splits(_names(27), SplitSpec(seed=1))
    assert _sizes(s) == (3, 4, 20, 4)
    _check_partition(s, _names(27))
    # min_images=1 is the plain rounding (one image for each non-zero split)
    assert split_counts(27, SplitSpec(min_images=1)) == {"Test": 1, "R2": 4, "Train": 22, "R1": 4}
    assert split_counts(27, SplitSpec(min_images=5)) == {"Test": 5, "R2": 5, "Train": 17, "R1": 5}


def test_min_images_must_be_positive():
    with pytest.raises(ValueError, match="min_images"):
        SplitSpec(min_images=0)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 8, 9, 12])
def test_tiny_datasets_never_raise_and_keep_train(n):
    c = split_counts(n)
    assert c["Train"] >= 1 and c["R1"] <= c["Train"] and c["Test"] + c["R2"] + c["Train"] == n
    if n >= 2:
        assert c["Test"] >= 1  # a non-zero fraction gets an image as soon as Train keeps one
    if n >= 3:
        assert c["R2"] >= 1 and c["R1"] >= 1
    if n >= 9:  # room for 3 each and 3 in Train
        assert min(c.values()) >= 3
    s = make_splits(_names(n), SplitSpec(seed=n))
    assert _sizes(s) == (c["Test"], c["R2"], c["Train"], c["R1"])
    _check_partition(s, _names(n))


def test_one_image_is_all_train():
    assert split_counts(1) == {"Test": 0, "R2": 0, "Train": 1, "R1": 1}


# -- explicit counts --------------------------------------------------------------------------------
def test_counts_may_put_every_image_in_test():
    names = _names(14)
    assert split_counts(14, SplitSpec(counts=(14, 0, 0))) == {"Test": 14, "R2": 0, "Train": 0, "R1": 0}
    s = make_splits(names, SplitSpec(counts=(14, 0, 0)))
    assert s == {"Test": names, "R2": [], "Train": [], "R1": []}
    assert set(split_of(s).values()) == {"Test"}
    assert split_counts(14, SplitSpec(counts=(10, 4, 0)))["Train"] == 0


def test_counts_all_test_store_from_the_cli(tmp_path, capsys):
    out = tmp_path / "all_test.h5"
    try:
        main(["prepare", "--format", "toy", str(out), "--images", "14", "--size", "64", "--patch-size", "32",
              "--stride", "32", "--split-counts", "14,0,0", "--quiet"])
    except SystemExit as exc:
        assert exc.code in (0, None), capsys.readouterr().err
    store = PatchStore(out)
    assert {k: len(v) for k, v in store.splits.items()} == {"Test": 14, "R2": 0, "Train": 0, "R1": 0}
    assert len(store) > 0 and set(store.meta("split")) == {"Test"}
    assert len(store.indices("Test")) == len(store)


def test_counts_with_r1_but_no_train_are_refused():
    with pytest.raises(ValueError, match=r"R1 1 .*0 Train images"):
        split_counts(2, SplitSpec(counts=(2, 0, 1)))
    with pytest.raises(ValueError, match=r"R1 3 .*2 Train images"):
        split_counts(5, SplitSpec(counts=(2, 1, 3)))
    with pytest.raises(ValueError, match=r"Test 3 \+ R2 3 = 6 .*5 images"):
        split_counts(5, SplitSpec(counts=(3, 3, 0)))
    with pytest.raises(ValueError, match="R1"):
        make_splits(_names(2), SplitSpec(counts=(2, 0, 1)))


# -- the seed's permutation -------------------------------------------------------------------------
@pytest.mark.parametrize("n,seed", [(238, 0), (238, 7), (27, 3), (5, 11)])
def test_without_type_counts_the_seed_permutation_decides(n, seed):
    names = _names(n)
    c = split_counts(n, SplitSpec(seed=seed))
    want = _old_rule(names, (c["Test"], c["R2"], c["R1"]), seed)
    assert make_splits(names, SplitSpec(seed=seed)) == want
    assert make_splits(names[::-1], SplitSpec(seed=seed)) == want
    assert make_splits(names, SplitSpec(counts=(2, 2, 1), seed=seed)) == _old_rule(names, (2, 2, 1), seed)


def test_type_counts_that_already_cover_keep_the_seed_permutation():
    names = _names(27)
    tc = np.ones((27, 4), int)
    assert make_splits(names, SplitSpec(seed=2), type_counts=tc) == make_splits(names, SplitSpec(seed=2))


# -- type coverage ----------------------------------------------------------------------------------
def _rare_in(names, rare, n_types=4, common=5):
    """Every image has ``common`` nuclei of types 0..n_types-2; the last type lives only in ``rare``."""
    tc = np.zeros((len(names), n_types), int)
    tc[:, :-1] = common
    for n in rare:
        tc[names.index(n), -1] = 2
    return tc


def test_rare_type_in_three_images_reaches_test_r2_and_r1():
    names, seed = _names(27), 0
    plain = make_splits(names, SplitSpec(seed=seed))
    rare = plain["Test"][:3]  # the seed's own permutation puts every rare image in Test
    tc = _rare_in(names, rare)
    assert _covering(split_type_coverage(plain, names, tc), 4) == {"Test"}
    s = make_splits(names, SplitSpec(seed=seed), type_counts=tc)
    assert _sizes(s) == (3, 4, 20, 4)
    _check_partition(s, names)
    cov = split_type_coverage(s, names, tc)
    assert {"Test", "R2", "R1"} <= _covering(cov, 4)
    assert all(cov[k][-1] == 2 for k in ("Test", "R2", "R1"))  # one rare image each
    assert make_splits(names[::-1], SplitSpec(seed=seed), type_counts=tc[::-1]) == s  # order free


def test_rare_type_in_one_image_is_impossible_but_deterministic():
    names = _names(27)
    tc = _rare_in(names, ["img004"], n_types=5)
    # type 3 lives in the 3 images the seed's permutation puts in Test: coverable, unlike type 4
    first = make_splits(names, SplitSpec(seed=5))
    tc[:, 3] = 0
    for n in first["Test"]:
        tc[names.index(n), 3] = 1
    assert "img004" not in first["Test"]
    a = make_splits(names, SplitSpec(seed=5), type_counts=tc)
    assert a == make_splits(names, SplitSpec(seed=5), type_counts=tc)
    assert _sizes(a) == (3, 4, 20, 4)
    _check_partition(a, names)
    cov = split_type_coverage(a, names, tc)
    # the best worst split: type 3 in each of Test, R2 and R1; type 4 in at most one of them
    assert all(cov[k][3] > 0 for k in ("Test", "R2", "R1"))
    assert sum(cov[k][4] > 0 for k in ("Test", "R2", "R1")) <= 1
    assert make_splits(names, SplitSpec(seed=6), type_counts=tc) != a  # the seed still matters


def test_type_counts_per_group():
    groups = [f"g{i:02d}" for i in range(27) for _ in range(3)]
    names = [f"{g}-{k}" for g, k in zip(groups, [0, 1, 2] * 27)]
    plain = make_splits(names, SplitSpec(seed=0), groups=groups)
    rare_groups = sorted({n.split("-")[0] for n in plain["Test"]})
    assert len(rare_groups) == 3
    tc = np.ones((len(names), 3), int)
    tc[:, 2] = 0
    for g in rare_groups:  # the rare type sits in one patch of each of 3 groups
        tc[names.index(f"{g}-1"), 2] = 1
    s = make_splits(names, SplitSpec(seed=0), groups=groups, type_counts=tc)
    _check_partition(s, names)
    assert (len(s["Test"]), len(s["R2"]), len(s["R1"])) == (9, 12, 12)
    for split in s.values():  # groups stay together
        assert all(f"{g}-{k}" in split for g in {n.split("-")[0] for n in split} for k in range(3))
    cov = split_type_coverage(s, names, tc)
    assert all(cov[k][2] == 1 for k in ("Test", "R2", "R1"))


def test_type_counts_must_match_names():
    with pytest.raises(ValueError, match="shape"):
        make_splits(_names(5), type_counts=np.ones((4, 3)))
    with pytest.raises(ValueError, match=">= 0"):
        make_splits(_names(5), type_counts=-np.ones((5, 3)))


def test_split_type_coverage_sums_per_split():
    names = ["a", "b", "c"]
    tc = [[1, 0], [2, 3], [0, 4]]
    cov = split_type_coverage({"Test": ["a"], "Train": ["b", "c"], "R1": []}, names, tc)
    assert cov == {"Test": [1, 0], "Train": [2, 7], "R1": [0, 0]}
    with pytest.raises(ValueError, match="not in names"):
        split_type_coverage({"Test": ["z"]}, names, tc)
