"""Kafka operations against the real embedded broker: probing the true end, exact range reads, groups."""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from dataclasses import replace

import pytest
from kafka import TopicPartition
from kafka.partitioner.default import murmur2

from dagster_project.dev.producer import produce
from dagster_project.kafka import clients
from dagster_project.kafka import io as io_module
from dagster_project.kafka.brokers.tansu import free_port
from dagster_project.kafka.io import (
    BrokerUnavailable,
    RangeBeyondTopic,
    check_reachable,
    commit_group_offsets,
    committed_group_offsets,
    ensure_topics,
    probe_partitions,
    read_range,
    topic_partitions,
    transaction_support,
)
from dagster_project.kafka.offsets import PartitionState, plan_batch
from dagster_project.kafka.settings import (
    BOOTSTRAP_ENV,
    CLIENT_ENV,
    CONFLUENT,
    KAFKA_PYTHON,
    BrokerConfigError,
    KafkaSettings,
)
from tests.conftest import synthetic_spec
from tests.helpers import produce_synthetic

ROWS = 401  # odd, so the two partitions cannot hold the same count by symmetry


def unique_topic(prefix: str = "io") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def produce_timestamped(settings: KafkaSettings, topic: str, partition: int, timestamps: list[int]) -> None:
    producer = clients.producer(settings)
    try:
        for i, ts in enumerate(timestamps):
            producer.send(topic, key=b"k%d" % i, value=b"v%d" % i, partition=partition, timestamp_ms=ts)
        producer.flush()
    finally:
        producer.close()


@pytest.fixture(scope="module")
def filled(kafka_bootstrap: str):
    """A 2-partition events topic holding ROWS synthetic events, and every record read back once."""
    settings = KafkaSettings.from_env(kafka_bootstrap)
    spec = synthetic_spec()
    assert produce_synthetic(settings, spec, ROWS) == ROWS
    ends = {s.partition: s.high_water for s in probe_partitions(settings, spec.events_topic, {})}
    records = {
        (r.partition, r.offset): r
        for r in read_range(settings, spec.events_topic, {p: (0, e) for p, e in ends.items()})
    }
    return settings, spec.events_topic, ends, records


def test_probe_of_a_missing_topic_is_empty_and_creates_nothing(kafka_settings: KafkaSettings) -> None:
    topic = unique_topic("missing")
    assert probe_partitions(kafka_settings, topic, {}) == []
    assert topic_partitions(kafka_settings, topic) == []
    admin = clients.admin(kafka_settings)
    try:
        assert topic not in admin.list_topics()
    finally:
        admin.close()


def test_probe_right_after_producing_sees_the_tail(kafka_settings: KafkaSettings, spec) -> None:
    rows = 1500
    assert produce_synthetic(kafka_settings, spec, rows) == rows
    states = probe_partitions(kafka_settings, spec.events_topic, {})
    assert [s.partition for s in states] == [0, 1]
    # The producer keys by event id and partitions by murmur2, so the per-partition counts are known.
    keys = [f"synthetic-{i}".encode() for i in range(rows)]
    per_partition = Counter((murmur2(k) & 0x7FFFFFFF) % spec.partitions for k in keys)
    assert {s.partition: s.high_water for s in states} == dict(per_partition)
    assert sum(s.high_water for s in states) == rows
    assert all(s.high_water > 0 and s.log_start == 0 and s.next_offset == 0 for s in states)
    assert [s.lag for s in states] == [s.high_water for s in states]
    read = list(read_range(kafka_settings, spec.events_topic, {s.partition: (0, s.high_water) for s in states}))
    assert len(read) == rows
    assert len({r.key for r in read}) == rows  # every produced event exactly once

    # ListOffsets LATEST is the naive way to find the end. Tansu answers with the last record
    # batch's base offset + 1 (FACTS.md), Apache Kafka with the true end: either way it never
    # exceeds the fetch high-water mark that probe_partitions uses.
    consumer = clients.range_reader(kafka_settings)
    try:
        listed = consumer.end_offsets([TopicPartition(spec.events_topic, s.partition) for s in states])
    finally:
        consumer.close()
    for s in states:
        end = listed[TopicPartition(spec.events_topic, s.partition)]
        assert end <= s.high_water, f"partition {s.partition}: ListOffsets {end} beyond the tail {s.high_water}"
        if end < s.high_water:  # the broker's bug: these records exist, and planning from `end` would miss them
            tail = list(read_range(kafka_settings, spec.events_topic, {s.partition: (end, s.high_water)}))
            assert [r.offset for r in tail] == list(range(end, s.high_water))


