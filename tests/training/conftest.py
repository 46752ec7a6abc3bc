"""Fixtures for the trainer tests (helpers live in _trainer_helpers.py, a name no other folder uses)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _trainer_helpers import StandInNet, write_store


@pytest.fixture(scope="session")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 patches (4 in Train, 2 in Test) of CoNSeP's 4 types at 32 px."""
    return write_store(tmp_path_factory.mktemp("store") / "toy.h5")


@pytest.fixture
def stand_in() -> type[StandInNet]:
    return StandInNet


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny tensors: every training test runs on one intra-op thread (tests/conftest.py says why)."""
