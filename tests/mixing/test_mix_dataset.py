import numpy as np
import pytest
import torch
from mix_stores import make_mask, write_bank, write_real
from monai.data import CacheDataset, DataLoader
from monai.transforms import ComputeHoVerMaps, RandFlipd, RandRotate90d

from nasdm_aug.data.store import PatchStore
from nasdm_aug.mixing import MIX_MODES, MixConfig, Mode, SyntheticMixDataset, count_of, planned_counts
from nasdm_aug.types import CONSEP
from nasdm_aug.utils import InputError

TRAIN = np.arange(24)

# (mode, split, kwargs, expected real count, expected synthetic count); Train 24, R1/R2 12, Test 8
COUNT_CASES = [
    ("add", "Train", dict(ratio=0.25), 6, 6),
    ("add", "Train", dict(ratio=0.5), 6, 12),
    ("add", "Train", dict(ratio=0.75), 6, 18),
    ("add", "R2", dict(ratio=0.5), 3, 6),
    ("add", "Train", dict(ratio=0.3), 6, 7),  # 7.2 -> 7
    ("add", "Train", dict(ratio=0.0625, base_fraction=0.1), 2, 2),  # 2.4 -> 2, 1.5 -> 2 (half up)
    ("add", "Train", dict(ratio=0.0), 6, 0),
    ("add", "Train", dict(ratio=0.8, include_generated=True), 6, 19),  # 18 masks + 1 generated
    ("replace", "Train", dict(ratio=0.5), 12, 12),
    ("replace", "Train", dict(ratio=1.0), 0, 24),
    ("replace", "Train", dict(ratio=0.0), 24, 0),
    ("replace", "R1", dict(ratio=0.25), 9, 3),
    ("synthetic", "Train", dict(), 0, 24),
    ("synthetic", "Train", dict(ratio=0.5), 0, 12),
    ("synthetic", "Train", dict(include_generated=True), 0, 26),
    ("synthetic", "Test", dict(), 0, 4),
    ("synthetic", None, dict(), 0, 28),
    ("synthetic", None, dict(include_generated=True), 0, 30),
    ("real", "Train", dict(), 24, 0),
    ("real", "Train", dict(ratio=0.5), 12, 0),
    ("real", "Test", dict(), 8, 0),
    ("real", None, dict(), 32, 0),
]


@pytest.mark.parametrize("mode,split,kw,n_real,n_syn", COUNT_CASES)
def test_exact_counts(stores, mode, split, kw, n_real, n_syn):
    real, bank = stores
    ds = SyntheticMixDataset(real, bank, mode=mode, split=split, **kw)
    assert ds.plan().counts() == {"real": n_real, "synthetic": n_syn}
    assert len(ds) == n_real + n_syn == len(ds.plan().entries())
    origins = [o for o, _ in ds.plan()]
    assert origins.count("synthetic") == n_syn
    # the count rule the studies ask is the planner's own, for every mode
    st, bk = PatchStore(real), PatchStore(bank)
    split_idx = st.indices(split)
    parents = bk.meta("parent")
    eligible = int(np.isin(parents, split_idx).sum() if split is not None else (parents >= 0).sum())
    eligible += int((parents < 0).sum()) if kw.get("include_generated") else 0
    config = MixConfig(mode=mode, split=split, **kw)
    assert planned_counts(config, len(split_idx), eligible) == (n_real, n_syn)


def test_every_mode_has_count_cases_and_takes_its_enum():
    assert {case[0] for case in COUNT_CASES} | {"balance"} == set(MIX_MODES)  # balance: test_balance.py
    for mode in Mode:
        assert MixConfig(mode=mode, split="Train").mode == mode.value == MIX_MODES[mode.value].mode


def test_count_rounds_half_up():
    assert [count_of(0.25, 10), count_of(0.15, 10), count_of(0.125, 20), count_of(0.3, 24)] == [3, 2, 3, 7]