def test_partition_without_data_has_no_lag(kafka_settings: KafkaSettings) -> None:
    topic = unique_topic()
    ensure_topics(kafka_settings, [topic], partitions=2)
    assert probe_partitions(kafka_settings, topic, {}) == [PartitionState(0, 0, 0, 0), PartitionState(1, 0, 0, 0)]
    produce_timestamped(kafka_settings, topic, 0, [1_600_000_000_000] * 3)
    idle = probe_partitions(kafka_settings, topic, {})[1]
    assert (idle.high_water, idle.lag, idle.oldest_waiting_ts_ms) == (0, 0, None)


@pytest.mark.parametrize(
    ("next_offset", "expected_index"),
    [(None, 0), (0, 0), (7, 7), (19, 19), (20, None)],
)
def test_oldest_waiting_timestamp_is_the_record_at_next_offset(
    kafka_settings: KafkaSettings, next_offset: int | None, expected_index: int | None
) -> None:
    topic = unique_topic()
    ensure_topics(kafka_settings, [topic], partitions=1)
    base = 1_600_000_000_000
    timestamps = [base + 1000 * i + (i % 3) for i in range(20)]  # distinct and increasing
    produce_timestamped(kafka_settings, topic, 0, timestamps)

    [s] = probe_partitions(kafka_settings, topic, {} if next_offset is None else {0: next_offset})
    assert (s.next_offset, s.high_water) == (next_offset or 0, 20)
    if expected_index is None:
        assert (s.lag, s.oldest_waiting_ts_ms) == (0, None)
        return
    assert s.oldest_waiting_ts_ms == timestamps[expected_index]
    [record] = read_range(kafka_settings, topic, {0: (expected_index, expected_index + 1)})
    assert record.timestamp_ms == s.oldest_waiting_ts_ms


def test_a_waiting_row_stamped_in_the_future_ages_from_when_it_was_first_seen(kafka_settings: KafkaSettings) -> None:
    """A producer clock ahead (30 minutes: Apache Kafka refuses more than an hour by default, Tansu
    anything): its row's age was negative, so batch.max_wait_s never fired and a slow stream waited
    for batch.rows rows. It counts from the first probe that saw it instead."""
    topic = unique_topic()
    ensure_topics(kafka_settings, [topic], partitions=1)
    before = int(time.time() * 1000)
    produce_timestamped(kafka_settings, topic, 0, [before + 30 * 60_000] * 3)

    [first] = probe_partitions(kafka_settings, topic, {0: 0})
    time.sleep(1.1)
    [later] = probe_partitions(kafka_settings, topic, {0: 0})

    assert before <= first.oldest_waiting_ts_ms <= int(time.time() * 1000)
    assert later.oldest_waiting_ts_ms == first.oldest_waiting_ts_ms
    plan = plan_batch([later], min_rows=200, max_rows=1000, max_wait_s=1.0, now_ms=int(time.time() * 1000))
    assert plan.ranges == {0: (0, 3)} and "old >= batch.max_wait_s 1" in plan.reason


