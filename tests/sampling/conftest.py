"""Run these tiny-tensor tests single-threaded: on a shared 2-core machine, intra-op threads
only add synchronisation (a 250-step sampler test took 10 s with 2 threads, 0.8 s with 1)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
