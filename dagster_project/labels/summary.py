"""Live quality aggregates: the counters and per-version totals of the delayed-label join.

The join counts into them and the readers of live_metrics.jsonl fold its lines back into them, so
the joiner's own metrics and the exporter's report the same figures. Plain data, no I/O.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from dagster_project.labels.store import record_at

COUNTERS = (
    "joined",
    "evicted_predictions",
    "evicted_labels",
    "overflow",
    "duplicate_predictions",
    "duplicate_labels",
    "invalid_predictions",
    "invalid_labels",
)


def version_sort_key(version: str) -> tuple[int, str]:
    """Order versions by their trailing number (v2 before v10), the rest by name."""
    digits = "".join(itertools.takewhile(str.isdigit, reversed(version)))[::-1]
    return (int(digits) if digits else -1, version)


@dataclass
class Totals:
    """Joined rows of one model version: correct predictions (classification) or error sums."""

    rows: int = 0
    correct: int = 0
    abs_err: float = 0.0
    sq_err: float = 0.0

    def add(self, other: Totals) -> None:
        self.rows += other.rows
        self.correct += other.correct
        self.abs_err += other.abs_err
        self.sq_err += other.sq_err

    def to_json(self, task: str) -> dict[str, Any]:
        if task == "classification":
            return {"rows": self.rows, "correct": self.correct}
        return {"rows": self.rows, "abs_err": self.abs_err, "sq_err": self.sq_err}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Totals:
        return cls(
            int(raw["rows"]), int(raw.get("correct", 0)), float(raw.get("abs_err", 0.0)), float(raw.get("sq_err", 0.0))
        )

    def quality(self, task: str) -> dict[str, Any]:
        """`{rows, accuracy}` or `{rows, mae, rmse}` (metrics None without rows)."""
        n = self.rows
        if task == "classification":
            return {"rows": n, "accuracy": self.correct / n if n else None}
        return {
            "rows": n,
            "mae": self.abs_err / n if n else None,
            "rmse": math.sqrt(self.sq_err / n) if n else None,
        }


@dataclass
class LiveSummary:
    """Cumulative live quality of a stream: per-version totals, counters, pending entries."""

    task: str | None = None
    versions: dict[str, Totals] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    pending: dict[str, int] = field(default_factory=lambda: {"predictions": 0, "labels": 0})
    at: float | None = None  # epoch seconds of the last checkpoint (or snapshot)
    records: int = 0

    def apply(self, record: dict[str, Any]) -> None:
        """Fold in one live_metrics.jsonl line: its versions are a delta, its counters cumulative."""
        self.task = record.get("task", self.task)
        for version, raw in record.get("versions", {}).items():
            self.versions.setdefault(version, Totals()).add(Totals.from_json(raw))
        self.counters = dict.fromkeys(COUNTERS, 0) | record.get("counters", {})
        self.pending = dict(record.get("pending", self.pending))
        self.at = record_at(record)
        self.records += 1

    def quality(self) -> dict[str, dict[str, Any]]:
        task = self.task or "classification"
        return {v: self.versions[v].quality(task) for v in sorted(self.versions, key=version_sort_key)}