def test_the_oldest_waiting_timestamp_survives_a_fetch_that_brings_the_end_without_records(
    kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fetch can bring a partition's end offset and no record (seen on Tansu under load): the probe
    polls on for the record, else the age trigger and the early cut see no waiting time at all."""
    topic = unique_topic()
    ensure_topics(kafka_settings, [topic], partitions=1)
    timestamps = [1_600_000_000_000 + 1000 * i for i in range(20)]
    produce_timestamped(kafka_settings, topic, 0, timestamps)
    real_open = io_module._open_reader

    def open_reader(*args, **kwargs):
        reader = real_open(*args, **kwargs)
        real_poll, empty = reader.poll, [2]

        def poll(**poll_kwargs):
            polled = real_poll(**poll_kwargs)
            if polled and empty[0]:  # the answer's end offset stays known; its records are lost
                empty[0] -= 1
                for tp in polled:
                    reader.seek(tp, 7)
                return {}
            return polled

        reader.poll = poll
        return reader

    monkeypatch.setattr(io_module, "_open_reader", open_reader)
    [s] = probe_partitions(kafka_settings, topic, {0: 7})
    assert (s.high_water, s.lag, s.oldest_waiting_ts_ms) == (20, 13, timestamps[7])


def test_an_oldest_waiting_timestamp_seen_once_is_kept_when_a_later_probe_polls_no_record(
    kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sensor's next tick may get the end offset but no record for longer than the probe waits (seen
    through the daemon under load): the age it knew a tick before must not turn into "0 s old"."""
    topic = unique_topic()
    ensure_topics(kafka_settings, [topic], partitions=1)
    timestamps = [1_600_000_000_000 + 1000 * i for i in range(20)]
    produce_timestamped(kafka_settings, topic, 0, timestamps)
    [seen] = probe_partitions(kafka_settings, topic, {0: 7})
    assert seen.oldest_waiting_ts_ms == timestamps[7]

    real_open = io_module._open_reader

    def records_never_arrive(*args, **kwargs):
        reader = real_open(*args, **kwargs)
        real_poll = reader.poll

        def poll(**poll_kwargs):
            for tp in real_poll(**poll_kwargs):  # the end offset is known; every record is lost
                reader.seek(tp, 7)
            return {}

        reader.poll = poll
        return reader

    monkeypatch.setattr(io_module, "_open_reader", records_never_arrive)
    [later] = probe_partitions(kafka_settings, topic, {0: 7})
    assert (later.lag, later.oldest_waiting_ts_ms) == (13, timestamps[7])
    [other] = probe_partitions(kafka_settings, topic, {0: 9})  # an offset no probe has seen: unknown, not made up
    assert (other.lag, other.oldest_waiting_ts_ms) == (11, None)


def test_probe_past_the_end_reports_the_true_end(kafka_settings: KafkaSettings) -> None:
    """A learned offset beyond the broker's end (lost data) must show up, not be clamped away."""
    topic = unique_topic()
    ensure_topics(kafka_settings, [topic], partitions=1)
    produce_timestamped(kafka_settings, topic, 0, [1_600_000_000_000] * 4)
    [s] = probe_partitions(kafka_settings, topic, {0: 10})
    assert (s.next_offset, s.high_water, s.lag) == (10, 4, 0)


def fixed_ranges(ends: dict[int, int]) -> list[dict[int, tuple[int, int]]]:
    e0, e1 = ends[0], ends[1]
    return [
        {0: (0, e0), 1: (0, e1)},
        {0: (0, 1)},
        {1: (e1 - 1, e1)},
        {0: (17, 93), 1: (0, 40)},
        {1: (3, e1)},
        {0: (e0 // 2, e0 // 2 + 1), 1: (e1 // 3, e1 - 5)},
        {0: (10, 10), 1: (5, 9)},  # an empty range next to a real one
    ]


def random_ranges(ends: dict[int, int], seed: int) -> dict[int, tuple[int, int]]:
    rng = random.Random(seed)
    ranges = {}
    for p, end in ends.items():
        if rng.random() < 0.8:
            a, b = sorted(rng.sample(range(end + 1), 2))
            ranges[p] = (a, b)
    return ranges


def check_exact(records: list, ranges: dict[int, tuple[int, int]], everything: dict) -> None:
    for p, (start, end) in ranges.items():
        got = [r for r in records if r.partition == p]
        assert [r.offset for r in got] == list(range(start, end)), f"partition {p} of {ranges}"
        assert [(r.key, r.value, r.timestamp_ms) for r in got] == [
            (everything[p, o].key, everything[p, o].value, everything[p, o].timestamp_ms) for o in range(start, end)
        ]
    assert {r.partition for r in records} <= {p for p, (s, e) in ranges.items() if e > s}


# Both clients behind the seam must read exactly the same records.
CLIENTS = [pytest.param(KAFKA_PYTHON, id="kafka-python"), pytest.param(CONFLUENT, id="confluent")]


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("case", range(7))
def test_read_range_yields_exactly_the_requested_offsets(filled, case: int, client: str) -> None:
    settings, topic, ends, everything = filled
    settings = replace(settings, client=client)
    assert sum(ends.values()) == ROWS and len(everything) == ROWS
    ranges = fixed_ranges(ends)[case]
    check_exact(list(read_range(settings, topic, ranges)), ranges, everything)


@pytest.mark.parametrize("client", CLIENTS)
def test_read_range_on_random_sub_ranges(filled, client: str) -> None:
    settings, topic, ends, everything = filled
    settings = replace(settings, client=client)
    for seed in range(6):
        ranges = random_ranges(ends, seed)
        check_exact(list(read_range(settings, topic, ranges)), ranges, everything)


@pytest.mark.parametrize("ranges", [{}, {0: (5, 5)}, {0: (0, 0), 1: (7, 7)}])
def test_read_range_of_nothing_yields_nothing(filled, ranges) -> None:
    settings, topic, _, _ = filled
    assert list(read_range(settings, topic, ranges)) == []


def test_empty_range_does_not_even_connect() -> None:
    closed = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}")
    assert list(read_range(closed, "any", {0: (3, 3)})) == []


@pytest.mark.parametrize("client", CLIENTS)
def test_read_range_past_the_end_fails_loudly(filled, client: str) -> None:
    settings, topic, ends, _ = filled
    settings = replace(settings, client=client)
    with pytest.raises(
        RangeBeyondTopic, match=rf"range read stalled .*at {ends[0]}, expected up to {ends[0] + 3}"
    ) as info:
        list(read_range(settings, topic, {0: (ends[0] - 2, ends[0] + 3)}, stall_timeout_s=0.3))
    # The cause, not "a producer's transaction is still open" with a retry that could never help.
    assert f"partition 0 ends at {ends[0]}, before the range's end {ends[0] + 3}" in str(info.value)
    assert "transaction" not in str(info.value) and "let the stream's Kafka sensor plan the batch" in str(info.value)
    with pytest.raises(RangeBeyondTopic, match=rf"{topic} has no partition 5 \(it has 2\)"):
        list(read_range(settings, topic, {5: (0, 3)}, stall_timeout_s=0.3))


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda s: check_reachable(s), id="check_reachable"),
        pytest.param(lambda s: probe_partitions(s, "any", {}), id="probe_partitions"),
        pytest.param(lambda s: topic_partitions(s, "any"), id="topic_partitions"),
        pytest.param(lambda s: list(read_range(s, "any", {0: (0, 5)})), id="read_range"),
        pytest.param(lambda s: list(read_range(replace(s, client=CONFLUENT), "any", {0: (0, 5)})), id="confluent"),
    ],
)
def test_closed_port_fails_fast_and_says_what_to_set(call) -> None:
    address = f"127.0.0.1:{free_port()}"  # bound once and released: nothing listens there
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as info:
        call(KafkaSettings(bootstrap=address))
    # Generous bound: the point is not waiting for kafka-python's 30 s bootstrap timeout.
    assert time.monotonic() - started < 5
    assert BOOTSTRAP_ENV in str(info.value)
    assert address in str(info.value)


