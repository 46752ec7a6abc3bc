import numpy as np
import pytest
import torch
from mix_stores import make_image, make_mask
from monai.data import MetaTensor
from monai.transforms import Compose, RandFlipd

from nasdm_aug.sampling import SamplerOptions
from nasdm_aug.data.store import PatchStore
from nasdm_aug.mixing import RandSyntheticSwap, RandSyntheticSwapd, SyntheticMixDataset


def _real_items(stores, n=24):
    real, _ = stores
    ds = SyntheticMixDataset(real, mode="real")
    return [ds[k] for k in range(n)]


def _bank_image(bank, parent):
    """The fixture bank holds one patch per parent 0..27 at bank index == parent."""
    return PatchStore(bank)[parent]["image"].transpose(2, 0, 1).astype(np.float32) / 255.0


def test_dict_equals_array_under_the_same_seed(stores):
    _, bank = stores
    items = _real_items(stores)
    array = RandSyntheticSwap(bank, prob=0.5).set_random_state(11)
    twin = RandSyntheticSwapd(["image"], bank, prob=0.5).set_random_state(11)
    swapped = 0
    for item in items:
        a = array(item["image"], item["index"])
        d = twin(item)
        np.testing.assert_array_equal(a, d["image"])
        swapped += d["swapped"]
        assert d["swapped"] == (not np.array_equal(a, item["image"]))
    assert 4 < swapped < 20  # prob 0.5 over 24 samples really mixed both outcomes


def test_swap_takes_the_synthetic_patch_of_the_same_mask(stores):
    _, bank = stores
    item = _real_items(stores)[5]
    out = RandSyntheticSwapd("image", bank, prob=1.0)(item)
    np.testing.assert_array_equal(out["image"], _bank_image(bank, 5))
    np.testing.assert_array_equal(out["inst"], item["inst"])  # the labels stay
    assert out["image"].dtype == np.float32 and out["swapped"] is True
    assert RandSyntheticSwapd("image", bank, prob=0.0)(item)["swapped"] is False
    as_tensor = RandSyntheticSwap(bank, prob=1.0)(torch.as_tensor(item["image"]), 5)
    assert isinstance(as_tensor, torch.Tensor) and torch.equal(as_tensor, torch.as_tensor(_bank_image(bank, 5)))


def test_synthetic_samples_and_missing_parents_are_left_alone(stores, tmp_path):
    real, bank = stores
    ds = SyntheticMixDataset(real, bank, mode="synthetic")
    t = RandSyntheticSwapd("image", bank, prob=1.0)
    assert t(ds[0])["swapped"] is False
    from mix_stores import write_bank

    few = write_bank(tmp_path / "few.h5", [0, 1])
    item = _real_items(stores)[7]
    assert RandSyntheticSwapd("image", few, prob=1.0)(item)["swapped"] is False
    with pytest.raises(KeyError, match="no synthetic patch for real patch 7 in bank .*few.h5"):
        RandSyntheticSwapd("image", few, prob=1.0, on_missing="error")(item)


def test_seeded_determinism(stores):
    _, bank = stores
    items = _real_items(stores)

    def run(seed):
        t = RandSyntheticSwapd("image", bank, prob=0.5).set_random_state(seed)
        return [t(i)["swapped"] for i in items]

    assert run(3) == run(3) and run(3) != run(4)


def test_refuses_to_run_after_a_spatial_transform(stores):
    _, bank = stores
    item = _real_items(stores)[2]
    item["image"] = MetaTensor(torch.as_tensor(item["image"]))
    flipped = RandFlipd("image", prob=1.0, spatial_axis=0)(item)
    with pytest.raises(ValueError, match="must run before spatial transforms"):
        RandSyntheticSwapd("image", bank, prob=1.0)(flipped)


class FakeGenerator:
    """Stands in for NASDMGenerator.generate_patches: paints nuclei in channel 2."""

    def __init__(self, layout="uint8"):
        self.calls, self.kwargs, self.layout = 0, [], layout

    def generate_patches(self, inst, type_map, **kwargs):
        self.calls += 1
        self.kwargs.append(kwargs)
        assert inst.shape == type_map.shape and inst.ndim == 3 and inst.dtype == np.int32
        if self.layout == "float":  # the model layout [n, 3, H, W] in [-1, 1]
            out = -torch.ones(inst.shape[0], 3, *inst.shape[1:])
            out[:, 2][torch.as_tensor(inst) > 0] = 1.0
            return out
        out = np.zeros((*inst.shape, 3), np.uint8)
        out[..., 2][inst > 0] = 255
        return out


def test_generator_with_lru_cache(stores):
    items = _real_items(stores)
    gen = FakeGenerator()
    t = RandSyntheticSwapd("image", generator=gen, prob=1.0, cache_size=2, generator_kwargs={"sampling": SamplerOptions(steps=7)})
    out = t(items[3])
    want = make_image(make_mask(3)[0], 2, 0).transpose(2, 0, 1) > 0.5 * 255
    np.testing.assert_array_equal(out["image"] > 0.5, want)
    t(items[3])
    assert gen.calls == 1  # served from the cache
    t(items[4]), t(items[5]), t(items[3])
    assert gen.calls == 4  # 3 was evicted by 4 and 5 (cache of 2)
    assert [k["sample_offset"] for k in gen.kwargs] == [3, 4, 5, 3] and gen.kwargs[0]["sampling"].steps == 7
    array = RandSyntheticSwap(generator=FakeGenerator("float"), prob=1.0)
    np.testing.assert_array_equal(array(items[3]["image"], 3, items[3]["inst"], items[3]["type"]), out["image"])


def test_bank_first_then_generator(stores, tmp_path):
    from mix_stores import write_bank

    few = write_bank(tmp_path / "few.h5", [0, 1])
    gen = FakeGenerator()
    t = RandSyntheticSwapd("image", few, prob=1.0, generator=gen)
    items = _real_items(stores, 3)
    outs = [t(i)["image"] for i in items]
    assert gen.calls == 1  # only patch 2 lacks a bank counterpart
    np.testing.assert_array_equal(outs[1], _bank_image(few, 1))


def test_inside_a_dataset_chain(stores):
    real, bank = stores
    chain = Compose([RandSyntheticSwapd("image", bank, prob=0.5),
                     RandFlipd(["image", "inst", "type"], prob=0.5, spatial_axis=1)])
    ds = SyntheticMixDataset(real, bank, mode="add", ratio=0.5, transform=chain)
    ds.transform.set_random_state(5)
    n_swapped = 0
    for k in range(len(ds)):
        item = ds[k]
        nuclei = torch.as_tensor(item["inst"])[0] > 0
        assert torch.equal(torch.as_tensor(item["image"])[:2].max(0).values > 0.8, nuclei)
        n_swapped += bool(item["swapped"])
        assert not (item["swapped"] and item["origin"] == "synthetic")
    assert n_swapped > 0


@pytest.mark.parametrize("kw,message", [
    (dict(), "needs a synthetic bank or a generator"),
    (dict(generator=FakeGenerator(), on_missing="skip"), "on_missing must be one of"),
    (dict(generator=FakeGenerator(), cache_size=-1), "cache_size must be >= 0"),
])
def test_bad_arguments(kw, message):
    with pytest.raises(ValueError, match=message):
        RandSyntheticSwap(**kw)
