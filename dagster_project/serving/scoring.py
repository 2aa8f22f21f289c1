"""One poll batch, whichever client polled it: parse, score in one onnxruntime call, produce.

Malformed events become dead letters with the reason; the valid ones are scored with one snapshot of
the champion and get one prediction record each (key = event id). `BatchScorer.process` returns once
the broker acknowledged every record it sent (or raises), so the caller may then make the batch final.
Its three steps are separate so a loop can prepare the next batch (CPU) while the broker acknowledges
this one: `prepare` (parse, score, encode), `send` (hand to the producer), `confirm` (flush and check).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from dagster_project.dev.faults import crash_point
from dagster_project.ingest.categories import unseen_counts
from dagster_project.ingest.dead_letters import DeadLetter, DeadLetterWriter
from dagster_project.ingest.events import EventParser, InvalidEvent, ParsedBatch
from dagster_project.kafka.fast_producer import BatchDelivery
from dagster_project.serving.champion import ChampionWatcher
from dagster_project.serving.consumers.base import PollBatch
from dagster_project.serving.features import ServingFeatures
from dagster_project.serving.metrics import ScorerMetrics
from dagster_project.serving.unscored import unscored_reason, unscored_rows
from dagster_project.spec import StreamSpec

log = logging.getLogger(__name__)


class PredictionsNotAcknowledged(RuntimeError):
    """The broker did not acknowledge every record of a batch; its offsets were not committed."""


class BatchOutcome:
    """What one processed batch counts for the metrics once it is final (acknowledged, or committed)."""

    __slots__ = ("dlq", "predicted", "unseen", "version")

    def __init__(self, version: str, predicted: int, dlq: int, unseen: dict[str, int] | None = None) -> None:
        self.version, self.predicted, self.dlq = version, predicted, dlq
        self.unseen = unseen or {}  # rows per category feature whose value was outside its vocabulary


@dataclass
class Prepared:
    """A batch scored and encoded, not yet sent."""

    ids: list[str]
    records: list[bytes]  # one prediction record per id
    letters: list[DeadLetter]
    outcome: BatchOutcome


@dataclass
class Sending:
    """A batch handed to the producer: what to check once it is flushed."""

    dead_letters: DeadLetterWriter
    sent: _Sent
    outcome: BatchOutcome


class BatchScorer:
    """The per-batch work of the Kafka loop, shared by every consumer client and delivery mode."""

    def __init__(
        self,
        spec: StreamSpec,
        watcher: ChampionWatcher,
        metrics: ScorerMetrics,
        features: ServingFeatures | None,
        flush_timeout_s: float,
    ) -> None:
        self.spec = spec
        self.watcher = watcher
        self.metrics = metrics
        self.features = features
        self.flush_timeout_s = flush_timeout_s
        # Scoring needs no label: a label of the wrong type or class is the trainer's dead letter, not a
        # reason to serve no prediction. With derived features the label is still checked, because
        # training keeps such an event out of the feature state and the scorer's state must match it.
        self._parser = EventParser(spec, labels=bool(spec.derived))

    def process(self, producer: Any, batch: PollBatch, flush_timeout_s: float | None = None) -> BatchOutcome:
        """The whole step at once: prepare, send, and wait for the broker's acknowledgements."""
        return self.confirm(producer, self.send(producer, self.prepare(batch)), flush_timeout_s)

    def prepare(self, batch: PollBatch) -> Prepared:
        """Parse, derive, score and encode `batch` (CPU only: nothing is sent yet)."""
        served = self.watcher.current  # one snapshot for the whole batch
        spec = self.spec
        values = batch.values
        ids, rows, index, refused = self.parse(values)
        if self.features is not None:  # no key, no time or late: refused as in training
            derived = self.features.derive(
                served.version,
                batch.partitions,
                batch.offsets,
                values,
                ParsedBatch(rows, np.zeros(len(ids)), ids, np.asarray(index, dtype=np.int64), refused),
                batch.timestamps,
            )
            ids, rows, index, refused = derived.ids, derived.X, derived.index.tolist(), derived.failures
        records: list[bytes] = []
        if ids:
            started = time.perf_counter()
            X = rows.astype(np.float32)
            labels, raw_scores = served.outputs(X)
            self.metrics.inference_latency.labels(spec.name, served.version, "kafka").observe(
                time.perf_counter() - started
            )
            unscored = unscored_rows(labels, raw_scores)
            if len(unscored):  # a null input the model cannot score: to the DLQ, not a made-up prediction
                refused = sorted([*refused, *((index[r], unscored_reason(spec, X[r])) for r in unscored.tolist())])
                keep = np.ones(len(ids), dtype=bool)
                keep[unscored] = False
                ids = [event_id for event_id, k in zip(ids, keep.tolist(), strict=True) if k]
                index = [i for i, k in zip(index, keep.tolist(), strict=True) if k]
                rows, labels = rows[keep], labels[keep]
                raw_scores = None if raw_scores is None else raw_scores[keep]
            predictions, scores = served.as_lists(labels, raw_scores)
            stamps = batch.timestamps
            records = _encode(ids, predictions, scores, served.version, [stamps[i] for i in index])
        letters = [
            DeadLetter(
                reason,
                batch.topic,
                batch.partitions[i],
                batch.offsets[i],
                batch.keys[i],
                values[i],
                batch.headers.get(i),
            )
            for i, reason in refused
        ]
        outcome = BatchOutcome(served.version, len(ids), len(refused), unseen_counts(spec, rows) if ids else None)
        return Prepared(ids, records, letters, outcome)

    def send(self, producer: Any, prepared: Prepared) -> Sending:
        """Hand a prepared batch's dead letters and predictions to the producer (not yet acknowledged)."""
        dead_letters = DeadLetterWriter(producer, self.spec.dlq_topic, "scorer")
        for letter in prepared.letters:
            dead_letters.send(letter)
        sent = _Sent(producer)
        if prepared.ids:
            sent.send_all(self.spec.predictions_topic, prepared.ids, prepared.records)
        return Sending(dead_letters, sent, prepared.outcome)

    def confirm(self, producer: Any, sending: Sending, flush_timeout_s: float | None = None) -> BatchOutcome:
        """Wait until the broker acknowledged everything sent so far; raise unless all of `sending` was."""
        producer.flush(timeout=flush_timeout_s or self.flush_timeout_s)
        sending.dead_letters.check()
        sending.sent.check()
        crash_point("scorer_before_commit")  # tests: predictions acknowledged, offsets not yet committed
        return sending.outcome

    def parse(self, values: list[bytes | None]) -> tuple[list[str], np.ndarray, list[int], list[tuple[int, str]]]:
        """(ids, rows, their positions, refused (position, reason)) for one poll batch."""
        try:
            parsed = self._parser.parse_many(values)
            return parsed.ids, parsed.X, parsed.index.tolist(), parsed.failures
        except Exception:  # a parser bug must not stop scoring: fall back to one message at a time
            log.exception("%s: batch parser failed; parsing message by message", self.spec.name)
        ids: list[str] = []
        rows: list[list[float]] = []
        index: list[int] = []
        refused: list[tuple[int, str]] = []
        for i, value in enumerate(values):
            try:
                event = self._parser.parse(value)
            except InvalidEvent as exc:
                refused.append((i, str(exc)))
            except Exception as exc:
                refused.append((i, f"unexpected error while parsing: {exc!r}"))
            else:
                ids.append(event.event_id)
                rows.append(event.values)
                index.append(i)
        return ids, np.asarray(rows, dtype=np.float64).reshape(len(rows), -1), index, refused