@pytest.mark.parametrize("bootstrap", ["localhost", "127.0.0.1:notaport", "127.0.0.1:99999", ":9092"])
def test_malformed_bootstrap_is_unreachable(bootstrap: str) -> None:
    """It said `invalid literal for int() with base 10: 'localhost'`, or for port 99999 (taken modulo
    65536 by the socket) `Connection refused`: neither names the fix."""
    with pytest.raises(BrokerUnavailable, match=BOOTSTRAP_ENV) as info:
        check_reachable(KafkaSettings(bootstrap=bootstrap), timeout_s=0.5)
    assert f"({bootstrap}: not host:port (e.g. localhost:9092))" in str(info.value)


def test_any_reachable_bootstrap_host_is_enough(kafka_bootstrap: str) -> None:
    check_reachable(KafkaSettings(bootstrap=f"127.0.0.1:{free_port()},{kafka_bootstrap}"))


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda s: check_reachable(s), id="check_reachable"),
        pytest.param(lambda s: probe_partitions(s, "any", {}), id="probe_partitions"),
        pytest.param(lambda s: produce(s, synthetic_spec(), [(b"k", b"{}")]), id="produce"),
    ],
)
def test_a_bootstrap_address_that_is_not_kafka_fails_fast_and_says_so(call, kafka_bootstrap: str) -> None:
    """An HTTP server on the bootstrap port accepts the connection; kafka-python then waited 30 s and
    ended in a bare `KafkaTimeoutError: Unable to bootstrap`. The real broker beside it still answers."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as info:
            call(KafkaSettings(bootstrap=address))
        assert time.monotonic() - started < 5
        assert f"{address}: it answered a Kafka request with" in str(info.value)
        assert "is it another service (HTTP?)" in str(info.value) and BOOTSTRAP_ENV in str(info.value)
        check_reachable(KafkaSettings(bootstrap=f"{address},{kafka_bootstrap}"))  # one real broker is enough
    finally:
        server.shutdown()
        server.server_close()


def test_group_offsets_round_trip(kafka_settings: KafkaSettings) -> None:
    group, topic, other = f"g-{uuid.uuid4().hex}", unique_topic(), unique_topic()
    ensure_topics(kafka_settings, [topic, other], partitions=2)
    assert committed_group_offsets(kafka_settings, group, topic) == {}

    commit_group_offsets(kafka_settings, group, topic, {0: 5, 1: 7})
    assert committed_group_offsets(kafka_settings, group, topic) == {0: 5, 1: 7}
    assert committed_group_offsets(kafka_settings, group, other) == {}

    commit_group_offsets(kafka_settings, group, topic, {0: 9})
    commit_group_offsets(kafka_settings, group, other, {1: 3})
    assert committed_group_offsets(kafka_settings, group, topic) == {0: 9, 1: 7}
    assert committed_group_offsets(kafka_settings, group, other) == {1: 3}


@pytest.mark.parametrize("client", CLIENTS)
def test_read_range_before_the_log_start_is_an_error_not_a_jump(kafka_settings: KafkaSettings, client: str) -> None:
    """Offsets the broker no longer has must fail the read, never silently skip ahead."""
    topic = f"gone-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_settings, [topic], 1)
    admin = clients.admin(kafka_settings)
    producer = clients.producer(kafka_settings)
    for i in range(10):
        producer.send(topic, value=b"%d" % i, partition=0)
    producer.flush()
    producer.close()
    try:
        admin.delete_records({TopicPartition(topic, 0): 5})
    except Exception as exc:  # noqa: BLE001 - a broker without DeleteRecords cannot lose offsets this way
        pytest.skip(f"broker cannot delete records: {exc!r}")
    finally:
        admin.close()
    # Both clients name the gap and the fix (confluent-kafka said only "Offset out of range (broker 1)").
    with pytest.raises(BrokerUnavailable, match=r"no longer has offsets \{0: 0\}.*OFFSET GAP.*streamfit offsets reset"):
        list(read_range(replace(kafka_settings, client=client), topic, {0: (0, 10)}, stall_timeout_s=2))


def test_unknown_client_name_says_what_to_set() -> None:
    with pytest.raises(BrokerConfigError, match=CLIENT_ENV):
        KafkaSettings(bootstrap="localhost:9092", client="librdkafka")


def test_auto_reads_with_confluent_when_installed() -> None:
    assert clients.range_reader_client(KafkaSettings(bootstrap="localhost:9092")) == CONFLUENT
    assert clients.range_reader_client(KafkaSettings(bootstrap="localhost:9092", client=KAFKA_PYTHON)) == KAFKA_PYTHON


def test_a_topic_with_another_partition_count_is_reported_at_start(kafka_settings: KafkaSettings, caplog) -> None:
    """A raw producer auto-creating <stream>.events with the broker's default count used to pass silently."""
    topic = unique_topic()
    ensure_topics(kafka_settings, [topic], partitions=1)
    with caplog.at_level("WARNING", logger="dagster_project.kafka.io"):
        ensure_topics(kafka_settings, [topic], partitions=2)
    assert any("has 1 partition(s) but the stream spec says 2" in r.getMessage() for r in caplog.records)


