"""Fixtures of the mixing tests: a tiny real store and its synthetic bank (see mix_stores.py)."""

import pytest
from mix_stores import BANK_PARENTS, write_bank, write_real


@pytest.fixture(scope="session")
def stores(tmp_path_factory):
    """(real path, bank path) for the tiny real store and its synthetic bank."""
    d = tmp_path_factory.mktemp("mix")
    return write_real(d / "real.h5"), write_bank(d / "bank.h5", BANK_PARENTS)
