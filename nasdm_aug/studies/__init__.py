"""The downstream studies: records (``registry``), their configuration and presets (``config``),
the data they run on (``data``: real store, synthetic banks, test set), how each row trains
(``plan``), run fingerprints (``fingerprint``), the runs (``run``), their summaries and verdicts
(``summary``) and the reports (``report``).

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
    "ensure_banks": "data", "MASK_SOURCES": "data",
    "plan_study": "plan", "training_data": "plan", "epoch_patches": "plan", "protocol": "plan",
    "run_fingerprint": "fingerprint", "summarise": "summary", "compare_rows": "summary", "METRICS": "summary",
    "run_studies": "run", "describe_study": "run", "write_study_outputs": "report",
    "Bank": "registry", "BANK_REGISTRY": "registry", "study_config": "config", "parse_bank_args": "config",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'nasdm_aug.studies' has no attribute {name!r}")
    return getattr(importlib.import_module(f"nasdm_aug.studies.{_WHERE[name]}"), name)