class _Message:
    """The part of a confluent-kafka Message that `_in_range` reads."""

    def __init__(self, partition: int, offset: int) -> None:
        self._p, self._o = partition, offset

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def timestamp(self) -> tuple[int, int]:
        return (1, 1000 + self._o)

    def key(self) -> bytes:
        return b"k%d" % self._o

    def value(self) -> bytes:
        return b"v%d-%d" % (self._p, self._o)


def test_in_range_keeps_the_per_message_rules_a_column_at_a_time() -> None:
    from dagster_project.kafka.io import RawRecord, _in_range

    todo = {0: (0, 10), 1: (0, 4)}
    position = {0: 5, 1: 2}
    messages = [_Message(0, o) for o in range(3, 12)] + [_Message(1, o) for o in range(1, 6)] + [_Message(2, 0)]
    chunk = _in_range(messages, todo, position)
    expected = [(0, o) for o in range(5, 10)] + [(1, o) for o in range(2, 4)]
    assert [(r.partition, r.offset) for r in chunk] == expected  # re-deliveries, the tail and partition 2 dropped
    assert chunk[0] == RawRecord(0, 5, 1005, b"k5", b"v0-5")
    assert position == {0: 12, 1: 6}  # past every message seen, as the per-message loop moves it

    position = {0: 0}
    chunk = _in_range([_Message(0, o) for o in range(4)], {0: (0, 10)}, position)
    assert [r.offset for r in chunk] == [0, 1, 2, 3] and position == {0: 4}
    assert _in_range([], {0: (0, 10)}, position) == [] and position == {0: 4}