def test_add_count_never_exceeds_the_masks_outside_the_base():
    from nasdm_aug.mixing.plan import add_count

    # 34 patches: base 25% -> 9 (8.5 half up), 75% -> 26 (25.5 half up), but only 25 masks are left
    assert (count_of(0.25, 34), count_of(0.75, 34)) == (9, 26)
    assert add_count(0.25, 0.75, 34) == 25 and add_count(0.25, 0.5, 34) == 17
    assert add_count(0.25, 1.0, 34) == 34  # more than the rest asked for: left to the bank check


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ratio", [0.25, 0.75])
def test_add_never_leaks_a_base_mask(stores, seed, ratio):
    real, bank = stores
    plan = SyntheticMixDataset(real, bank, mode="add", ratio=ratio, seed=seed).plan()
    syn_parents = PatchStore(bank).meta("parent")[plan.indices("synthetic")]
    np.testing.assert_array_equal(plan.indices("real"), plan.base)
    assert set(plan.base) <= set(TRAIN) and set(syn_parents) <= set(TRAIN)
    assert not set(syn_parents) & set(plan.base)
    assert len(set(plan.mask)) == len(plan)  # every item carries a different real mask


def test_replace_keeps_the_masks_in_place(stores):
    real, bank = stores
    ds = SyntheticMixDataset(real, bank, mode="replace", ratio=0.5, seed=3)
    plan = ds.plan()
    np.testing.assert_array_equal(plan.mask, TRAIN)
    parents = PatchStore(bank).meta("parent")
    for pos, (origin, index) in enumerate(plan):
        assert (parents[index] if origin == "synthetic" else index) == pos
        item = ds[pos]
        np.testing.assert_array_equal(item["inst"][0], make_mask(pos)[0])
        assert item["origin"] == origin and item["index"] == index


def test_plan_is_deterministic_per_seed(stores):
    real, bank = stores
    a = SyntheticMixDataset(real, bank, mode="add", seed=7).plan().entries()
    b = SyntheticMixDataset(PatchStore(real), PatchStore(bank), mode="add", seed=7).plan().entries()
    c = SyntheticMixDataset(real, bank, mode="add", seed=8).plan().entries()
    assert a == b and a != c


def test_spread_over_masks_before_repeating(tmp_path):
    real = write_real(tmp_path / "r.h5")
    bank = write_bank(tmp_path / "b.h5", [p for p in range(24) for _ in range(3)])  # 3 per mask
    plan = SyntheticMixDataset(real, bank, mode="synthetic", ratio=1 / 3).plan()
    assert len(plan) == 24 and sorted(plan.mask) == list(range(24))
    picks = SyntheticMixDataset(real, bank, mode="replace", ratio=1.0, seed=1).plan().index
    assert sorted(PatchStore(bank).meta("parent")[picks]) == list(range(24))


def test_items_are_monai_dicts(stores):
    real, bank = stores
    ds = SyntheticMixDataset(real, bank, mode="add", ratio=0.5)
    for k, (origin, index) in enumerate(ds.plan()):
        item = ds[k]
        assert item["image"].shape == (3, 16, 16) and item["image"].dtype == np.float32
        stored = PatchStore(real if origin == "real" else bank)[index]["image"]  # uint8 [H, W, 3]
        np.testing.assert_allclose(item["image"], stored.transpose(2, 0, 1) / 255.0, rtol=0, atol=1e-6)
        assert item["inst"].shape == item["type"].shape == (1, 16, 16)
        assert item["inst"].dtype == np.int32 and item["type"].dtype == np.uint8
        assert (item["origin"], item["index"]) == (origin, index)
        marked = 1 if origin == "synthetic" else 0  # the fixture marks nuclei in this channel
        np.testing.assert_array_equal(item["image"][marked] > 0.8, item["inst"][0] > 0)
        assert item["parent"] == (-1 if origin == "real" else PatchStore(bank).meta("parent")[index])
    assert "6 real + 12 synthetic" in ds.summary() and "base: 6 real" in ds.summary()


def _batches(ds, workers):
    loader = DataLoader(ds, batch_size=5, shuffle=False, num_workers=workers)
    return [(b["origin"], b["index"].tolist(), b["image"].sum().item(), b["inst"].sum().item()) for b in loader]


def test_same_items_with_0_and_2_workers(stores):
    real, bank = stores
    ds = SyntheticMixDataset(real, bank, mode="add", ratio=0.75, hovernet_targets=True)
    ds[0]  # the parent process holds open handles before the fork
    assert _batches(ds, 0) == _batches(ds, 2)


def test_cache_dataset(stores):
    real, bank = stores
    ds = SyntheticMixDataset(real, bank, mode="replace", ratio=0.5)
    cached = ds.as_cache_dataset(cache_rate=1.0)
    wrapped = CacheDataset(ds, progress=False)
    assert len(cached) == len(wrapped) == 24
    for k in (0, 5, 23):
        for other in (cached[k], wrapped[k]):
            np.testing.assert_array_equal(other["image"], ds[k]["image"])
            assert other["origin"] == ds[k]["origin"]


