"""The README's pipeline section, run in order as printed on real CoNSeP.

Each ``nasdm-aug`` line of the README's first ``bash`` block under "The pipeline on the command
line" runs in a fresh folder, with only size options appended so the whole pipeline fits the test
suite (click keeps the last value of a repeated option): a few images, a wider stride, two training
steps, one sampling step, one HoVerNet epoch. The dataset path is the README's, resolved next to
the checkout; the test skips where that data is absent.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_DATA = "../shared/data/consep/Train"
DATA = (REPO / README_DATA).resolve()

# appended per command; everything else is the README's text
SIZE_OPTIONS = {
    "prepare": ["--limit", "5", "--stride", "64"],
    "train": ["--steps", "2", "--no-progress"],
    "synthesize": ["--steps", "1"],
    "benchmark": ["--runs", "1", "--epochs", "0,1"],
    "evaluate": ["--max-patches", "8"],
    "hovernet train": ["--epochs", "1"],
    "hovernet evaluate": [],
    "export": ["--quiet"],
}


def readme_pipeline() -> list[list[str]]:
    """The ``nasdm-aug`` commands of the README's pipeline block, as argument lists."""
    text = (REPO / "README.md").read_text()
    section = text.split("## The pipeline on the command line", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = []
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("nasdm-aug "):
            commands.append(shlex.split(line)[1:])
    return commands


def _size_options(args: list[str]) -> list[str]:
    key = " ".join(args[:2]) if args[0] == "hovernet" else args[0]
    return SIZE_OPTIONS[key]


def test_readme_pipeline_lists_every_step():
    names = [" ".join(a[:2]) if a[0] == "hovernet" else a[0] for a in readme_pipeline()]
    assert names == ["prepare", "train", "train", "synthesize", "synthesize", "synthesize", "benchmark", "evaluate",
                     "hovernet train", "hovernet evaluate", "export", "export"]


@pytest.mark.skipif(not (DATA / "Images").is_dir(), reason=f"real CoNSeP not found at {DATA} (README's {README_DATA})")
@pytest.mark.timeout(1500)
def test_readme_pipeline_runs_as_printed_on_real_consep(tmp_path):
    for args in readme_pipeline():
        args = [str(DATA) if a == README_DATA else a for a in args] + _size_options(args)
        res = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=tmp_path, capture_output=True, text=True,
                             env={**__import__("os").environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"})
        assert res.returncode == 0, f"nasdm-aug {' '.join(args)} failed:\n{res.stderr[-3000:]}"
    for out in ("consep.h5", "runs/mask", "runs/patch", "s2.h5", "s1.h5", "bank.h5", "bank.h5.preview.png",
                "study/tables.md", "eval", "hv", "hv-eval", "export/hovernet/type_info.json",
                "export/pannuke/fold0/cell_count.csv"):
        assert (tmp_path / out).exists(), out
    from nasdm_aug.data.store import PatchStore

    store, s2 = PatchStore(tmp_path / "consep.h5"), PatchStore(tmp_path / "s2.h5")
    assert store.magnification == 20.0 and store.patch_size == 64
    assert len(s2) == len(store.indices("R2")) and s2.magnification == 20.0
    tables = (tmp_path / "study" / "tables.md").read_text()
    for table in ("Table 3", "Table 4", "Table 5"):  # addition, replacement, real against synthetic
        assert table in tables
