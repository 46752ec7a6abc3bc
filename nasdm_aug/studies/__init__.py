"""The downstream studies: records (``registry``), their configuration and presets (``config``),
the data they run on (``data``: real store, synthetic banks, test set), the runs (``run``) and
the reports (``report``, ``html_report``).

Names are loaded on first use, so ``from nasdm_aug.studies.registry import STUDY_REGISTRY`` (what
the CLI needs to list the studies) does not import torch, MONAI or HoVerNet.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "StudyRow": "registry", "Study": "registry", "STUDY_REGISTRY": "registry", "STUDIES": "registry",
    "PAPER_STUDIES": "registry", "PLOT_AXES": "registry", "BANK_SPLITS": "registry", "select_rows": "registry",
    "StudyConfig": "config", "STUDY_PRESETS": "config", "get_study_preset": "config",
    "StudyTestSet": "data", "resolve_test_set": "data", "check_store": "data", "TEST_STORE": "data",
    "plan_study": "run", "run_studies": "run", "summarise": "run", "METRICS": "run",
    "write_study_outputs": "report",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'nasdm_aug.studies' has no attribute {name!r}")
    return getattr(importlib.import_module(f"nasdm_aug.studies.{_WHERE[name]}"), name)
