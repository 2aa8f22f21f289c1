"""Delayed labels: join `<stream>.predictions` with `<stream>.labels` for live quality per model version.

Predictions are known at once, their truth only later (or sometimes first). The joiner pairs them
by event id and checkpoints per-version accuracy (or MAE/RMSE) to the registry, exactly once across
crashes; monitors, the exporter and the CLI read it back from there. Import from this package: the
modules behind it are records (the record contracts), summary (the aggregates), join_state (the
join in memory), store (the durable files), readers (live quality and Prometheus), joiner and producer.
"""

from dagster_project.labels.join_state import JoinState
from dagster_project.labels.joiner import LabelJoiner, labels_group, progress_line
from dagster_project.labels.producer import produce_labels
from dagster_project.labels.readers import LiveMetricsCollector, LiveMetricsReader, live_metrics, live_summary
from dagster_project.labels.records import RecordParser, make_label
from dagster_project.labels.store import JoinerBusy, LabelStoreError, LiveStore, read_records

__all__ = [
    "JoinState",
    "JoinerBusy",
    "LabelJoiner",
    "LabelStoreError",
    "LiveMetricsCollector",
    "LiveMetricsReader",
    "LiveStore",
    "RecordParser",
    "labels_group",
    "live_metrics",
    "live_summary",
    "make_label",
    "produce_labels",
    "progress_line",
    "read_records",
]