def test_in_range_as_columns_keeps_the_same_records() -> None:
    """`columns=True` (the training read) gives the RawRecords' fields and rules as columns; a record's
    key and timestamp come whole from its message when asked for (a dead-lettered one)."""
    from dagster_project.kafka.io import _in_range

    messages = [_Message(0, o) for o in range(3, 12)] + [_Message(1, o) for o in range(1, 6)]
    named = _in_range(messages, {0: (0, 10), 1: (0, 4)}, {0: 5, 1: 2})
    position = {0: 5, 1: 2}
    columns = _in_range(messages, {0: (0, 10), 1: (0, 4)}, position, columns=True)
    assert columns.records() == named and position == {0: 12, 1: 6}
    assert (columns.partitions, columns.offsets) == ([r.partition for r in named], [r.offset for r in named])
    assert columns.values == [r.value for r in named]
    assert columns.take([6, 0]).records() == [named[6], named[0]]


def test_a_range_larger_than_the_prefetch_queue_reads_exactly(kafka_settings: KafkaSettings) -> None:
    """The confluent reader's prefetch queue is sized from the range's rows (`clients.range_prefetch`):
    records much larger than that estimate overflow it many times over, and the read still returns
    exactly the range, refilling the queue as it drains."""
    pytest.importorskip("confluent_kafka")
    topic = unique_topic("big")
    ensure_topics(kafka_settings, [topic], partitions=1)
    size = 16 * 1024
    producer = clients.producer(kafka_settings, max_request_size=2 * 1024 * 1024)
    try:
        for i in range(400):  # 6.4 MB, against a queue of 1 MB for 400 rows
            producer.send(topic, key=b"%d" % i, value=b"%06d" % i + b"x" * size, partition=0)
        producer.flush()
    finally:
        producer.close()
    assert clients.range_prefetch(390)["queued.max.messages.kbytes"] * 1024 < 390 * size / 4

    records = list(read_range(replace(kafka_settings, client=CONFLUENT), topic, {0: (5, 395)}))

    assert [r.offset for r in records] == list(range(5, 395))
    assert [r.value[:6] for r in records] == [b"%06d" % i for i in range(5, 395)]


