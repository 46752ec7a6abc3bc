"""The demo preset end to end: toy tissue, the embedded toy models, S1/S2, the three studies."""

import json

from html_check import check_in_browser, check_self_contained, find_browser

from nasdm_aug.data.store import PatchStore
from nasdm_aug.demo import DEMO_NOTICE, run_demo
from nasdm_aug.studies import PAPER_STUDIES, STUDIES


def test_demo_preset_end_to_end(tmp_path):
    out = tmp_path / "demo"
    report = run_demo(out, runs=1, progress=False)  # one run per row keeps CI short; `make demo` runs 2
    text = report.read_text()
    assert DEMO_NOTICE in text and "Table 3" in text and "Table 4" in text and "Table 5" in text
    summary = json.loads((out / "results.json").read_text())
    assert [e["row"] for e in summary["table"]] == [r.label for name in PAPER_STUDIES for r in STUDIES[name]]
    for entry in summary["table"]:  # one run per row: the row's numbers are that run's
        run = next(r for r in summary["runs"] if (r["study"], r["row"]) == (entry["study"], entry["row"]))
        assert entry["runs"] == 1 and entry["dice"] == run["metrics"]["dice"] and entry["dice_std"] == 0.0
    real, s2 = PatchStore(out / "data" / "real.h5"), PatchStore(out / "banks" / "S2.h5")
    assert len(s2) == len(real.indices("R2")) and s2.attrs["provenance"]["model"] == ["toy"]
    for png in ("banks/S2.h5.preview.png", "study_addition.png", "study_replacement.png",
                "study_real-vs-synthetic.png"):
        assert (out / png).stat().st_size > 0, png
    # report.html: the notice, the three study tables, the preview sheet and the three plots
    page = check_self_contained((out / "report.html").read_text(), n_tables=3, n_images=4)
    assert [t[1][0] for t in page.tables] == [STUDIES[name][0].label for name in PAPER_STUDIES]
    assert DEMO_NOTICE.split(".")[0] in (out / "report.html").read_text()
    if find_browser():  # and as a reader sees it
        check_in_browser(out / "report.html", n_tables=3, n_images=4, screenshot=out / "report-screenshot.png")
