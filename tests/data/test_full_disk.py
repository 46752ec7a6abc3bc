"""A full disk mid-write: one line naming the file and the reason, no partial file, an earlier
complete output kept, and no crash (h5py used to segfault while flushing on exit)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from nasdm_aug.data.store import PatchStore
from nasdm_aug.data.store_writer import PatchStoreWriter
from nasdm_aug.types import LIZARD
from nasdm_aug.utils import InputError


def _write(path, n, **kw):
    rng = np.random.default_rng(0)
    with PatchStoreWriter(path, patch_size=32, type_table=LIZARD, **kw) as w:
        for i in range(n):
            w.append(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), np.zeros((32, 32), np.int32),
                     np.zeros((32, 32), np.uint8), source=f"img{i}")


def test_injected_enospc_removes_the_partial_and_keeps_the_old_store(tmp_path, monkeypatch):
    path = tmp_path / "s.h5"
    _write(path, 2)
    real_setitem, calls = h5py.Dataset.__setitem__, {"n": 0}

    def failing(self, key, value):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(errno.ENOSPC, "Driver write request failed")
        return real_setitem(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", failing)
    with pytest.raises(InputError) as info:
        _write(path, 4, overwrite=True)
    assert str(info.value) == f"{path}: writing failed (No space left on device); the partial file was removed " \
                              "and the earlier s.h5 kept"
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"] and len(PatchStore(path)) == 2


def _tmpfs(where: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    where.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def test_prepare_on_a_real_full_tmpfs(tmp_path):
    disk = tmp_path / "disk"
    if not _tmpfs(disk):
        pytest.skip("mounting a 2 MB tmpfs needs root and mount (the injected-error test covers the logic)")
    try:
        res = subprocess.run([sys.executable, "-m", "cli.main", "prepare", "--format", "toy", str(disk / "x.h5"),
                              "--images", "8", "--size", "256", "--patch-size", "64", "--stride", "32", "--quiet"],
                             capture_output=True, text=True, timeout=600)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2, res.stderr[-2000:]
        assert "Traceback" not in res.stderr and len([ln for ln in lines if ln.startswith("Error:")]) == 1
        assert lines[-1] == f"Error: {disk / 'x.h5'}: writing failed (No space left on device); the partial file was removed"
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