def _encode(ids: list[str], predictions: Any, scores: Any, version: str, stamps: list[int | None]) -> list[bytes]:
    """One prediction record per event (see `scorer.py` for the format)."""
    now = time.time()
    now_ms = now * 1000.0
    dumps = orjson.dumps
    out = []
    for i, event_id in enumerate(ids):
        stamp = stamps[i]
        out.append(
            dumps(
                {
                    "id": event_id,
                    "prediction": predictions[i],
                    "probabilities": scores[i] if scores is not None else None,
                    "model_version": version,
                    "latency_ms": round(now_ms - stamp, 3) if stamp and stamp > 0 else None,
                    "ts": now,
                }
            )
        )
    return out


class _Sent:
    """The prediction records of one batch on a producer, checked after its flush: one batch handle with
    confluent-kafka's producer (`send_many`), else one future per record (kafka-python's)."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self.deliveries: list[Any] = []
        self.sent = 0

    def send_all(self, topic: str, ids: list[str], values: list[bytes]) -> None:
        keys = [event_id.encode() for event_id in ids]
        self.sent = len(values)
        send_many = getattr(self.producer, "send_many", None)
        if send_many is not None:
            self.deliveries = [send_many(topic, keys, values)]
            return
        send = self.producer.send
        self.deliveries = [send(topic, key=key, value=value) for key, value in zip(keys, values, strict=True)]

    def check(self) -> None:
        failed = [d for d in self.deliveries if not d.succeeded()]
        if failed:
            first = failed[0]
            error = (
                first.errors[0]
                if isinstance(first, BatchDelivery) and first.errors
                else getattr(first, "exception", None)
            )
            raise PredictionsNotAcknowledged(
                f"{sum(_unacknowledged(d) for d in failed)} of {self.sent} records of the batch were not "
                f"acknowledged: {error!r}"
            )


def _unacknowledged(delivery: Any) -> int:
    if isinstance(delivery, BatchDelivery):
        return len(delivery.errors) if delivery.is_done else delivery.sent
    return 0 if delivery.succeeded() else 1
