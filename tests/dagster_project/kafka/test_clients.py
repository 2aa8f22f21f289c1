"""The Kafka client factories (kafka/clients.py) on the session's broker: each client does its job
with the tuning from settings.py, the range-reading client is chosen as configured, and every
factory runs the security preflight before it builds anything.

`range_reader_client` picking confluent-kafka when installed is also in
tests/dagster_project/kafka/test_io.py::test_auto_reads_with_confluent_when_installed.
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import replace

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from dagster_project.kafka import clients
from dagster_project.kafka.fast_producer import ConfluentProducer
from dagster_project.kafka.io import (
    committed_group_offsets,
    ensure_topics,
    probe_partitions,
    read_range,
    topic_partitions,
)
from dagster_project.kafka.settings import (
    CAFILE_ENV,
    CLIENT_ENV,
    CONFLUENT,
    FETCH_MAX_WAIT_MS,
    GROUP_HEARTBEAT_INTERVAL_MS,
    GROUP_SESSION_TIMEOUT_MS,
    KAFKA_PYTHON,
    BrokerConfigError,
    KafkaSettings,
)
from tests.helpers import read_topic


def _topic(settings: KafkaSettings, partitions: int = 1) -> str:
    topic = f"clients-{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [topic], partitions)
    return topic


@pytest.fixture
def without_confluent(monkeypatch: pytest.MonkeyPatch) -> None:
    """confluent-kafka as if it were not installed (importlib finds no spec for a None module)."""
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)


def test_range_reader_client_follows_the_setting() -> None:
    auto = KafkaSettings(bootstrap="b:9092")
    assert clients.range_reader_client(replace(auto, client=KAFKA_PYTHON)) == KAFKA_PYTHON
    assert clients.range_reader_client(replace(auto, client=CONFLUENT)) == CONFLUENT


def test_without_confluent_auto_falls_back_and_an_explicit_choice_says_what_to_do(without_confluent) -> None:
    auto = KafkaSettings(bootstrap="b:9092")
    assert clients.range_reader_client(auto) == KAFKA_PYTHON
    with pytest.raises(BrokerConfigError) as caught:
        clients.range_reader_client(replace(auto, client=CONFLUENT))
    message = str(caught.value)
    assert f"{CLIENT_ENV}={CONFLUENT} but confluent-kafka is not installed" in message
    assert "pip install 'streamfit[fast]'" in message and f"{CLIENT_ENV}={KAFKA_PYTHON}" in message


def test_producer_and_admin_write_to_the_broker(kafka_settings: KafkaSettings) -> None:
    admin = clients.admin(kafka_settings)
    topic = f"clients-{uuid.uuid4().hex[:8]}"
    try:
        admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        admin.close()
    assert topic_partitions(kafka_settings, topic) == [0, 1, 2]

    producer = clients.producer(kafka_settings)
    # acks=all by default (kafka-python: -1), which keeps kafka-python's idempotent producer on
    assert producer.config["acks"] == -1 and producer.config["enable_idempotence"]
    assert producer.config["client_id"] == "streamfit"
    for i in range(5):
        producer.send(topic, key=b"k%d" % i, value=b"v%d" % i, partition=i % 3)
    producer.flush()
    producer.close()
    assert sorted(r["_key"] for r in _read_raw(kafka_settings, topic)) == [b"k%d" % i for i in range(5)]


def _read_raw(settings: KafkaSettings, topic: str) -> list[dict]:
    ends = {s.partition: (s.log_start, s.high_water) for s in probe_partitions(settings, topic, {})}
    return [{"_key": r.key, "value": r.value} for r in read_range(settings, topic, ends)]


def test_producer_overrides_win(kafka_settings: KafkaSettings) -> None:
    producer = clients.producer(kafka_settings, acks=1, linger_ms=0)
    try:
        assert producer.config["acks"] == 1 and producer.config["linger_ms"] == 0
    finally:
        producer.close()


def test_acks_come_from_the_settings(kafka_settings: KafkaSettings) -> None:
    producer = clients.producer(replace(kafka_settings, acks="1"))
    try:
        assert producer.config["acks"] == 1
    finally:
        producer.close()
    assert KafkaSettings.from_env("b:9092", {"STREAMFIT_KAFKA_ACKS": "-1"}).acks == "all"
    with pytest.raises(BrokerConfigError, match="STREAMFIT_KAFKA_ACKS"):
        KafkaSettings(bootstrap="b:9092", acks="2")


def test_range_reader_reads_exact_offsets_without_a_group(kafka_settings: KafkaSettings) -> None:
    topic = _topic(kafka_settings)
    producer = clients.producer(kafka_settings)
    for i in range(10):
        producer.send(topic, value=b"%d" % i, partition=0)
    producer.flush()
    producer.close()

    reader = clients.range_reader(kafka_settings)
    try:
        assert isinstance(reader, KafkaConsumer)
        assert reader.config["group_id"] is None and reader.config["enable_auto_commit"] is False
        assert reader.config["auto_offset_reset"] == "none"  # a lost offset fails, never jumps
        assert reader.config["fetch_max_wait_ms"] == FETCH_MAX_WAIT_MS
        partition = TopicPartition(topic, 0)
        reader.assign([partition])
        reader.seek(partition, 4)
        values: list[bytes] = []
        for _ in range(50):
            for records in reader.poll(timeout_ms=200).values():
                values += [r.value for r in records]
            if len(values) >= 6:
                break
        assert values == [b"%d" % i for i in range(4, 10)]
    finally:
        reader.close()


def test_confluent_range_reader_reads_exact_offsets_and_commits_nothing(kafka_settings: KafkaSettings) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    topic = _topic(kafka_settings)
    producer = clients.producer(kafka_settings)
    for i in range(10):
        producer.send(topic, value=b"%d" % i, partition=0)
    producer.flush()
    producer.close()

    reader = clients.confluent_range_reader(kafka_settings)
    try:
        assert isinstance(reader, confluent_kafka.Consumer)
        reader.assign([confluent_kafka.TopicPartition(topic, 0, 7)])
        values: list[bytes] = []
        for _ in range(50):
            message = reader.poll(0.2)
            if message is not None and message.error() is None:
                values.append(message.value())
            if len(values) == 3:
                break
        assert values == [b"7", b"8", b"9"]
    finally:
        reader.close()
    assert committed_group_offsets(kafka_settings, "streamfit-range-reader", topic) == {}


def test_group_consumer_joins_with_short_group_timeouts(kafka_settings: KafkaSettings) -> None:
    topic = _topic(kafka_settings)
    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = clients.group_consumer(kafka_settings, group, auto_offset_reset="earliest")
    try:
        assert consumer.config["group_id"] == group and consumer.config["enable_auto_commit"] is False
        assert consumer.config["session_timeout_ms"] == GROUP_SESSION_TIMEOUT_MS
        assert consumer.config["heartbeat_interval_ms"] == GROUP_HEARTBEAT_INTERVAL_MS
        assert consumer.config["auto_offset_reset"] == "earliest"  # overrides win
        producer = clients.producer(kafka_settings)
        producer.send(topic, value=b"hello")
        producer.flush()
        producer.close()
        consumer.subscribe([topic])
        got: list[bytes] = []
        for _ in range(100):
            for records in consumer.poll(timeout_ms=200).values():
                got += [r.value for r in records]
            if got:
                break
        assert got == [b"hello"]
    finally:
        consumer.close()


@pytest.mark.parametrize("client", [KAFKA_PYTHON, CONFLUENT])
def test_fast_producer_delivers_with_either_client(kafka_settings: KafkaSettings, client: str) -> None:
    if client == CONFLUENT:
        pytest.importorskip("confluent_kafka")
    settings = replace(kafka_settings, client=client)
    topic = _topic(settings)

    producer = clients.fast_producer(settings)
    try:
        assert isinstance(producer, ConfluentProducer if client == CONFLUENT else KafkaProducer)
        futures = [producer.send(topic, key=b"id-%d" % i, value=b'{"n": %d}' % i) for i in range(20)]
        producer.flush(timeout=30)
    finally:
        producer.close()

    assert all(f.succeeded() for f in futures)
    assert sorted(r["n"] for r in read_topic(settings, topic)) == list(range(20))


def test_fast_producer_falls_back_to_kafka_python_without_confluent(
    kafka_settings: KafkaSettings, without_confluent
) -> None:
    producer = clients.fast_producer(kafka_settings)
    try:
        assert isinstance(producer, KafkaProducer)
    finally:
        producer.close()


FACTORIES = {
    "range_reader": clients.range_reader,
    "confluent_range_reader": clients.confluent_range_reader,
    "fast_producer": clients.fast_producer,
    "group_consumer": lambda settings: clients.group_consumer(settings, "g"),
    "producer": clients.producer,
    "admin": clients.admin,
}


@pytest.mark.parametrize("factory", FACTORIES.values(), ids=FACTORIES.keys())
def test_every_factory_runs_the_security_preflight_first(factory, kafka_bootstrap: str, tmp_path) -> None:
    if factory is clients.confluent_range_reader:
        pytest.importorskip("confluent_kafka")
    missing = tmp_path / "ca.pem"
    settings = KafkaSettings(bootstrap=kafka_bootstrap, security_protocol="SSL", ssl_cafile=str(missing))
    with pytest.raises(BrokerConfigError, match=f"{CAFILE_ENV}={missing}: no such file"):
        factory(settings)


def test_range_prefetch_follows_the_range_within_bounds() -> None:
    small, medium, large = (clients.range_prefetch(rows) for rows in (1_000, 200_000, 10_000_000))
    assert small["queued.max.messages.kbytes"] == clients.PREFETCH_MIN_KBYTES
    assert small["queued.max.messages.kbytes"] < medium["queued.max.messages.kbytes"]
    assert large["queued.max.messages.kbytes"] == clients.PREFETCH_MAX_KBYTES
    # librdkafka's own backoff (1 s) would stall a read every time the queue fills before the range ends
    assert all(p["fetch.queue.backoff.ms"] <= 10 for p in (small, medium, large))


def test_readers_keep_reading_a_partition_of_many_small_record_batches(tmp_path):
    """A producer that sends one event per record batch (any low-rate producer, the demo's) filled the
    embedded broker with batches it scans on each fetch: after 11 minutes of the demo, fetches with a
    10 ms max_wait came back empty, training halted on `range read stalled` and the scorer stopped
    scoring while /readyz said ready. Both clients, as training and the scorer read."""
    from dagster_project.kafka.brokers.tansu import EmbeddedBroker

    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as broker:
        settings = KafkaSettings.from_env(broker.bootstrap)
        ensure_topics(settings, ["many.events"], 1)
        held = 45_000
        _one_record_per_batch(broker.bootstrap, "many.events", held)

        tail = {0: (held - 300, held)}
        for client in [KAFKA_PYTHON] + ([CONFLUENT] if clients.range_reader_client(settings) == CONFLUENT else []):
            chosen = replace(settings, client=client)
            read = [r.offset for r in read_range(chosen, "many.events", tail, stall_timeout_s=10)]
            assert read == list(range(held - 300, held)), client
            assert _scorer_side_reads(chosen, client, "many.events", held - 300) == 300, client


def _one_record_per_batch(bootstrap: str, topic: str, n: int) -> None:
    """`n` events to partition 0, each in its own record batch, as a producer of a few events a second sends them."""
    values = [b'{"id": %d}' % i for i in range(n)]
    try:
        from confluent_kafka import Producer  # several times quicker to fill the partition
    except ImportError:
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, batch_size=1)
        for value in values:
            producer.send(topic, value=value, partition=0)
        producer.flush()
        producer.close()
        return
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "batch.num.messages": 1})
    for i, value in enumerate(values):
        producer.produce(topic, value=value, partition=0)
        if i % 1000 == 999:
            producer.flush()
    assert producer.flush(30) == 0


def _scorer_side_reads(settings: KafkaSettings, client: str, topic: str, start: int) -> int:
    """How many records the scorer's kind of consumer reads from `start` within 10 s."""
    if client == CONFLUENT:
        from confluent_kafka import TopicPartition as ConfluentPartition

        consumer = clients.confluent_group_consumer(settings, "many-readers")
        consumer.assign([ConfluentPartition(topic, 0, start)])
        read = lambda: len(consumer.consume(num_messages=300, timeout=0.2))  # noqa: E731
    else:
        consumer = clients.group_consumer(settings, "many-readers")
        consumer.assign([TopicPartition(topic, 0)])
        consumer.seek(TopicPartition(topic, 0), start)
        read = lambda: sum(len(r) for r in consumer.poll(timeout_ms=200, max_records=300).values())  # noqa: E731
    try:
        got, deadline = 0, time.monotonic() + 10
        while got < 300 and time.monotonic() < deadline:
            got += read()
        return got
    finally:
        consumer.close()