def test_monai_chain_keeps_image_and_labels_aligned(stores):
    real, bank = stores
    keys = ["image", "inst", "type"]
    chain = [RandFlipd(keys, prob=0.5, spatial_axis=0), RandFlipd(keys, prob=0.5, spatial_axis=1),
             RandRotate90d(keys, prob=0.75, max_k=3)]
    plain = SyntheticMixDataset(real, bank, mode="add", ratio=0.75)
    ds = SyntheticMixDataset(real, bank, mode="add", ratio=0.75, transform=chain, hovernet_targets=True)
    ds.transform.set_random_state(0)
    changed = 0
    for k in range(len(ds)):
        item, ref = ds[k], plain[k]
        image = torch.as_tensor(item["image"])
        nuclei = torch.as_tensor(item["inst"])[0] > 0
        assert torch.equal(image[:2].max(0).values > 0.8, nuclei)
        assert torch.equal(torch.as_tensor(item["type"])[0] > 0, nuclei)
        hv = ComputeHoVerMaps()(torch.as_tensor(item["inst"]).long())
        np.testing.assert_allclose(np.asarray(item["hv"]), np.asarray(hv), atol=1e-6)
        np.testing.assert_array_equal(np.asarray(item["np"])[0], nuclei.numpy())
        np.testing.assert_array_equal(np.asarray(item["nc"]), np.asarray(item["type"]) * nuclei.numpy())
        changed += not np.array_equal(np.asarray(item["inst"]), ref["inst"])
    assert changed > len(ds) // 2  # the chain really moved most items


BAD_CASES = [
    (dict(mode="replace", ratio=1.5), r"ratio 1.5 is outside \[0, 1\] for mode 'replace'"),
    (dict(mode="add", ratio=-0.1), r"ratio -0.1 is outside \[0, inf\) for mode 'add'"),
    (dict(mode="synthetic", ratio=0.0), r"ratio 0 is outside \(0, 1\] for mode 'synthetic'"),
    (dict(mode="add", ratio=0.8), r"asks for 19 synthetic patches .* has only 18 whose parents"),
    (dict(mode="add", base_fraction=0.0), r"base_fraction 0 is outside \(0, 1\]"),
    (dict(mode="mix"), r"unknown mixing mode 'mix'; valid: add, replace, synthetic, real"),
    (dict(mode="add", split="Val"), r"no split 'Val'"),
]


@pytest.mark.parametrize("kw,message", BAD_CASES)
def test_bad_arguments(stores, kw, message):
    real, bank = stores
    with pytest.raises(InputError, match=message):
        SyntheticMixDataset(real, bank, **kw)


def test_bad_banks(stores, tmp_path):
    real, _ = stores
    cases = [
        (write_bank(tmp_path / "p8.h5", [0, 1], p=8), r"p8.h5: patch size 8 does not match the real store's 16"),
        (write_bank(tmp_path / "t.h5", [0, 1], table=CONSEP),
         r"t.h5: type table 'consep' \(4 types\) does not match the real store's 'lizard'"),
        (write_bank(tmp_path / "o.h5", [0, 1], origin="real"), r"o.h5: origin is 'real'"),
        (write_bank(tmp_path / "far.h5", [0, 40]), r"far.h5: parent index 40 is outside the real store's 32"),
    ]
    for bank, message in cases:
        with pytest.raises(InputError, match=message):
            SyntheticMixDataset(real, bank, mode="synthetic")
    partial = write_bank(tmp_path / "half.h5", list(range(12)))
    with pytest.raises(InputError, match=r"real patch \d+ \(and \d+ more\) chosen from split 'Train' has no "
                                          r"synthetic counterpart in .*half.h5 \(the bank covers 12 of the split's 24"):
        SyntheticMixDataset(real, partial, mode="replace", ratio=0.5)
    with pytest.raises(InputError, match="mode 'add' with ratio 0.5 needs a synthetic bank"):
        SyntheticMixDataset(real, None, mode="add")


def test_config_round_trips():
    cfg = MixConfig(mode="replace", split="R1", ratio=0.25, seed=4)
    assert MixConfig.from_dict(cfg.to_dict()) == cfg
