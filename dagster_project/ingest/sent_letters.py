"""Which messages of a range the trainer already dead-lettered: so a retry sends none of them twice.

A run that dead-letters messages and then fails (or dies) before its version is registered is
retried, re-executed or run again once its halt is lifted; it reads the same range and refuses the
same messages. Before sending, such a run asks `dead_lettered` which of them an earlier attempt
sent, and sends only the others: a DLQ reader sees one record per refused source offset.

The DLQ is read from the offsets the Kafka sensor recorded when it planned the batch (`dlq_from`,
the DLQ's ends then: `planned_dlq_from`): every letter about the batch, from this run or an earlier
attempt of it, was written after the plan, so at or after them, whatever the producers' clocks say.
A run planned before they were recorded reads from the first record written at or after
`written_since(...)`, found by time (`offsets_since`); that bound trusts the events' timestamps, so
a producer whose clock runs ahead can put it after a letter an earlier attempt sent.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import orjson

from dagster_project.kafka.io import end_offsets, offsets_since, probe_partitions, read_range
from dagster_project.kafka.offsets import Ranges
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.spec import StreamSpec

# How far the clocks of the producers of events, the brokers and the trainers may disagree: a dead
# letter's timestamp (the trainer's clock) may read earlier than its message's by this much.
CLOCK_SKEW_MS = 15 * 60 * 1000


def written_since(source_timestamps_ms: Iterable[int | None], now_ms: int | None = None) -> int | None:
    """The earliest time a dead letter about these messages can carry: the oldest message's timestamp
    less `CLOCK_SKEW_MS`. None (read the whole DLQ) when a message has no timestamp, or its producer's
    clock ran ahead of this one by more than the skew (its timestamp does not say when it arrived)."""
    stamps = list(source_timestamps_ms)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if not stamps or any(t is None or t <= 0 for t in stamps) or max(stamps) > now_ms + CLOCK_SKEW_MS:
        return None
    return min(stamps) - CLOCK_SKEW_MS


def planned_dlq_from(settings: KafkaSettings, spec: StreamSpec) -> dict[int, int]:
    """The DLQ's ends when a batch is planned ({} when it does not exist yet: read it from its start),
    recorded in the run's config: the letters of its run and of any re-execution of it come after."""
    return end_offsets(settings, spec.dlq_topic)


def dlq_starts(extents: dict[int, tuple[int, int]], dlq_from: dict[int, int]) -> dict[int, tuple[int, int]]:
    """The part of each DLQ partition `(log start, end)` from its planned offset on. From the log
    start when the plan has none for it (the topic or the partition came later), when retention
    deleted below it, or when the partition is now shorter than it was (the topic was recreated)."""
    out = {}
    for p, (log_start, end) in extents.items():
        start = dlq_from.get(p, log_start)
        out[p] = (log_start if start > end else max(log_start, start), end)
    return out


def dead_lettered(
    settings: KafkaSettings,
    spec: StreamSpec,
    ranges: Ranges,
    since_ms: int | None = None,
    dlq_from: dict[int, int] | None = None,
) -> set[tuple[int, int]]:
    """(partition, offset) of the events in `ranges` the trainer already dead-lettered, read from the
    DLQ's offsets `dlq_from` on (`planned_dlq_from`) or, for a run planned without them, from the
    records written at or after `since_ms` (None: every record the DLQ holds)."""
    extents = {s.partition: (s.log_start, s.high_water) for s in probe_partitions(settings, spec.dlq_topic, {})}
    if dlq_from is not None:
        extents = dlq_starts(extents, dlq_from)
    elif since_ms is not None and extents:
        starts = offsets_since(settings, spec.dlq_topic, extents, since_ms)
        extents = {p: (max(start, starts.get(p, end)), end) for p, (start, end) in extents.items()}
    sent = set()
    for record in read_range(settings, spec.dlq_topic, {p: r for p, r in extents.items() if r[1] > r[0]}):
        try:
            letter = orjson.loads(record.value)
        except orjson.JSONDecodeError:  # not a dead letter (someone else's record): about nothing here
            continue
        if not isinstance(letter, dict):
            continue
        p, offset = letter.get("partition"), letter.get("offset")
        if (
            letter.get("component") == "trainer"
            and letter.get("topic") == spec.events_topic
            and p in ranges
            and isinstance(offset, int)
            and ranges[p][0] <= offset < ranges[p][1]
        ):
            sent.add((p, offset))
    return sent
