"""Delayed labels: join `<stream>.predictions` with `<stream>.labels` for live quality per model version.

A scorer writes one prediction per event (`{id, prediction, probabilities, model_version, ...}`);
the truth arrives later, or sometimes first, as `{id, label, ts}` on `<stream>.labels`. The joiner
(`streamfit labels join <stream>`) consumes both topics in its own consumer group
(`streamfit-<stream>-labels`) and pairs them by event id, in either arrival order:

* A prediction and a label join when their Kafka record timestamps are at most
  ``labels.join_window_s`` apart. Whichever arrives first waits ("pending") until its partner comes
  or the stream clock passes it by more than the window; then it is evicted and counted
  (`evicted_predictions` / `evicted_labels`). At most ``labels.max_pending`` entries wait; beyond
  that the oldest are evicted early (counted in `overflow` as well).
* The stream clock is event time, not the wall clock, so a joiner catching up on a backlog does
  not evict what it has not read yet: it is the minimum over the assigned partitions of the last
  record timestamp read, where a partition that is caught up (position = high-water mark) counts
  as "now".
* Classification compares the prediction (the spec's class value) with the label by the rule of
  `events.py`: True is not 1, but 1.0 is 1. Regression sums absolute and squared errors.
* Duplicates (a scorer repeats at most one poll batch after a crash; label feeds repeat too) are
  dropped by event id while the id is pending or joined less than a window ago (the first
  prediction and the first label win) and counted in `duplicate_predictions` / `duplicate_labels`.
* A record that is not a valid prediction or label (not JSON, no id, a label outside the spec's
  classes, ...) goes to `<stream>.dlq` with the reason, like a malformed event, and is counted.

Durable output and exactly-once aggregation. Every flush (each ``labels.flush_interval_s`` while
something changed, and on a clean stop) is a checkpoint, in the spirit of DESIGN.md's versions:

1. DLQ records of the flush are acknowledged by the broker;
2. the joiner's whole state (pending entries, recently joined ids, cumulative totals and the next
   offset of every partition) is written atomically to ``labels_state/<seq>.json``;
3. one line is appended (and fsynced) to ``$STREAMFIT_HOME/registry/<stream>/live_metrics.jsonl``:
   the per-version aggregates joined since the previous line, with the window, the time and
   cumulative counters. This append is the commit point;
4. only then are the consumer group's offsets committed (so Kafka tooling shows the joiner's lag),
   and older state files are removed.

A restart resumes from the state file named by the last complete line, and seeks every partition
to the offsets stored in it (the committed offsets are only a fallback for a first start). A crash
at any point therefore neither loses nor double-counts a joined pair: a state file without its
line is ignored, a torn last line is cut off, and records read after the checkpoint are read again
into the state as it was at the checkpoint (only a dead letter sent after it may be sent twice).
What remains at-least-once is upstream: a duplicate
that arrives after its id left the dedupe memory (joined more than a window ago, or pushed out by
``max_pending``) waits as a new entry and is evicted (inflating the evicted count); if both its
prediction and its label repeat that late, the pair is counted twice. One joiner per stream: a lock
file in the registry refuses a second one on the same STREAMFIT_HOME.

Readers: `live_metrics(registry_root, stream)` gives `{version: {rows, accuracy}}` (or
`{rows, mae, rmse}`), `read_records` the per-flush series (for drift monitors), and
`LiveMetricsCollector` the Prometheus families for the exporter; the joiner serves the same
families from memory on ``--metrics-port``.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import math
import os
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from dagster_project.dev.faults import crash_point
from dagster_project.ingest.events import dead_letter, label_key
from dagster_project.kafka.io import check_reachable, ensure_topics
from dagster_project.kafka.settings import GROUP_SESSION_TIMEOUT_MS, KafkaSettings
from dagster_project.spec import StreamSpec

log = logging.getLogger(__name__)

LIVE_METRICS_FILE = "live_metrics.jsonl"
STATE_DIR = "labels_state"
LOCK_FILE = "labels.lock"
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


class LabelStoreError(RuntimeError):
    """The joiner's durable state is missing or inconsistent; the message says what to do."""


