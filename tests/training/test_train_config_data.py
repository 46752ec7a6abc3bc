"""TrainConfig validation and presets; the deterministic data stream, the dataset tensors and flips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasdm_aug.data.masks import decode_mask, mask_channels
from nasdm_aug.training.config import DiffusionSettings, TrainConfig, get_train_preset
from nasdm_aug.training.data import NASDMDataset, StepIndexSampler, batch_indices, random_flip
from nasdm_aug.utils import InputError


@pytest.mark.parametrize("kind", ["mask", "patch"])
@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_presets_round_trip_json(kind, name):
    cfg = get_train_preset(kind, name, n_types=4, image_size=64)
    back = TrainConfig.from_dict(cfg.to_dict())
    assert back == cfg
    assert cfg.lr == 1e-4 and cfg.lr_after_drop == 2e-5 and cfg.ema_decay == 0.999
    assert cfg.model.kind == kind and cfg.model.n_types == 4


ILL = [
    dict(batch_size=0),
    dict(lr=0.0),
    dict(ema_decay=1.0),
    dict(grad_clip=-1.0),
    dict(schedule_sampler="nope"),
    dict(adam_betas=(0.9,)),
    dict(layout="nhwc"),
    dict(gap_weight=1.0),  # the gap weight weighs the mask model's loss; this is a patch config
    dict(gap_weight=-1.0),
    dict(gap_sigma=0.0),
    dict(kind="mask"),  # the model config is a patch model
    dict(diffusion=DiffusionSettings(steps=10).replace(steps=10)),  # valid: guards the table itself
]


@pytest.mark.parametrize("change", ILL[:-1])
def test_invalid_configs_raise(change):
    base = get_train_preset("patch", "tiny")
    with pytest.raises(ValueError):
        base.replace(**change)


def test_configs_from_before_layout_read_as_the_layout_they_trained_in():
    from pathlib import Path

    import nasdm_aug

    base = get_train_preset("mask", "tiny").to_dict()
    assert base["layout"] == "auto"
    for old, layout in ((True, "channels_last"), (False, "contiguous")):
        record = {k: v for k, v in base.items() if k != "layout"} | {"channels_last": old}
        assert TrainConfig.from_dict(record).layout == layout
    # the embedded toy models' run records were written with channels_last (false) and bf16 (false)
    assets = Path(nasdm_aug.__file__).parent / "assets"
    for kind in ("mask", "patch"):
        old = TrainConfig.load(assets / "toy" / kind / "config.json")
        assert (old.layout, old.precision) == ("contiguous", "fp32")
        assert (old.gap_weight, old.gap_sigma) == (0.0, 3.0)  # written before the gap weight: the paper's loss


def test_valid_change_is_accepted():
    assert get_train_preset("patch", "tiny").replace(**ILL[-1]).diffusion.steps == 10


@pytest.mark.parametrize("bad", [dict(schedule="cubic"), dict(var_type="learnt"), dict(steps=0), dict(vb_weight=-1.0)])
def test_invalid_diffusion_settings(bad):
    with pytest.raises(ValueError):
        DiffusionSettings(**bad)


def test_lr_schedule_warmup_then_drop():
    cfg = get_train_preset("patch", "tiny").replace(warmup_steps=4, lr_drop_step=10)
    assert [cfg.lr_at(s) for s in range(4)] == pytest.approx([2.5e-5, 5e-5, 7.5e-5, 1e-4])
    assert cfg.lr_at(9) == 1e-4 and cfg.lr_at(10) == 2e-5 and cfg.lr_at(10_000) == 2e-5
    assert get_train_preset("patch", "tiny").replace(lr_drop_step=0).lr_at(10**6) == 1e-4


def test_batch_indices_epochs_are_permutations_and_ranks_disjoint():
    n, b, world = 10, 2, 2
    # 10 items, global batch 4: steps 0..4 cover exactly two epochs (20 positions)
    seen = np.concatenate([batch_indices(s, n, b, seed=3, rank=r, world_size=world) for s in range(5) for r in range(world)])
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert not np.array_equal(seen[:10], seen[10:])  # each epoch reshuffles
    assert np.array_equal(batch_indices(7, n, b, 3, 1, 2), batch_indices(7, n, b, 3, 1, 2))
    assert not np.array_equal(batch_indices(0, n, 5, seed=3), batch_indices(0, n, 5, seed=4))


def test_step_sampler_resumes_midway():
    full = list(StepIndexSampler(7, 3, seed=1, start_step=0, end_step=8))
    tail = list(StepIndexSampler(7, 3, seed=1, start_step=5, end_step=8))
    assert full[5:] == tail and len(full) == 8


def test_patch_dataset_tensors(store_path):
    ds = NASDMDataset(store_path, "patch", "Train")
    assert len(ds) == 4
    item = ds[0]
    assert item["x"].shape == (3, 32, 32) and item["x"].dtype == torch.float32
    image = torch.from_numpy(ds.store.read([int(ds.indices[0])])["image"][0]).permute(2, 0, 1)
    torch.testing.assert_close(item["x"], image.double().div(127.5).sub(1).float(), rtol=0, atol=1e-6)  # 0 -> -1, 255 -> 1
    assert item["cond"].shape == (6, 32, 32)  # background + 4 CoNSeP types + edge
    assert torch.equal(item["cond"][:5].sum(0), torch.ones(32, 32))  # one-hot


def test_mask_dataset_round_trips_instances(store_path):
    ds = NASDMDataset(store_path, "mask", "Train")
    item = ds[1]
    assert item["x"].shape == (mask_channels(4), 32, 32) and item["cond"].shape == (4,)
    inst_real = ds.store.read([int(ds.indices[1])])["inst"][0]
    inst, _ = decode_mask(item["x"], 4)
    assert inst.max() == len(np.unique(inst_real)) - 1


def test_dataset_errors_name_the_problem(store_path):
    with pytest.raises(InputError, match="no split 'R9'"):
        NASDMDataset(store_path, "patch", "R9")
    with pytest.raises(ValueError, match="unknown model kind"):
        NASDMDataset(store_path, "image", "Train")


def test_random_flip_moves_x_and_cond_together():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    batch = {"x": x, "cond": x.clone() * 10}
    out = random_flip(batch, torch.Generator().manual_seed(0))
    assert torch.equal(out["cond"], out["x"] * 10)
    assert not torch.equal(out["x"], x)  # seed 0 flips at least one sample
    vec = {"x": x, "cond": torch.ones(2, 3)}
    assert torch.equal(random_flip(vec, torch.Generator().manual_seed(0))["cond"], vec["cond"])


def test_mask_dataset_gives_the_gap_weight_of_its_own_patch(store_path):
    from nasdm_aug.data.masks import gap_weight_map

    plain = NASDMDataset(store_path, "mask", "Train")
    assert "weight" not in plain[0]
    ds = NASDMDataset(store_path, "mask", "Train", gap_weight=10.0, gap_sigma=2.0)
    for i in range(len(ds)):
        inst = ds.store.read([int(ds.indices[i])])["inst"][0]
        item = ds[i]
        assert item["weight"].shape == (1, 32, 32)
        np.testing.assert_array_equal(item["weight"][0].numpy(), gap_weight_map(inst, 10.0, 2.0))
        torch.testing.assert_close(item["x"], plain[i]["x"])
    assert max(float(ds[i]["weight"].max()) for i in range(len(ds))) > 1.1  # the toy patches hold pairs of nuclei
    with pytest.raises(ValueError, match="mask model"):
        NASDMDataset(store_path, "patch", "Train", gap_weight=1.0)


def test_random_flip_moves_the_pixel_weight_with_x():
    x = torch.arange(3 * 1 * 4 * 4, dtype=torch.float32).view(3, 1, 4, 4)
    batch = {"x": x, "cond": torch.ones(3, 2), "weight": x.clone() + 100}
    out = random_flip(batch, torch.Generator().manual_seed(0))
    assert torch.equal(out["weight"], out["x"] + 100)
    assert not torch.equal(out["x"], x)


def _blob_store(path, blobs_per_patch):
    """A CoNSeP-typed store of 32-px patches, one per image (all in Train): pink tissue, one annotated
    purple nucleus and the given number of unannotated purple 4x4 squares far from it."""
    from skimage.color import hed2rgb

    from nasdm_aug.data.store_writer import PatchStoreWriter
    from nasdm_aug.types import CONSEP

    def colour(h):
        return (hed2rgb(np.array([[[h, 0.05, 0.0]]]))[0, 0] * 255).round().astype(np.uint8)

    names = [f"img{i}" for i in range(len(blobs_per_patch))]
    with PatchStoreWriter(path, patch_size=32, type_table=CONSEP) as w:
        for name, n in zip(names, blobs_per_patch):
            img = np.broadcast_to(colour(0.02), (32, 32, 3)).copy()
            inst = np.zeros((32, 32), np.int32)
            img[2:8, 2:8], inst[2:8, 2:8] = colour(0.08), 1
            for k in range(n):
                img[20:24, 2 + 6 * k:6 + 6 * k] = colour(0.1)  # darker than the median nucleus pixel
            w.append(img, inst, (inst > 0).astype(np.uint8) * 3, source=name)
        w.set_splits({"Train": names})
    return path


def test_dataset_drops_patches_with_unannotated_blobs(tmp_path):
    from nasdm_aug.data.store import PatchStore
    from nasdm_aug.metrics.stain import nucleus_haematoxylin

    path = _blob_store(tmp_path / "b.h5", [0, 3, 1, 2, 0])
    full = NASDMDataset(path, "patch", "Train")
    assert (len(full), full.dropped, full.blob_threshold) == (5, 0, None)  # 0: every patch, nothing measured
    for limit, kept in ((1, [0, 4]), (2, [0, 2, 4]), (3, [0, 2, 3, 4]), (4, [0, 1, 2, 3, 4])):
        ds = NASDMDataset(path, "patch", "Train", drop_unannotated=limit)
        assert ds.indices.tolist() == kept and ds.dropped == 5 - len(kept)
    assert ds.blob_threshold == pytest.approx(nucleus_haematoxylin(PatchStore(path), np.arange(5)))
    # items come from the kept patches only
    ds = NASDMDataset(path, "patch", "Train", drop_unannotated=2)
    torch.testing.assert_close(ds[1]["x"], NASDMDataset(path, "patch", "Train")[2]["x"])
    with pytest.raises(InputError, match="leaves nothing to train on"):
        NASDMDataset(_blob_store(tmp_path / "all.h5", [1, 2]), "patch", "Train", drop_unannotated=1)


def test_configs_from_before_the_data_filter_keep_every_patch():
    base = get_train_preset("patch", "consep-cpu").to_dict()
    record = {k: v for k, v in base.items() if k != "drop_unannotated"}
    assert TrainConfig.from_dict(record).drop_unannotated == 0
    with pytest.raises(ValueError, match="drop_unannotated"):
        TrainConfig.from_dict(base | {"drop_unannotated": -1})
