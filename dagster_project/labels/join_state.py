"""The delayed-label join itself, in memory: pairing by event id within a window, with a cap.

Kept free of Kafka, clocks and files so the rules are tested directly and the whole state can be
checkpointed and restored exactly; the joiner feeds it records and the stream clock.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import orjson

from dagster_project.ingest.events import label_key
from dagster_project.labels.store import LabelStoreError
from dagster_project.labels.summary import COUNTERS, LiveSummary, Totals

EVENT_BUCKET_MS = 250  # event-time resolution of a checkpoint's rows: 50 rows at 200 events/s
MAX_EVENT_BUCKETS = 64  # per version and checkpoint; beyond it (a backlog caught up) the buckets widen


def event_buckets(by_event: dict[str, dict[int, Totals]], task: str) -> dict[str, Any]:
    """A checkpoint line's `event_buckets`: each version's joined rows by their events' time,
    `{"width_ms": w, "versions": {v: {"<start ms>": totals}}}`, a bucket holding events in [start, start + w).

    The width starts at EVENT_BUCKET_MS and doubles until no version has more than MAX_EVENT_BUCKETS
    buckets, so a checkpoint that caught up a long backlog stays a short line."""
    width = EVENT_BUCKET_MS
    merged = by_event
    while any(len(b) > MAX_EVENT_BUCKETS for b in merged.values()):
        width *= 2
        factor = width // EVENT_BUCKET_MS
        coarse: dict[str, dict[int, Totals]] = {}
        for version, buckets in by_event.items():
            for bucket, totals in buckets.items():
                coarse.setdefault(version, {}).setdefault(bucket // factor, Totals()).add(totals)
        merged = coarse
    return {
        "width_ms": width,
        "versions": {
            v: {str(b * width): t.to_json(task) for b, t in sorted(buckets.items()) if t.rows}
            for v, buckets in sorted(merged.items())
            if any(t.rows for t in buckets.values())
        },
    }


class JoinState:
    """Pending predictions and labels, recent joins, totals and offsets: everything a checkpoint holds.

    Pure bookkeeping (no clock, no I/O), so it is tested directly. Times are milliseconds.

    * A prediction and a label join when their timestamps are at most `window_s` apart, in either
      arrival order. Whichever comes first waits until its partner comes or `evict` passes it by
      more than the window. Beyond `max_pending` waiting entries the oldest are evicted early
      (counted in `overflow` as well).
    * Duplicates are dropped by event id while the id is pending or joined less than a window ago:
      the first prediction and the first label win. A duplicate arriving after its id left that
      memory waits as a new entry and is evicted; if both sides repeat that late, the pair counts twice.
    * Each joined row is also counted under its event's time (`event_buckets`): a checkpoint holds
      rows served before the checkpoints just before it (labels come late), and the early cut must
      count only rows whose events still wait to be learned.
    """

    def __init__(self, task: str, window_s: float, max_pending: int) -> None:
        self.task = task
        self.window_ms = window_s * 1000.0
        self.window_s = window_s
        self.max_pending = max_pending
        self.seq = 0  # the last checkpoint written
        # version, prediction, its record's ts, its event's ts (ms; the prediction's when unknown)
        self.pending_predictions: OrderedDict[str, tuple[str, Any, float, float]] = OrderedDict()
        self.pending_labels: OrderedDict[str, tuple[Any, float]] = OrderedDict()
        self.joined_recent: OrderedDict[str, float] = OrderedDict()
        self.positions: dict[str, dict[int, int]] = {}
        self.totals: dict[str, Totals] = {}
        self.delta: dict[str, Totals] = {}  # joined since the last checkpoint
        self.delta_by_event: dict[str, dict[int, Totals]] = {}  # the same, per EVENT_BUCKET_MS of event time
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

    def add_prediction(
        self, event_id: str, version: str, prediction: Any, ts: float, event_ms: float | None = None
    ) -> str:
        """Returns what happened: joined, pending or duplicate. `event_ms` is the scored event's own
        timestamp (`records.event_ms`); without it the row counts as served at `ts`, the prediction's."""
        self.dirty = True
        served_ms = ts if event_ms is None else event_ms
        if event_id in self.pending_predictions or event_id in self.joined_recent:
            self.counters["duplicate_predictions"] += 1
            return "duplicate"
        waiting = self.pending_labels.pop(event_id, None)
        if waiting is not None:
            label, label_ts = waiting
            if abs(ts - label_ts) <= self.window_ms:
                self._join(event_id, version, prediction, label, max(ts, label_ts), served_ms)
                return "joined"
            self.counters["evicted_labels"] += 1  # the label is too old for this prediction
        self.pending_predictions[event_id] = (version, prediction, ts, served_ms)
        self._cap()
        return "pending"

    def add_label(self, event_id: str, label: Any, ts: float) -> str:
        self.dirty = True
        if event_id in self.pending_labels or event_id in self.joined_recent:
            self.counters["duplicate_labels"] += 1
            return "duplicate"
        waiting = self.pending_predictions.pop(event_id, None)
        if waiting is not None:
            version, prediction, prediction_ts, served_ms = waiting
            if abs(ts - prediction_ts) <= self.window_ms:
                self._join(event_id, version, prediction, label, max(ts, prediction_ts), served_ms)
                return "joined"
            self.counters["evicted_predictions"] += 1
        self.pending_labels[event_id] = (label, ts)
        self._cap()
        return "pending"

    def _join(self, event_id: str, version: str, prediction: Any, label: Any, ts: float, served_ms: float) -> None:
        delta = self.delta.get(version) or self.delta.setdefault(version, Totals())
        total = self.totals.get(version) or self.totals.setdefault(version, Totals())
        buckets = self.delta_by_event.setdefault(version, {})
        bucket = int(served_ms // EVENT_BUCKET_MS)
        by_event = buckets.get(bucket) or buckets.setdefault(bucket, Totals())
        if self.task == "classification":
            one = Totals(1, int(label_key(prediction) == label_key(label)))
        else:
            error = float(prediction) - float(label)
            one = Totals(1, 0, abs(error), error * error)
        for totals in (delta, total, by_event):
            totals.add(one)
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
            "event_buckets": event_buckets(self.delta_by_event, self.task),
            "counters": dict(self.counters),
            "pending": {"predictions": len(self.pending_predictions), "labels": len(self.pending_labels)},
            "offsets": {t: {str(p): o for p, o in sorted(ps.items())} for t, ps in sorted(self.positions.items())},
        }

    def checkpointed(self, seq: int, at: float) -> None:
        self.seq = seq
        self.checkpoint_at = at
        self.delta = {}
        self.delta_by_event = {}
        self.dirty = False

    def to_json(self, seq: int, at: float) -> bytes:
        return orjson.dumps(
            {
                "seq": seq,
                "at": at,
                "task": self.task,
                "positions": {t: {str(p): o for p, o in ps.items()} for t, ps in self.positions.items()},
                "pending_predictions": [[i, v, p, ts, e] for i, (v, p, ts, e) in self.pending_predictions.items()],
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
        # A state file from before event times were kept: those rows count as served at their prediction's time.
        state.pending_predictions = OrderedDict(
            (entry[0], (entry[1], entry[2], entry[3], entry[4] if len(entry) > 4 else entry[3]))
            for entry in data["pending_predictions"]
        )
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
