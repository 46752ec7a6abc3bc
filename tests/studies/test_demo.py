"""The demo preset end to end: toy tissue, the embedded toy models, S1/S2, the three studies."""

import json
import math
from pathlib import Path

from html_check import check_in_browser, check_self_contained, find_browser

from nasdm_aug.data.store import PatchStore
from nasdm_aug.demo import DEMO_NOTICE, run_demo
from nasdm_aug.studies import PAPER_STUDIES, STUDIES
from nasdm_aug.studies.config import STUDY_PRESETS


def test_demo_preset_end_to_end(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    # two runs per row (as `make demo`), so each row's std is a real spread; 1 + 1 HoVerNet epochs
    # a run keep the whole as short as one run of the preset's 1 + 3
    monkeypatch.setitem(STUDY_PRESETS, "demo", STUDY_PRESETS["demo"].replace(epochs=(1, 1)))
    report = run_demo(out, runs=2, progress=False)
    check_demo_outputs(out, report, n_runs=2)


def check_demo_outputs(out: Path, report: Path, n_runs: int) -> None:
    """What a finished demo in ``out`` must hold (kept apart so it can be checked on a kept folder)."""
    text = report.read_text()
    assert DEMO_NOTICE in text and "Table 3" in text and "Table 4" in text and "Table 5" in text
    summary = json.loads((out / "results.json").read_text())
    rows = [r for name in PAPER_STUDIES for r in STUDIES[name]]
    assert [e["row"] for e in summary["table"]] == [r.label for r in rows]
    lines = text.splitlines()
    spread = []
    for row, entry in zip(rows, summary["table"]):
        # each run's own result.json, as the study wrote it, and the same in results.json
        runs = [json.loads((out / "runs" / row.study / row.slug / f"seed{s}" / "result.json").read_text())
                for s in range(n_runs)]
        assert [r for r in summary["runs"] if (r["study"], r["row"]) == (row.study, row.label)] == runs
        assert entry["runs"] == n_runs
        cells = {}
        for m in ("dice", "miou", "pq", "aji"):
            values = [r["metrics"][m] for r in runs]
            mean = sum(values) / n_runs
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n_runs - 1))  # sample std
            assert abs(entry[m] - mean) < 1e-12, (row.label, m, entry[m], mean)
            assert abs(entry[f"{m}_std"] - std) < 1e-12, (row.label, m, entry[f"{m}_std"], std)
            cells[m] = f"{mean:.4f} ± {std:.4f}"
        spread.append(entry["dice_std"] > 0)
        # the report's table row: Dice, IoU and PQ as mean ± std of these runs, and their number
        found = [ln for ln in lines if ln.startswith(f"| {row.label} | ")]
        assert len(found) == 1, f"report rows of {row.label!r}: {found}"
        line = found[0]
        got = [c.strip() for c in line.strip("|").split("|")]
        assert got[1] == f"{entry['n_patches']} ({entry['n_real']} + {entry['n_synthetic']})"
        assert (got[2], got[3], got[6], got[7]) == (cells["dice"], cells["miou"], cells["pq"], str(n_runs)), line
    assert all(spread), "the seeds of a row trained the same model"
    real, s2 = PatchStore(out / "data" / "real.h5"), PatchStore(out / "banks" / "S2.h5")
    assert len(s2) == len(real.indices("R2")) and s2.attrs["provenance"]["model"] == ["toy"]
    for png in ("banks/S2.h5.preview.png", "study_addition.png", "study_replacement.png",
                "study_real-vs-synthetic.png"):
        assert (out / png).stat().st_size > 0, png
    # report.html: the notice, the three study tables each with its per-type table, the preview sheet
    # and the three plots
    page = check_self_contained((out / "report.html").read_text(), n_tables=6, n_images=4)
    assert [t[1][0] for t in page.tables[::2]] == [STUDIES[name][0].label for name in PAPER_STUDIES]
    assert all(t[0][:2] == ["type", "Test nuclei"] for t in page.tables[1::2])
    assert DEMO_NOTICE.split(".")[0] in (out / "report.html").read_text()
    if find_browser():  # and as a reader sees it
        check_in_browser(out / "report.html", n_tables=6, n_images=4, screenshot=out / "report-screenshot.png")
