"""Readers of live_metrics.jsonl: live quality for the CLI and drift monitors, Prometheus for the exporter.

Readers never talk to the joiner: they fold the committed lines of the commit log, so what they
show survives joiner restarts and never includes a checkpoint that was not committed. The same
Prometheus families are served by the exporter (from the file) and by the joiner (from memory).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dagster_project.labels.store import complete_lines, live_metrics_path, read_records
from dagster_project.labels.summary import LiveSummary, version_sort_key
from dagster_project.spec import StreamSpec


def live_summary(registry_root: str | Path, stream: str, since: float | None = None) -> LiveSummary:
    """Cumulative live quality of `stream` from its committed checkpoints (those at or after `since`)."""
    summary = LiveSummary()
    for record in read_records(registry_root, stream, since):
        summary.apply(record)
    return summary


def live_metrics(registry_root: str | Path, stream: str, since: float | None = None) -> dict[str, dict[str, Any]]:
    """Live quality per model version from durable state: `{version: {rows, accuracy}}` for
    classification, `{version: {rows, mae, rmse}}` for regression; `since` (epoch seconds) keeps
    only rows joined in checkpoints written at or after it."""
    return live_summary(registry_root, stream, since).quality()


class LiveMetricsReader:
    """Follows one live_metrics.jsonl incrementally (only new complete lines are parsed)."""

    def __init__(self, registry_root: str | Path, stream: str) -> None:
        self.path = live_metrics_path(registry_root, stream)
        self._offset = 0
        self._inode: int | None = None
        self.summary = LiveSummary()

    def refresh(self) -> LiveSummary:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._offset, self._inode, self.summary = 0, None, LiveSummary()
            return self.summary
        if stat.st_ino != self._inode or stat.st_size < self._offset:  # replaced or cut: start over
            self._offset, self._inode, self.summary = 0, stat.st_ino, LiveSummary()
        if stat.st_size > self._offset:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                lines, end = complete_lines(fh.read(stat.st_size - self._offset))
            for line in lines:
                self.summary.apply(orjson.loads(line))
            self._offset += end
        return self.summary


# --- Prometheus ---------------------------------------------------------------------------------


def metric_families(stream: str, task: str, summary: LiveSummary) -> list[Metric]:
    """`streamfit_live_*` and `streamfit_labels_*` families of one stream (joiner and exporter alike)."""
    joined = CounterMetricFamily(
        "streamfit_labels_joined",
        "Predictions joined with their delayed label, by model version",
        labels=["stream", "version"],
    )
    pending = GaugeMetricFamily(
        "streamfit_labels_pending", "Predictions or labels waiting for their partner", labels=["stream", "side"]
    )
    evicted = CounterMetricFamily(
        "streamfit_labels_evicted",
        "Predictions or labels evicted unmatched (past the join window or beyond max_pending)",
        labels=["stream", "side"],
    )
    duplicates = CounterMetricFamily(
        "streamfit_labels_duplicates", "Repeated predictions or labels dropped by event id", labels=["stream", "side"]
    )
    invalid = CounterMetricFamily(
        "streamfit_labels_invalid", "Prediction or label records sent to the DLQ", labels=["stream", "side"]
    )
    families: list[Metric] = [joined, pending, evicted, duplicates, invalid]
    if task == "classification":
        accuracy = GaugeMetricFamily(
            "streamfit_live_accuracy",
            "Accuracy of served predictions on joined delayed labels",
            labels=["stream", "version"],
        )
        families.append(accuracy)
    else:
        mae = GaugeMetricFamily(
            "streamfit_live_mae", "MAE of served predictions on delayed labels", labels=["stream", "version"]
        )
        rmse = GaugeMetricFamily(
            "streamfit_live_rmse", "RMSE of served predictions on delayed labels", labels=["stream", "version"]
        )
        families += [mae, rmse]
    for version, totals in sorted(summary.versions.items(), key=lambda kv: version_sort_key(kv[0])):
        joined.add_metric([stream, version], totals.rows)
        quality = totals.quality(task)
        if task == "classification" and quality["accuracy"] is not None:
            accuracy.add_metric([stream, version], quality["accuracy"])
        elif task != "classification" and quality["mae"] is not None:
            mae.add_metric([stream, version], quality["mae"])
            rmse.add_metric([stream, version], quality["rmse"])
    c = summary.counters
    for side in ("predictions", "labels"):
        pending.add_metric([stream, side], summary.pending.get(side, 0))
        evicted.add_metric([stream, side], c.get(f"evicted_{side}", 0))
        duplicates.add_metric([stream, side], c.get(f"duplicate_{side}", 0))
        invalid.add_metric([stream, side], c.get(f"invalid_{side}", 0))
    if summary.at is not None:
        fresh = GaugeMetricFamily(
            "streamfit_labels_checkpoint_timestamp_seconds", "When the joiner last checkpointed", labels=["stream"]
        )
        fresh.add_metric([stream], summary.at)
        families.append(fresh)
    return families


class LiveMetricsCollector(Collector):
    """Live-label metrics of the given streams, read from live_metrics.jsonl on each scrape (for the exporter)."""

    def __init__(self, registry_root: str | Path, specs: Iterable[StreamSpec]) -> None:
        self.specs = list(specs)
        self._readers = {s.name: LiveMetricsReader(registry_root, s.name) for s in self.specs}
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            per_stream = [(s, self._readers[s.name].refresh()) for s in self.specs]
            merged: dict[str, Metric] = {}
            for spec, summary in per_stream:
                if summary.records == 0:
                    continue
                for family in metric_families(spec.name, spec.task, summary):
                    if family.name in merged:
                        merged[family.name].samples.extend(family.samples)
                    else:
                        merged[family.name] = family
        yield from merged.values()
