"""benchmarks/ablate_patch_model.py: its variants are valid configs of the consep-cpu recipe and its
pixel statistics have the values their definitions give."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import ablate_patch_model as ab  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from nasdm_aug.data.store_writer import PatchStoreWriter
    from nasdm_aug.types import CONSEP

    path = tmp_path_factory.mktemp("ab") / "s.h5"
    with PatchStoreWriter(path, patch_size=64, type_table=CONSEP) as w:
        w.append(np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.int32), np.zeros((64, 64), np.uint8),
                 source="a", y=0, x=0, split="Train")
        w.set_splits({"Train": ["a"]})
    return str(path)


@pytest.mark.parametrize("name", sorted(ab.VARIANTS))
def test_every_variant_is_the_recipe_with_its_overrides(store, name):
    cfg = ab.variant_config(store, ab.VARIANTS[name], 400)
    assert (cfg.kind, cfg.steps, cfg.lr_drop_step, cfg.keep_every, cfg.ckpt_every) == ("patch", 400, 360, 100, 100)
    for key, value in ab.VARIANTS[name].items():
        head, _, field = key.partition(".")
        assert getattr(getattr(cfg, head), field) == value if field else getattr(cfg, key) == value
    base = ab.variant_config(store, {}, 400)
    assert cfg.batch_size == base.batch_size and cfg.model.n_types == 4 and cfg.model.image_size == 64


def test_pixel_stats_known_answers():
    inst = np.zeros((1, 32, 32), np.int32)
    inst[0, 10:14, 10:14] = 1
    img = np.full((1, 32, 32, 3), 200, np.uint8)
    img[0, 10:14, 10:14] = 80
    flat = ab.pixel_stats(img, inst)
    assert flat["stroma_speckle"] == pytest.approx(0.0, abs=1e-9)  # uniform stroma: no local variance
    assert flat["nuclei_contrast"] == pytest.approx(120.0)
    noisy = img.copy()
    noisy[0, ::2, :, :] = 190  # stripes 10 grey levels apart, far from the nucleus too
    noisy[0, ::2, :, :][inst[0, ::2] > 0] = 80
    s = ab.pixel_stats(noisy, inst)["stroma_speckle"]
    # a 3x3 window over alternating rows holds 3 of one level and 6 of the other, or the reverse:
    # variance 100 * (1/3)(2/3) = 22.2 everywhere away from the image border
    assert 20.0 < s < 23.0
