"""The real-feature cache of FID is keyed by what changes the features: the device type and, on
CUDA, whether matmuls and convolutions may run in TF32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasdm_aug.metrics.generative import feature_cache_path


@pytest.fixture
def tf32():
    """Sets the two TF32 flags; puts them back after (torch's flag modules refuse monkeypatch's undo)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32

    def set_flags(matmul: bool, cudnn: bool) -> None:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn

    yield set_flags
    set_flags(*before)


def test_the_key_tells_devices_and_tf32_apart_and_is_stable(tmp_path, tf32):
    store = tmp_path / "real.h5"
    store.write_bytes(b"not read")
    idx = np.arange(5)
    cpu = feature_cache_path(store, "Train", idx, "d", device="cpu")
    assert cpu == feature_cache_path(store, "Train", idx, "d", device=torch.device("cpu"))
    tf32(False, False)
    exact = feature_cache_path(store, "Train", idx, "d", device="cuda")
    assert exact == feature_cache_path(store, "Train", idx, "d", device="cuda:1")  # the type, not the index
    assert exact != cpu
    tf32(True, False)
    matmul_tf32 = feature_cache_path(store, "Train", idx, "d", device="cuda")
    tf32(True, True)
    all_tf32 = feature_cache_path(store, "Train", idx, "d", device="cuda")
    assert len({cpu, exact, matmul_tf32, all_tf32}) == 4
    assert cpu == feature_cache_path(store, "Train", idx, "d", device="cpu")  # TF32 does not touch the CPU key
    assert all(p.parent == store.parent and p.name.startswith("real.h5.features-") for p in (cpu, all_tf32))
