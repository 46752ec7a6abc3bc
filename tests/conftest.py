"""Shared test fixtures: tiny sizes, seeded, and the optional real data under ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a loaded 2-core machine spinning threads made
# convolutions ~10x slower; on an idle one this costs nothing measurable.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# the trainers' layout measurements go to a cache of this test session, not the user's ~/.cache
import tempfile  # noqa: E402

os.environ.setdefault("NASDM_AUG_CACHE", tempfile.mkdtemp(prefix="nasdm-aug-cache-"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NASDM_SHARED_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --runslow to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: on a shared 2-core box two OpenMP threads spin-wait, and
    small convolutions run up to 10x slower. Use with ``pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed_global_rng() -> None:
    """Every test starts from the same global torch and numpy RNG state, so an unseeded draw in a
    test cannot make it pass or fail by the order or selection of the tests before it."""
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def consep_dir() -> Path:
    """../shared/data/consep/Train (real CoNSeP data); skipped where it is absent."""
    path = SHARED_DATA / "consep" / "Train"
    if not (path / "Images").is_dir():
        pytest.skip(f"real CoNSeP data not found at {path}")
    return path


@pytest.fixture(scope="session")
def lizard_crops_dir() -> Path:
    """../shared/data/lizard-crops (real Lizard crops, images only); skipped where absent."""
    path = SHARED_DATA / "lizard-crops"
    if not path.is_dir():
        pytest.skip(f"real Lizard crops not found at {path}")
    return path