class JoinerBusy(LabelStoreError):
    """Another joiner holds this stream's lock."""


class InvalidRecord(ValueError):
    """A prediction or label record breaks its contract; the message is the DLQ reason."""


def labels_group(spec: StreamSpec) -> str:
    """The joiner's consumer group (its committed offsets show its lag in standard Kafka tooling)."""
    return f"streamfit-{spec.name}-labels"


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


# --- aggregates ---------------------------------------------------------------------------------


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


def _version_sort_key(version: str) -> tuple[int, str]:
    digits = "".join(itertools.takewhile(str.isdigit, reversed(version)))[::-1]
    return (int(digits) if digits else -1, version)


# --- parsing ------------------------------------------------------------------------------------


def _record_id(obj: dict[str, Any]) -> str:
    event_id = obj.get("id")
    if not isinstance(event_id, str | int) or isinstance(event_id, bool) or event_id == "":
        raise InvalidRecord("record has no 'id' (string or integer)")
    return str(event_id)


def _json_object(raw: bytes | None, what: str) -> dict[str, Any]:
    if raw is None:
        raise InvalidRecord(f"empty {what} (null value)")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidRecord(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


class RecordParser:
    """Validates prediction and label records against one stream's task and classes."""

    def __init__(self, spec: StreamSpec) -> None:
        self.task = spec.task
        self.classes = list(spec.label.classes or [])
        self._class_keys = {label_key(c) for c in self.classes}

    def _target(self, value: Any, what: str) -> Any:
        if self.task == "classification":
            if not isinstance(value, str | int | float) or label_key(value) not in self._class_keys:
                raise InvalidRecord(f"{what} {value!r} is not one of the spec's classes {self.classes}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidRecord(f"regression {what} must be a finite number, got {value!r}")
        return float(value)

    def prediction(self, raw: bytes | None) -> tuple[str, str, Any]:
        """(event id, model version, prediction)."""
        obj = _json_object(raw, "prediction")
        event_id = _record_id(obj)
        version = obj.get("model_version")
        if not isinstance(version, str) or not version:
            raise InvalidRecord("prediction has no 'model_version'")
        if "prediction" not in obj:
            raise InvalidRecord("prediction has no 'prediction'")
        return event_id, version, self._target(obj["prediction"], "prediction")

    def label(self, raw: bytes | None) -> tuple[str, Any]:
        """(event id, label)."""
        obj = _json_object(raw, "label")
        event_id = _record_id(obj)
        if obj.get("label") is None:
            raise InvalidRecord("label record has no 'label'")
        return event_id, self._target(obj["label"], "label")


def make_label(event_id: str, label: Any, ts: float | None = None) -> bytes:
    """A label record in the contract format `{id, label, ts}`."""
    return orjson.dumps({"id": event_id, "label": label, "ts": time.time() if ts is None else ts})


# --- the join, without I/O ----------------------------------------------------------------------


class JoinState:
    """Pending predictions and labels, recent joins, totals and offsets: everything a checkpoint holds.

    Pure bookkeeping (no clock, no I/O), so it is tested directly. Times are milliseconds.
    """

    def __init__(self, task: str, window_s: float, max_pending: int) -> None:
        self.task = task
        self.window_ms = window_s * 1000.0
        self.window_s = window_s
        self.max_pending = max_pending
        self.seq = 0  # the last checkpoint written
        self.pending_predictions: OrderedDict[str, tuple[str, Any, float]] = OrderedDict()
        self.pending_labels: OrderedDict[str, tuple[Any, float]] = OrderedDict()
        self.joined_recent: OrderedDict[str, float] = OrderedDict()
        self.positions: dict[str, dict[int, int]] = {}
        self.totals: dict[str, Totals] = {}
        self.delta: dict[str, Totals] = {}  # joined since the last checkpoint
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.checkpoint_at: float | None = None  # epoch seconds of the last checkpoint
        self.dirty = False

    # Records -----------------------------------------------------------------------------------
    def advance(self, topic: str, partition: int, offset: int) -> None:
        self.positions.setdefault(topic, {})[partition] = offset + 1
        self.dirty = True

    def invalid(self, side: str) -> None:
        self.counters[f"invalid_{side}"] += 1
        self.dirty = True

    def add_prediction(self, event_id: str, version: str, prediction: Any, ts: float) -> str:
        """Returns what happened: joined, pending or duplicate."""
        self.dirty = True
        if event_id in self.pending_predictions or event_id in self.joined_recent:
            self.counters["duplicate_predictions"] += 1
            return "duplicate"
        waiting = self.pending_labels.pop(event_id, None)
        if waiting is not None:
            label, label_ts = waiting
            if abs(ts - label_ts) <= self.window_ms:
                self._join(event_id, version, prediction, label, max(ts, label_ts))
                return "joined"
            self.counters["evicted_labels"] += 1  # the label is too old for this prediction
        self.pending_predictions[event_id] = (version, prediction, ts)
        self._cap()
        return "pending"

    def add_label(self, event_id: str, label: Any, ts: float) -> str:
        self.dirty = True
        if event_id in self.pending_labels or event_id in self.joined_recent:
            self.counters["duplicate_labels"] += 1
            return "duplicate"
        waiting = self.pending_predictions.pop(event_id, None)
        if waiting is not None:
            version, prediction, prediction_ts = waiting
            if abs(ts - prediction_ts) <= self.window_ms:
                self._join(event_id, version, prediction, label, max(ts, prediction_ts))
                return "joined"
            self.counters["evicted_predictions"] += 1
        self.pending_labels[event_id] = (label, ts)
        self._cap()
        return "pending"

    def _join(self, event_id: str, version: str, prediction: Any, label: Any, ts: float) -> None:
        delta = self.delta.get(version) or self.delta.setdefault(version, Totals())
        total = self.totals.get(version) or self.totals.setdefault(version, Totals())
        delta.rows += 1
        total.rows += 1
        if self.task == "classification":
            correct = int(label_key(prediction) == label_key(label))
            delta.correct += correct
            total.correct += correct
        else:
            error = float(prediction) - float(label)
            delta.abs_err += abs(error)
            total.abs_err += abs(error)
            delta.sq_err += error * error
            total.sq_err += error * error
        self.counters["joined"] += 1
        self.joined_recent[event_id] = ts
        while len(self.joined_recent) > self.max_pending:
            self.joined_recent.popitem(last=False)

    def _cap(self) -> None:
        """Evict the oldest waiting entries beyond `max_pending` (predictions and labels together)."""
        while len(self.pending_predictions) + len(self.pending_labels) > self.max_pending:
            oldest_prediction = next(iter(self.pending_predictions.values()), None)
            oldest_label = next(iter(self.pending_labels.values()), None)
            if oldest_label is None or (oldest_prediction is not None and oldest_prediction[2] <= oldest_label[1]):
                self.pending_predictions.popitem(last=False)
                self.counters["evicted_predictions"] += 1
            else:
                self.pending_labels.popitem(last=False)
                self.counters["evicted_labels"] += 1
            self.counters["overflow"] += 1

    def evict(self, clock_ms: float) -> int:
        """Drop entries older than the window at stream time `clock_ms`; returns how many waited in vain.

        Entries are kept in arrival order, which is timestamp order up to producer skew, so the
        oldest-first scan stops at the first entry still inside the window.
        """
        horizon = clock_ms - self.window_ms
        evicted = 0
        for entries, counter, ts_at in (
            (self.pending_predictions, "evicted_predictions", 2),
            (self.pending_labels, "evicted_labels", 1),
        ):
            while entries and next(iter(entries.values()))[ts_at] < horizon:
                entries.popitem(last=False)
                self.counters[counter] += 1
                evicted += 1
        while self.joined_recent and next(iter(self.joined_recent.values())) < horizon:
            self.joined_recent.popitem(last=False)
        if evicted:
            self.dirty = True
        return evicted

    # Checkpoints -------------------------------------------------------------------------------
    def record(self, seq: int, stream: str, at: float) -> dict[str, Any]:
        """The live_metrics.jsonl line of checkpoint `seq`: what was joined since the previous one."""
        return {
            "seq": seq,
            "at": datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds"),
            "stream": stream,
            "task": self.task,
            "window_s": self.window_s,
            "versions": {v: t.to_json(self.task) for v, t in sorted(self.delta.items()) if t.rows},
            "counters": dict(self.counters),
            "pending": {"predictions": len(self.pending_predictions), "labels": len(self.pending_labels)},
            "offsets": {t: {str(p): o for p, o in sorted(ps.items())} for t, ps in sorted(self.positions.items())},
        }

    def checkpointed(self, seq: int, at: float) -> None:
        self.seq = seq
        self.checkpoint_at = at
        self.delta = {}
        self.dirty = False

    def to_json(self, seq: int, at: float) -> bytes:
        return orjson.dumps(
            {
                "seq": seq,
                "at": at,
                "task": self.task,
                "positions": {t: {str(p): o for p, o in ps.items()} for t, ps in self.positions.items()},
                "pending_predictions": [[i, v, p, ts] for i, (v, p, ts) in self.pending_predictions.items()],
                "pending_labels": [[i, label, ts] for i, (label, ts) in self.pending_labels.items()],
                "joined_recent": [[i, ts] for i, ts in self.joined_recent.items()],
                "totals": {v: t.to_json("regression") | {"correct": t.correct} for v, t in self.totals.items()},
                "counters": self.counters,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes, task: str, window_s: float, max_pending: int) -> JoinState:
        data = orjson.loads(raw)
        if data["task"] != task:
            raise LabelStoreError(f"the joiner's saved state is for a {data['task']} stream, the spec says {task}")
        state = cls(task, window_s, max_pending)
        state.seq = int(data["seq"])
        state.checkpoint_at = data.get("at")
        state.positions = {t: {int(p): int(o) for p, o in ps.items()} for t, ps in data["positions"].items()}
        state.pending_predictions = OrderedDict((i, (v, p, ts)) for i, v, p, ts in data["pending_predictions"])
        state.pending_labels = OrderedDict((i, (label, ts)) for i, label, ts in data["pending_labels"])
        state.joined_recent = OrderedDict((i, ts) for i, ts in data["joined_recent"])
        state.totals = {v: Totals.from_json(t) for v, t in data["totals"].items()}
        state.counters = dict.fromkeys(COUNTERS, 0) | {k: int(n) for k, n in data["counters"].items()}
        state.dirty = False
        state._cap()  # max_pending may have been lowered since
        state.dirty = state.counters["overflow"] != int(data["counters"].get("overflow", 0))
        return state

    def summary(self) -> LiveSummary:
        return LiveSummary(
            task=self.task,
            versions={v: Totals(t.rows, t.correct, t.abs_err, t.sq_err) for v, t in self.totals.items()},
            counters=dict(self.counters),
            pending={"predictions": len(self.pending_predictions), "labels": len(self.pending_labels)},
            at=self.checkpoint_at,
        )


# --- durable store ------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class LiveStore:
    """`<registry>/<stream>/live_metrics.jsonl` (the commit log) and `labels_state/<seq>.json`."""

    def __init__(self, registry_root: str | Path, stream: str) -> None:
        self.directory = Path(registry_root) / stream
        self.path = self.directory / LIVE_METRICS_FILE
        self.state_dir = self.directory / STATE_DIR

    def _state_path(self, seq: int) -> Path:
        return self.state_dir / f"{seq:012d}.json"

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / LOCK_FILE, "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise JoinerBusy(
                    f"another label joiner is running for {self.directory.name} (lock {fh.name}); "
                    "run only one per stream"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def recover(self) -> tuple[int, bytes] | None:
        """(seq, state JSON) of the last committed checkpoint, or None on a first start.

        Cuts a torn last line (a crash during the append) and removes state files that never got
        their line. Call only while holding the lock.
        """
        if not self.path.exists():
            return None
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log.warning("%s: cutting a torn last line (%d bytes) left by a crash", self.path, len(data) - end)
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
                os.fsync(fh.fileno())
        lines = [line for line in data[:end].splitlines() if line.strip()]
        if not lines:
            return None
        seq = int(orjson.loads(lines[-1])["seq"])
        path = self._state_path(seq)
        if not path.exists():
            raise LabelStoreError(
                f"{self.path} ends with checkpoint {seq} but {path} is missing; move {self.path.name} and "
                f"{STATE_DIR}/ aside to start the join afresh"
            )
        self.prune(seq)
        return seq, path.read_bytes()

    def write_state(self, seq: int, data: bytes) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(self._state_path(seq), data)

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "ab") as fh:
            fh.write(orjson.dumps(record) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())

    def prune(self, keep: int) -> None:
        """Remove every state file but checkpoint `keep`'s (older ones and orphans of a crash)."""
        if self.state_dir.is_dir():
            for path in self.state_dir.glob("*.json"):
                if path.stem.isdigit() and int(path.stem) != keep:
                    path.unlink(missing_ok=True)


# --- readers ------------------------------------------------------------------------------------


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
        self.task = record.get("task", self.task)
        for version, raw in record.get("versions", {}).items():
            self.versions.setdefault(version, Totals()).add(Totals.from_json(raw))
        self.counters = dict.fromkeys(COUNTERS, 0) | record.get("counters", {})
        self.pending = dict(record.get("pending", self.pending))
        self.at = _epoch(record["at"])
        self.records += 1

    def quality(self) -> dict[str, dict[str, Any]]:
        task = self.task or "classification"
        return {v: self.versions[v].quality(task) for v in sorted(self.versions, key=_version_sort_key)}


def _complete_lines(data: bytes) -> tuple[list[bytes], int]:
    end = data.rfind(b"\n") + 1
    return [line for line in data[:end].splitlines() if line.strip()], end


def read_records(registry_root: str | Path, stream: str, since: float | None = None) -> list[dict[str, Any]]:
    """Every complete live_metrics.jsonl line (one per checkpoint), optionally those `at` >= `since` (epoch s)."""
    path = Path(registry_root) / stream / LIVE_METRICS_FILE
    if not path.exists():
        return []
    lines, _ = _complete_lines(path.read_bytes())
    records = [orjson.loads(line) for line in lines]
    if since is not None:
        records = [r for r in records if _epoch(r["at"]) >= since]
    return records


def live_summary(registry_root: str | Path, stream: str, since: float | None = None) -> LiveSummary:
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
        self.path = Path(registry_root) / stream / LIVE_METRICS_FILE
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
                lines, end = _complete_lines(fh.read(stat.st_size - self._offset))
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
    for version, totals in sorted(summary.versions.items(), key=lambda kv: _version_sort_key(kv[0])):
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


class _JoinerCollector(Collector):
    def __init__(self, joiner: LabelJoiner) -> None:
        self.joiner = joiner

    def collect(self) -> Iterator[Metric]:
        yield from metric_families(self.joiner.spec.name, self.joiner.spec.task, self.joiner.snapshot)


# --- the joiner ---------------------------------------------------------------------------------


class LabelJoiner:
    """Consumes predictions and labels in `streamfit-<stream>-labels` and checkpoints live quality.

    `run()` blocks until `stop()` (then flushes, commits and leaves the group). `on_flush(record)`
    is called after every checkpoint (the CLI prints progress from it).
    """

    def __init__(
        self,
        spec: StreamSpec,
        settings: KafkaSettings,
        registry_root: str | Path | None = None,
        *,
        window_s: float | None = None,
        max_pending: int | None = None,
        flush_interval_s: float | None = None,
        max_poll_records: int = 2000,
        poll_timeout_ms: int = 200,
        group_id: str | None = None,
        consumer_overrides: dict[str, Any] | None = None,
        on_flush: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if registry_root is None:
            from dagster_project.settings import registry_root as default_root

            registry_root = default_root()
        self.spec = spec
        self.settings = settings
        self.registry_root = Path(registry_root)
        self.window_s = window_s if window_s is not None else spec.labels.join_window_s
        self.max_pending = max_pending if max_pending is not None else spec.labels.max_pending
        self.flush_interval_s = flush_interval_s if flush_interval_s is not None else spec.labels.flush_interval_s
        if self.window_s <= 0 or self.max_pending < 1 or self.flush_interval_s <= 0:
            raise ValueError("window_s and flush_interval_s must be > 0 and max_pending >= 1")
        self.max_poll_records = max_poll_records
        self.poll_timeout_ms = poll_timeout_ms
        self.group_id = group_id or labels_group(spec)
        self.consumer_overrides = consumer_overrides or {}
        self.on_flush = on_flush
        self.store = LiveStore(self.registry_root, spec.name)
        self.parser = RecordParser(spec)
        self.state = JoinState(spec.task, self.window_s, self.max_pending)
        self.snapshot = self.state.summary()
        self.assigned = threading.Event()
        self.checkpoints = 0  # written by this process
        self.metrics_registry = CollectorRegistry()
        self.metrics_registry.register(_JoinerCollector(self))
        self._stop = threading.Event()
        self._consumer = None
        self._producer = None
        self._dlq_futures: list[Any] = []
        self._last_ts: dict[Any, float] = {}

    @property
    def topics(self) -> list[str]:
        return [self.spec.predictions_topic, self.spec.labels_topic]

    def stop(self) -> None:
        self._stop.set()

    def serve_metrics(self, port: int, addr: str = "0.0.0.0"):
        """Serve this joiner's metrics on `port` (0: a free one); returns (server, thread)."""
        from prometheus_client import start_http_server

        return start_http_server(port, addr=addr, registry=self.metrics_registry)

    def run(self) -> None:
        check_reachable(self.settings)
        with self.store.locked():
            recovered = self.store.recover()
            if recovered is not None:
                self.state = JoinState.from_json(recovered[1], self.spec.task, self.window_s, self.max_pending)
                log.info("%s: resuming label join from checkpoint %d", self.spec.name, self.state.seq)
            self.snapshot = self.state.summary()
            ensure_topics(self.settings, [*self.topics, self.spec.dlq_topic], self.spec.partitions)
            consumer = self.settings.group_consumer(
                self.group_id,
                auto_offset_reset="earliest",  # a first start joins everything the broker retains
                max_poll_records=self.max_poll_records,
                **self.consumer_overrides,
            )
            self._consumer = consumer
            clean = False
            try:
                consumer.subscribe(self.topics, listener=_Listener(self))
                self._loop(consumer)
                clean = True
            finally:
                try:
                    if self._producer is not None:
                        self._producer.close(timeout=10)
                finally:
                    consumer.close(autocommit=False)
                    self._consumer = None
                log.info("%s: label joiner stopped (%s)", self.spec.name, "clean" if clean else "crashed")

    def _loop(self, consumer) -> None:
        last_flush = time.monotonic()
        give_up_at: float | None = None
        while True:
            if self._stop.is_set():
                if self.assigned.is_set():
                    break
                # Leaving a Tansu group before the first assignment can wedge it (see the scorer).
                give_up_at = give_up_at or time.monotonic() + 2 * GROUP_SESSION_TIMEOUT_MS / 1000
                if time.monotonic() > give_up_at:
                    return
            batch = consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=self.max_poll_records)
            for tp, records in batch.items():
                for record in records:
                    self._handle(tp, record)
            clock = self._clock_ms(consumer)
            if clock is not None:
                self.state.evict(clock)
            if batch or self.state.dirty:
                self.snapshot = self.state.summary()
            if self.state.dirty and time.monotonic() - last_flush >= self.flush_interval_s:
                self._checkpoint(consumer)
                last_flush = time.monotonic()
        if self.state.dirty:
            self._checkpoint(consumer)

    def _handle(self, tp, record) -> None:
        ts = float(record.timestamp) if record.timestamp and record.timestamp > 0 else time.time() * 1000.0
        self._last_ts[tp] = ts
        side = "predictions" if tp.topic == self.spec.predictions_topic else "labels"
        try:
            if side == "predictions":
                event_id, version, prediction = self.parser.prediction(record.value)
                self.state.add_prediction(event_id, version, prediction, ts)
            else:
                event_id, label = self.parser.label(record.value)
                self.state.add_label(event_id, label, ts)
        except InvalidRecord as exc:
            self.state.invalid(side)
            self._dead_letter(str(exc), tp, record)
        except Exception as exc:  # a parser bug must not make the record a poison pill either
            self.state.invalid(side)
            self._dead_letter(f"unexpected error while joining: {exc!r}", tp, record)
        self.state.advance(tp.topic, tp.partition, record.offset)

    def _dead_letter(self, reason: str, tp, record) -> None:
        if self._producer is None:
            self._producer = self.settings.producer(acks="all")
        letter = dead_letter(reason, tp.topic, tp.partition, record.offset, record.value)
        self._dlq_futures.append(self._producer.send(self.spec.dlq_topic, key=record.key, value=letter))

    def _clock_ms(self, consumer) -> float | None:
        """Event time: the slowest assigned partition's last record timestamp; caught-up ones count as now."""
        assigned = consumer.assignment()
        if not assigned:
            return None
        now = time.time() * 1000.0
        clock = now
        for tp in assigned:
            high_water = consumer.highwater(tp)
            if high_water is None:
                return None  # not fetched yet: its backlog is unknown
            position = self.state.positions.get(tp.topic, {}).get(tp.partition)
            if position is None:
                position = consumer.position(tp, timeout_ms=100)
            if position is not None and position >= high_water:
                continue
            last = self._last_ts.get(tp)
            if last is None:
                return None
            clock = min(clock, last)
        return clock

    def _checkpoint(self, consumer) -> None:
        if self._producer is not None and self._dlq_futures:
            self._producer.flush(timeout=30)
            failed = [f.exception for f in self._dlq_futures if not f.succeeded()]
            if failed:
                raise RuntimeError(f"{len(failed)} dead letters were not acknowledged: {failed[0]!r}")
            self._dlq_futures = []
        seq, at = self.state.seq + 1, time.time()
        record = self.state.record(seq, self.spec.name, at)
        self.store.write_state(seq, self.state.to_json(seq, at))
        crash_point("labels_before_record")  # tests: state written, its line not yet
        self.store.append(record)  # the commit point
        crash_point("labels_after_record")  # tests: line written, offsets not committed
        self.state.checkpointed(seq, at)
        self.checkpoints += 1
        self.snapshot = self.state.summary()
        self._commit(consumer)
        self.store.prune(seq)
        if self.on_flush is not None:
            self.on_flush(record)

    def _commit(self, consumer) -> None:
        assigned = consumer.assignment() or set()
        offsets = {
            tp: OffsetAndMetadata(o, "", -1)
            for topic, positions in self.state.positions.items()
            for p, o in positions.items()
            if (tp := TopicPartition(topic, p)) in assigned
        }
        if not offsets:
            return
        try:
            consumer.commit(offsets)
        except KafkaError as exc:  # the checkpoint holds the truth; the commit only feeds lag tooling
            log.warning("%s: offset commit failed (%r); the next checkpoint commits again", self.spec.name, exc)

    # Rebalance callbacks run inside poll(), in this thread: seek to the checkpointed positions.
    def _on_assigned(self, assigned) -> None:
        for tp in assigned:
            position = self.state.positions.get(tp.topic, {}).get(tp.partition)
            if position is not None:
                self._consumer.seek(tp, position)
        self.assigned.set()
        log.info("%s: label joiner assigned %s", self.spec.name, sorted((tp.topic, tp.partition) for tp in assigned))


class _Listener(ConsumerRebalanceListener):
    def __init__(self, joiner: LabelJoiner) -> None:
        self.joiner = joiner

    def on_partitions_revoked(self, revoked) -> None:
        pass  # the state stays: positions in it are where a re-assigned partition resumes

    def on_partitions_assigned(self, assigned) -> None:
        self.joiner._on_assigned(assigned)


def progress_line(stream: str, record: dict[str, Any], summary: LiveSummary) -> str:
    """One line per checkpoint for `streamfit labels join`."""
    c = record["counters"]
    pending = record["pending"]
    parts = [
        f"{stream}: joined {c['joined']}",
        f"pending {pending['predictions']} predictions / {pending['labels']} labels",
        f"evicted {c['evicted_predictions']} / {c['evicted_labels']}",
    ]
    if c["duplicate_predictions"] or c["duplicate_labels"]:
        parts.append(f"duplicates {c['duplicate_predictions']} / {c['duplicate_labels']}")
    if c["invalid_predictions"] or c["invalid_labels"]:
        parts.append(f"invalid {c['invalid_predictions']} / {c['invalid_labels']}")
    quality = []
    for version, q in summary.quality().items():
        if "accuracy" in q:
            quality.append(f"{version} accuracy {q['accuracy']:.4f} ({q['rows']})")
        else:
            quality.append(f"{version} mae {q['mae']:.4f} rmse {q['rmse']:.4f} ({q['rows']})")
    return ", ".join(parts) + (" | " + ", ".join(quality) if quality else "")


# --- labels producer (demos and tests) ----------------------------------------------------------


def produce_labels(
    settings: KafkaSettings,
    spec: StreamSpec,
    source: str,
    *,
    start: int = 0,
    limit: int | None = None,
    rate: float | None = None,
    shuffle_seed: int | None = None,
) -> int:
    """Send the labels of a dataset (`synthetic` or `phishing`) to `<stream>.labels`, keyed by event id.

    `start`/`limit` select events [start, start + limit) of the source; `shuffle_seed` sends them in
    a shuffled order. Returns how many the broker acknowledged.
    """
    from dagster_project.dev.producer import SOURCES

    if source not in SOURCES:
        raise ValueError(f"unknown label source {source!r}: use one of {sorted(SOURCES)}")
    events = itertools.islice(SOURCES[source](), start, None if limit is None else start + limit)
    pairs = [(e.event_id.encode(), e.event_id, e.label) for e in events]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(pairs)
    check_reachable(settings)
    ensure_topics(settings, [spec.labels_topic], spec.partitions)
    producer = settings.producer(acks="all")
    futures = []
    started = time.monotonic()
    try:
        for sent, (key, event_id, label) in enumerate(pairs, start=1):
            futures.append(producer.send(spec.labels_topic, key=key, value=make_label(event_id, label)))
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=10)
    failed = [f.exception for f in futures if not f.succeeded()]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(futures)} labels were not acknowledged: {failed[0]!r}")
    return len(futures)
