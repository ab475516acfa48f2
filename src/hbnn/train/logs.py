"""Run records: ``metrics.csv``, TensorBoard events and the per-epoch line.

Only rank 0 logs. The CSV is rewritten atomically on every row (it is small), so a
crash never leaves a torn line, and a resumed run drops the rows written after the
checkpoint it resumes from. TensorBoard is imported lazily and skipped, with a note,
when it is not installed. Progress within an epoch (a bar, or lines off a terminal) is
:mod:`hbnn.progress`.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping

from hbnn.io import atomic_write_text

__all__ = ["METRIC_FIELDS", "MetricsLog", "open_tensorboard", "format_epoch_line"]

METRIC_FIELDS = (
    "epoch", "step", "train_loss", "train_top1", "test_loss", "test_top1", "test_top5",
    "lr", "images_per_s", "wall_time_s", "weight_bits", "act_bits",
)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


class MetricsLog:
    """``metrics.csv`` with one row per epoch (columns :data:`METRIC_FIELDS`).

    Args:
        path: the CSV file.
        keep_until_step: when resuming, keep only existing rows with ``step`` <= this
            (rows logged after the checkpoint are dropped); None starts a new file.
    """

    def __init__(self, path: str | os.PathLike, keep_until_step: int | None = None) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, str]] = []
        if keep_until_step is not None and self.path.exists():
            with self.path.open(newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    try:
                        if int(row.get("step") or 0) <= keep_until_step:
                            self.rows.append(row)
                    except ValueError:
                        continue
        self._write()

    def append(self, row: Mapping[str, Any]) -> None:
        """Add one row (missing fields are left empty) and rewrite the file atomically."""
        self.rows.append({k: _fmt(row.get(k)) for k in METRIC_FIELDS})
        self._write()

    def _write(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buf.getvalue())


def open_tensorboard(log_dir: str | os.PathLike, purge_step: int | None = None, *,
                     quiet: bool = False) -> Any:
    """A ``SummaryWriter`` for ``log_dir``, or None (with a note) when tensorboard is missing.

    ``purge_step`` drops events at or after that step left by an interrupted run.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if not quiet:
            print("hbnn: note: tensorboard is not installed; skipping TensorBoard events "
                  "(pip install tensorboard)", file=sys.stderr)
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def format_epoch_line(row: Mapping[str, Any], epochs: int) -> str:
    """One human-readable line summarising an epoch's metrics row."""
    def pct(key: str) -> str:
        v = row.get(key)
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}%"

    def num(key: str, spec: str) -> str:
        v = row.get(key)
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    return (f"epoch {row['epoch']}/{epochs} step {row['step']}  train loss {num('train_loss', '.4f')} "
            f"acc {pct('train_top1')}  test loss {num('test_loss', '.4f')} top1 {pct('test_top1')} "
            f"top5 {pct('test_top5')}  lr {num('lr', '.3g')}  {num('images_per_s', '.0f')} img/s")
