"""``nasdm-aug demo``: the whole product on toy tissue in minutes, ending in a markdown report.

Toy tissue -> prepare -> the embedded toy NASDM models (or a short training when they are
absent) -> synthesize S1 / S2 -> the three studies at demo size -> ``report.md`` with PNGs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nasdm_aug.data.store import PatchStore
from nasdm_aug.types import MODEL_KINDS
from nasdm_aug.studies.config import STUDY_PRESETS, StudyConfig
from nasdm_aug.studies.data import ensure_store
from nasdm_aug.studies.run import run_studies
from nasdm_aug.studies.registry import PAPER_STUDIES
from nasdm_aug.utils import write_text_atomic

__all__ = ["run_demo", "DEMO_NOTICE"]

DEMO_NOTICE = ("These numbers come from procedural toy tissue, tiny models trained for minutes on a CPU "
               "and a few HoVerNet epochs. They show that the pipeline runs end to end; they are not "
               "the paper's results and say nothing about real data.")


def _toy_models(config: StudyConfig, out: Path, progress: bool) -> tuple[str, ...]:
    """The embedded toy models when shipped; otherwise a short training on the demo store."""
    from nasdm_aug.generator import TOY_MODEL_DIR

    if (TOY_MODEL_DIR / "mask" / "config.json").is_file() and (TOY_MODEL_DIR / "patch" / "config.json").is_file():
        return ("toy",)
    from nasdm_aug.training.config import get_train_preset
    from nasdm_aug.training.run import train

    store = ensure_store(config, out, progress)
    n_types = PatchStore(store).type_table.n_types
    runs = []
    for kind in MODEL_KINDS:
        run = out / "models" / kind
        cfg = get_train_preset(kind, "tiny", image_size=config.patch_size, n_types=n_types).replace(
            steps=300, lr_drop_step=0, ckpt_every=100, sample_every=0)
        train(kind, str(store), "Train", cfg, run, resume=run.is_dir(), progress=progress)
        runs.append(str(run))
    return tuple(runs)


def run_demo(out: str | os.PathLike, *, runs: int | None = None, progress: bool = True,
             overwrite: bool = False) -> Path:
    """Run the demo into ``out`` (resumable: finished steps are reused) and return the report path.

    Args:
        out: output folder.
        runs: HoVerNet runs per study row (default: the demo preset's).
        progress: show progress bars.
        overwrite: train again study runs in ``out`` made with another configuration (else refused).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = STUDY_PRESETS["demo"]
    if runs:
        config = config.replace(n_runs=runs)
    config = config.replace(model=_toy_models(config, out, progress))
    config.save(out / "config.json")
    summary = run_studies(config, "all", out, progress=progress, overwrite=overwrite)
    return write_demo_report(summary, out)


def write_demo_report(summary: dict[str, Any], out: Path) -> Path:
    """``report.md`` (and the same as one offline page, ``report.html``): notice, data, sample
    sheet, tables and plots."""
    from nasdm_aug.studies.report import format_tables

    store = PatchStore(summary["store"])
    sizes = ", ".join(f"{k} {len(store.indices(k))}" for k in ("Train", "R1", "R2", "Test") if k in store.splits)
    lines = [
        "# nasdm-aug demo report", "", f"> **Toy data.** {DEMO_NOTICE}", "",
        "## Data", "", f"Real (toy) store: `{summary['store']}`: {len(store)} patches of {store.patch_size} px "
        f"({sizes}). Synthetic banks: `banks/S1.h5` (masks of R1), `banks/S2.h5` (masks of R2).", "",
        "## Synthetic against real", "",
        "Each row: the real mask in the type colours | the synthetic patch made from it | the real patch.", "",
        "![S2 preview](banks/S2.h5.preview.png)", "",
        "## Studies (HoVerNet on Test, mean ± std over runs)", "", format_tables(summary["table"]), "",
    ]
    for study in PAPER_STUDIES:
        if (out / f"study_{study}.png").is_file():
            lines += [f"![{study}](study_{study}.png)", ""]
    lines += ["Files: `results.json` (every run), `results.csv`, `tables.md`, `runs/` (models and per-run results).", ""]
    from nasdm_aug.metrics.html_report import write_html_report

    path = write_text_atomic(out / "report.md", "\n".join(lines))
    write_html_report("\n".join(lines), out, "nasdm-aug demo report")
    return path
