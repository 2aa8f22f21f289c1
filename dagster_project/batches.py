"""Reading a micro-batch: exactly one offset range, validated, with bad messages dead-lettered."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from dagster_project.events import EventParser, InvalidEvent, dead_letter
from dagster_project.kafka_config import KafkaSettings
from dagster_project.kafka_io import read_range
from dagster_project.offsets import Ranges
from dagster_project.spec import StreamSpec


@dataclass
class MicroBatch:
    """The valid rows of one offset range, in offset order per partition."""

    stream: str
    ranges: Ranges
    X: np.ndarray
    y: np.ndarray  # class index (classification) or value (regression); NaN where unlabelled
    ids: list[str]
    partitions: np.ndarray
    offsets: np.ndarray
    dlq_reasons: Counter = field(default_factory=Counter)

    @property
    def rows(self) -> int:
        return len(self.ids)

    @property
    def dlq(self) -> int:
        return sum(self.dlq_reasons.values())

    @property
    def labelled(self) -> np.ndarray:
        return ~np.isnan(self.y)

    @property
    def range_rows(self) -> int:
        return sum(end - start for start, end in self.ranges.values())


def read_batch(
    settings: KafkaSettings, spec: StreamSpec, ranges: Ranges, dead_letter_invalid: bool = True
) -> MicroBatch:
    """Read `ranges` from the events topic; invalid messages go to the DLQ before this returns.

    Re-reads of data already handled (retraining on a window) pass `dead_letter_invalid=False`
    so a bad message is dead-lettered once, not once per read.
    """
    parser = EventParser(spec)
    rows: list[list[float]] = []
    labels: list[float] = []
    ids: list[str] = []
    partitions: list[int] = []
    offsets: list[int] = []
    reasons: Counter = Counter()
    producer = None
    failures: list[Exception] = []
    try:
        for record in read_range(settings, spec.events_topic, ranges):
            try:
                event = parser.parse(record.value)
            except InvalidEvent as exc:
                reason = str(exc)
                reasons[reason.split(":")[0]] += 1
                if not dead_letter_invalid:
                    continue
                producer = producer or settings.producer()
                future = producer.send(
                    spec.dlq_topic,
                    key=record.key,
                    value=dead_letter(reason, spec.events_topic, record.partition, record.offset, record.value),
                )
                future.add_errback(failures.append)
                continue
            rows.append(event.values)
            label = event.label_index if event.label_index is not None else event.label_value
            labels.append(np.nan if label is None else float(label))
            ids.append(event.event_id)
            partitions.append(record.partition)
            offsets.append(record.offset)
        if producer is not None:
            producer.flush()  # dead letters are durable before the batch counts as read
    finally:
        if producer is not None:
            producer.close()
    if failures:
        raise RuntimeError(f"could not write {len(failures)} dead letters to {spec.dlq_topic}: {failures[0]!r}")
    width = len(spec.features)
    return MicroBatch(
        stream=spec.name,
        ranges=ranges,
        X=np.asarray(rows, dtype=np.float64).reshape(-1, width),
        y=np.asarray(labels, dtype=np.float64),
        ids=ids,
        partitions=np.asarray(partitions, dtype=np.int32),
        offsets=np.asarray(offsets, dtype=np.int64),
        dlq_reasons=reasons,
    )
