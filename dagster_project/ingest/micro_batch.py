"""Reading a micro-batch: exactly one offset range, validated, with bad messages dead-lettered."""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from dagster_project.ingest.dead_letters import DeadLetter, write_dead_letters
from dagster_project.ingest.events import EventParser
from dagster_project.kafka.io import RawRecord, read_range, topic_identity
from dagster_project.kafka.offsets import Ranges
from dagster_project.kafka.settings import KafkaSettings
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
    identity: dict | None = None  # the cluster and topic incarnation the rows came from (TopicIdentity)

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
    identity = topic_identity(settings, spec.events_topic)
    with _gc_paused():
        records = list(read_range(settings, spec.events_topic, ranges))
        parsed = EventParser(spec).parse_many([record.value for record in records])
    reasons: Counter = Counter(reason.split(":")[0] for _, reason in parsed.failures)
    if dead_letter_invalid and parsed.failures:
        _send_dead_letters(settings, spec, [(records[i], reason) for i, reason in parsed.failures])
    return MicroBatch(
        stream=spec.name,
        ranges=ranges,
        X=parsed.X,
        y=parsed.y,
        ids=parsed.ids,
        partitions=np.fromiter((records[i].partition for i in parsed.index), dtype=np.int32, count=len(parsed.index)),
        offsets=np.fromiter((records[i].offset for i in parsed.index), dtype=np.int64, count=len(parsed.index)),
        dlq_reasons=reasons,
        identity=identity.as_json() if identity else None,
    )


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while a batch's records are built: they hold no cycles, and collections
    triggered by 100k new tuples cost as much as the Kafka read itself (measured 0.25 s vs 0.4-0.67 s)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _send_dead_letters(settings: KafkaSettings, spec: StreamSpec, refused: list[tuple[RawRecord, str]]) -> None:
    """Write every refused message to the DLQ and wait until all are durable (or raise)."""
    write_dead_letters(
        settings,
        spec.dlq_topic,
        "trainer",
        (DeadLetter(reason, spec.events_topic, r.partition, r.offset, r.key, r.value) for r, reason in refused),
    )