@pytest.mark.parametrize("client", CLIENTS)
def test_a_range_read_never_yields_an_aborted_transaction_and_names_an_open_one(
    kafka_settings: KafkaSettings, broker_kind: str, client: str
) -> None:
    """Both clients read committed records only (kafka-python read uncommitted ones: the same offsets
    trained differently by client). The sensor's probe plans up to a still-open transaction, and a
    range read over one (planned earlier) stalls, and says so."""
    if broker_kind == "tansu" or not transaction_support(kafka_settings).works:
        pytest.skip("needs working Kafka transactions; Tansu's aborted records leak to read_committed readers")
    settings = replace(kafka_settings, client=client)
    topic = f"tx-{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [topic], 1)
    plain = clients.producer(settings)
    transactional = clients.transactional_producer(settings, f"streamfit-test-{uuid.uuid4().hex[:8]}")
    try:
        transactional.init_transactions()
        for i in range(10):
            plain.send(topic, value=b"before-%d" % i, partition=0)
        plain.flush()
        for outcome in ("abort", "commit"):
            transactional.begin_transaction()
            for i in range(5):
                transactional.send(topic, value=b"%s-%d" % (outcome.encode(), i), partition=0)
            transactional.flush()
            transactional.abort_transaction() if outcome == "abort" else transactional.commit_transaction()
        for i in range(10):
            plain.send(topic, value=b"after-%d" % i, partition=0)
        plain.flush()
        reader = clients.range_reader(settings)
        end = reader.end_offsets([TopicPartition(topic, 0)])[TopicPartition(topic, 0)]
        reader.close()

        values = [r.value for r in read_range(settings, topic, {0: (0, end)})]
        assert values == [
            *(b"before-%d" % i for i in range(10)),
            *(b"commit-%d" % i for i in range(5)),
            *(b"after-%d" % i for i in range(10)),
        ]

        transactional.begin_transaction()
        transactional.send(topic, value=b"open", partition=0)
        transactional.flush()
        [state] = probe_partitions(settings, topic, {0: 0})
        assert state.high_water == end, "a batch is planned up to the open transaction, not past it"
        with pytest.raises(
            BrokerUnavailable, match=f"a producer's transaction is still open .*readable up to {{0: {end}}}"
        ):
            list(read_range(settings, topic, {0: (end, end + 1)}, stall_timeout_s=2.0))
        transactional.abort_transaction()
    finally:
        plain.close()
        transactional.close()


@pytest.mark.parametrize("codec", ["gzip", "lz4", "snappy", "zstd"])
def test_compressed_topics_are_probed_and_read_by_both_clients(kafka_settings: KafkaSettings, codec: str) -> None:
    """Java and librdkafka producers often compress with lz4 or zstd; without the codec libraries the
    sensor's probe (always kafka-python) failed as if the broker were down, and nothing was learned."""
    topic = f"codec-{codec}-{uuid.uuid4().hex[:6]}"
    ensure_topics(kafka_settings, [topic], 1)
    producer = clients.producer(kafka_settings, compression_type=codec)
    sent = [b'{"n": %d, "pad": "%s"}' % (i, b"x" * (i % 50)) for i in range(300)]
    for value in sent:
        producer.send(topic, value=value, partition=0)
    producer.flush()
    producer.close()

    (state,) = probe_partitions(kafka_settings, topic, {0: 0})
    assert (state.high_water, state.oldest_waiting_ts_ms is not None) == (300, True)
    for client in (KAFKA_PYTHON, CONFLUENT):
        records = list(read_range(replace(kafka_settings, client=client), topic, {0: (0, 300)}))
        assert [r.value for r in records] == sent, client
