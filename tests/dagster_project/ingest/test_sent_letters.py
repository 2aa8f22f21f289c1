"""Which messages the trainer already dead-lettered (ingest/sent_letters.py), read from a real DLQ."""

from __future__ import annotations

import time

import orjson

from dagster_project.ingest.sent_letters import (
    CLOCK_SKEW_MS,
    dead_lettered,
    dlq_starts,
    planned_dlq_from,
    written_since,
)
from dagster_project.kafka import clients
from dagster_project.kafka.io import ensure_topics
from tests.conftest import synthetic_spec

NOW_MS = 1_800_000_000_000


def _letter(spec, offset: int, component: str = "trainer", partition: int = 0) -> bytes:
    return orjson.dumps(
        {"reason": "r", "topic": spec.events_topic, "partition": partition, "offset": offset, "component": component}
    )


def test_written_since_is_the_oldest_message_less_the_clock_skew() -> None:
    assert written_since([NOW_MS - 5_000, NOW_MS - 60_000], now_ms=NOW_MS) == NOW_MS - 60_000 - CLOCK_SKEW_MS
    # Nothing says when such a message arrived: the whole DLQ is read.
    assert written_since([NOW_MS - 5_000, None], now_ms=NOW_MS) is None
    assert written_since([NOW_MS - 5_000, -1], now_ms=NOW_MS) is None
    assert written_since([NOW_MS + CLOCK_SKEW_MS + 1], now_ms=NOW_MS) is None  # a producer's clock far ahead
    assert written_since([], now_ms=NOW_MS) is None


def test_dead_lettered_names_the_trainer_s_letters_of_the_ranges_written_since_the_bound(
    kafka_settings, on_tansu
) -> None:
    """A retry reads the DLQ from the bound on (ListOffsets by time), not from the start: a letter about
    the same offset written before the bound (long ago) is not read. Tansu answers ListOffsets by time
    with the log's start: there the whole DLQ is read, more than needed and nothing less."""
    spec = synthetic_spec(partitions=1)
    ensure_topics(kafka_settings, [spec.events_topic, spec.dlq_topic], 1)
    now_ms = int(time.time() * 1000)
    old_ms = now_ms - 3 * 3600 * 1000
    producer = clients.producer(kafka_settings)
    producer.send(spec.dlq_topic, value=_letter(spec, 5), timestamp_ms=old_ms)  # long ago, before the bound
    producer.send(spec.dlq_topic, value=_letter(spec, 7), timestamp_ms=now_ms)
    producer.send(spec.dlq_topic, value=_letter(spec, 8, component="scorer"), timestamp_ms=now_ms)
    producer.send(spec.dlq_topic, value=_letter(spec, 50), timestamp_ms=now_ms)  # outside the ranges
    producer.send(spec.dlq_topic, value=b"not a dead letter", timestamp_ms=now_ms)
    producer.flush()
    producer.close()
    ranges = {0: (0, 10)}

    everything = {(0, 5), (0, 7)}
    assert dead_lettered(kafka_settings, spec, ranges) == everything  # no bound: the whole DLQ
    recent = dead_lettered(kafka_settings, spec, ranges, since_ms=now_ms - 60_000)
    assert recent == (everything if on_tansu else {(0, 7)})
    nothing_so_recent = dead_lettered(kafka_settings, spec, ranges, since_ms=now_ms + 3_600_000)
    assert nothing_so_recent == (everything if on_tansu else set())


def test_the_dlq_is_read_from_the_planned_offsets_clamped_to_what_the_partition_holds() -> None:
    extents = {0: (0, 40), 1: (30, 50), 2: (0, 5), 3: (0, 9)}
    planned = {0: 25, 1: 10, 2: 20}  # 1: retention deleted below it; 2: recreated shorter; 3: came later
    assert dlq_starts(extents, planned) == {0: (25, 40), 1: (30, 50), 2: (0, 5), 3: (0, 9)}
    assert dlq_starts(extents, {}) == extents  # no DLQ when the batch was planned: from each log start


def test_dead_lettered_reads_from_the_planned_offsets_whatever_the_letters_timestamps(kafka_settings) -> None:
    """The plan's DLQ ends bound the read by offset: a letter before them (an older batch's) is not
    read, one after them is, though its timestamp (a clock hours behind) would put it before a time bound."""
    spec = synthetic_spec(partitions=1)
    assert planned_dlq_from(kafka_settings, spec) == {}  # no DLQ yet: read it from its start
    ensure_topics(kafka_settings, [spec.events_topic, spec.dlq_topic], 1)
    producer = clients.producer(kafka_settings)
    producer.send(spec.dlq_topic, value=_letter(spec, 5))
    producer.flush()
    planned = planned_dlq_from(kafka_settings, spec)
    assert planned == {0: 1}
    long_ago_ms = int(time.time() * 1000) - 3 * 3600 * 1000
    producer.send(spec.dlq_topic, value=_letter(spec, 7), timestamp_ms=long_ago_ms)
    producer.flush()
    producer.close()
    ranges = {0: (0, 10)}

    assert dead_lettered(kafka_settings, spec, ranges, dlq_from=planned) == {(0, 7)}
    assert dead_lettered(kafka_settings, spec, ranges, since_ms=int(time.time() * 1000), dlq_from=planned) == {(0, 7)}
    assert dead_lettered(kafka_settings, spec, ranges, dlq_from={}) == {(0, 5), (0, 7)}
