"""Tiny random-weight NASDM runs (16 px, 50 diffusion steps) and a small real store."""

from __future__ import annotations

import numpy as np
import pytest

from nasdm_aug.data.store_writer import PatchStoreWriter
from nasdm_aug.types import LIZARD
from nasdm_test_runs import SIZE, make_run


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return make_run(root / "mask", "mask", 1), make_run(root / "patch", "patch", 2)


def _disk_mask(rng, size):
    inst = np.zeros((size, size), np.int32)
    type_map = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for k in range(1, int(rng.integers(1, 4)) + 1):
        cy, cx, r = rng.integers(3, size - 3), rng.integers(3, size - 3), rng.integers(2, 4)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        inst[disk] = k
        type_map[disk] = rng.integers(1, 7)
    return inst, type_map


@pytest.fixture(scope="session")
def real_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("real") / "real.h5"
    rng = np.random.default_rng(0)
    with PatchStoreWriter(path, patch_size=SIZE, type_table=LIZARD) as w:
        for i in range(10):
            inst, type_map = _disk_mask(rng, SIZE)
            image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            w.append(image, inst, type_map, source=f"img{i % 5}", y=i, x=0, split="R2" if i % 5 < 2 else "Train")
        w.set_splits({"R2": ["img0", "img1"], "Train": ["img2", "img3", "img4"], "R1": ["img2"]})
    return path


@pytest.fixture()
def sampled(monkeypatch):
    """The (stage, sampler, steps) of every sampling the generator runs, in order: a list to
    clear and read (stage "patch" for 3-channel samples, else "mask")."""
    from nasdm_aug import generator as g

    seen = []
    real_sample = g.sample

    def recording(model_fn, shape, model_kwargs, *, options, **kw):
        seen.append(("patch" if shape[1] == 3 else "mask", options.sampler, options.steps))
        return real_sample(model_fn, shape, model_kwargs, options=options, **kw)

    monkeypatch.setattr(g, "sample", recording)
    return seen
