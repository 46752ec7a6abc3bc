"""Training metrics to ``log.jsonl`` (one JSON object per line) and, when the ``tensorboard``
package is installed, to TensorBoard event files in ``RUN_DIR/tb``; used by both trainers (the
NASDM trainer's records are keyed by ``step``, the HoVerNet trainer's by ``epoch``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nasdm_aug.utils import write_text_atomic

__all__ = ["MetricLogger", "read_log"]

LOG_NAME = "log.jsonl"


def read_log(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a run's ``log.jsonl`` (an empty list when there is none)."""
    path = Path(run_dir) / LOG_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricLogger:
    """Appends records to ``RUN_DIR/log.jsonl`` and mirrors scalars to TensorBoard if available.

    On resume, records past the resumed step (written after the last checkpoint of a killed run)
    are dropped first, so the log reads as if the run had never stopped.

    Args:
        run_dir: the run directory.
        resume_step: the step (or epoch) training restarts from (0 for a fresh run).
        tensorboard: mirror to TensorBoard when ``torch.utils.tensorboard`` imports.
        key: the record field that counts progress (``"step"`` or ``"epoch"``).
    """

    def __init__(self, run_dir: str | os.PathLike, resume_step: int = 0, tensorboard: bool = True,
                 key: str = "step") -> None:
        self.key = key
        self.path = Path(run_dir) / LOG_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate(resume_step)
        self._file = self.path.open("a")
        self._tb = _summary_writer(Path(run_dir) / "tb") if tensorboard else None

    def _truncate(self, resume_step: int) -> None:
        if not self.path.is_file():
            return
        kept = [r for r in read_log(self.path.parent) if int(r.get(self.key, 0)) <= resume_step]
        write_text_atomic(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (must hold the progress key); numbers also go to TensorBoard as ``train/<name>``."""
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != self.key and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"train/{key}", value, record[self.key])

    def close(self) -> None:
        """Flush and close the files."""
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _summary_writer(log_dir: Path) -> Any:
    # TensorBoard is optional: torch.utils.tensorboard raises ImportError without the package.
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir))
