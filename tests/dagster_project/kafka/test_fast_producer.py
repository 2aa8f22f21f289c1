"""The confluent-kafka producer adapter keeps kafka-python's contract where the scorer relies on it."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import pytest
from kafka.errors import KafkaTimeoutError

from dagster_project.kafka import clients
from dagster_project.kafka.brokers.tansu import free_port
from dagster_project.kafka.fast_producer import ConfluentProducer
from dagster_project.kafka.io import ensure_topics, probe_partitions, read_range, topic_partitions
from dagster_project.kafka.settings import CONFLUENT, KAFKA_PYTHON, KafkaSettings


def _keys_by_partition(settings: KafkaSettings, topic: str) -> dict[bytes, int]:
    partitions = topic_partitions(settings, topic)
    ends = {s.partition: s.high_water for s in probe_partitions(settings, topic, {p: 0 for p in partitions})}
    return {r.key: r.partition for r in read_range(settings, topic, {p: (0, e) for p, e in ends.items()})}


def test_keyed_records_land_where_kafka_python_puts_them(kafka_settings: KafkaSettings) -> None:
    """Predictions and labels are joined by key: both producers must map a key to the same partition."""
    keys = [f"event-{i}".encode() for i in range(200)]
    placed = {}
    for client in (KAFKA_PYTHON, CONFLUENT):
        topic = f"fast-{uuid.uuid4().hex[:8]}"
        ensure_topics(kafka_settings, [topic], 4)
        settings = replace(kafka_settings, client=client)
        producer = clients.fast_producer(settings, acks="all")
        try:
            assert isinstance(producer, ConfluentProducer) == (client == CONFLUENT)
            futures = [producer.send(topic, key=k, value=b"v") for k in keys]
            producer.flush(timeout=10)
            assert all(f.succeeded() for f in futures)
        finally:
            producer.close()
        placed[client] = _keys_by_partition(kafka_settings, topic)
    assert placed[CONFLUENT] == placed[KAFKA_PYTHON]
    assert len(set(placed[CONFLUENT].values())) == 4  # the keys really were spread


def test_unacknowledged_records_fail_the_flush_and_their_futures() -> None:
    """Nothing listens: flush must not pretend the records were written (the scorer then re-reads)."""
    settings = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}", client=CONFLUENT)
    producer = ConfluentProducer(settings.librdkafka_config() | {"message.timeout.ms": 1500})
    errors: list[Exception] = []
    future = producer.send("nowhere", key=b"k", value=b"v").add_errback(errors.append)
    with pytest.raises(KafkaTimeoutError, match="not acknowledged"):
        producer.flush(timeout=0.5)
    assert not future.succeeded()
    producer.close(timeout=3)  # the message times out: its future fails and the errback runs
    assert future.failed() and errors and "delivery failed" in str(errors[0])


def test_a_batch_sent_at_once_is_acknowledged_together(kafka_settings: KafkaSettings) -> None:
    topic = f"fast-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_settings, [topic], 2)
    producer = clients.fast_producer(replace(kafka_settings, client=CONFLUENT), acks="all")
    keys = [f"event-{i}".encode() for i in range(300)]
    batch = producer.send_many(topic, keys, [b"v"] * len(keys))
    assert not batch.succeeded()  # not flushed yet: nothing is known
    producer.flush(timeout=10)
    assert batch.succeeded() and batch.sent == 300
    producer.close()
    assert sorted(_keys_by_partition(kafka_settings, topic)) == sorted(keys)


def test_a_batch_nobody_acknowledged_fails_with_every_record() -> None:
    settings = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}", client=CONFLUENT)
    producer = ConfluentProducer(settings.librdkafka_config() | {"message.timeout.ms": 1500})
    batch = producer.send_many("nowhere", [b"a", b"b"], [b"1", b"2"])
    with pytest.raises(KafkaTimeoutError, match="2 records not acknowledged"):
        producer.flush(timeout=0.5)
    assert not batch.succeeded()
    producer.close(timeout=3)  # both time out and are reported
    assert len(batch.errors) == 2 and "delivery failed" in str(batch.errors[0])


def test_a_closed_producer_stops_reconnecting_even_while_still_referenced(capfd: pytest.CaptureFixture) -> None:
    """A scorer or benchmark object can keep its producer long after close(); librdkafka must stop then, not keep
    logging "Connect ... failed" to a broker that is gone (it did, at the end of every CI log)."""
    settings = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}", client=CONFLUENT)
    retry_fast = {"reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 100}
    producer = ConfluentProducer(settings.librdkafka_config() | retry_fast)
    batch = producer.send_many("nowhere", [b"k"], [b"v"])
    # it is trying: wait for librdkafka's first failed connect to be logged (a fixed 0.5 s was a guess)
    logged, deadline = "", time.monotonic() + 15
    while "Connect to" not in (logged := logged + capfd.readouterr().err):
        assert time.monotonic() < deadline, f"librdkafka logged no failed connect within 15 s: {logged[-2000:]}"
        time.sleep(0.1)
    producer.close(timeout=0.1)
    assert batch.errors and not batch.succeeded()  # the dropped record is reported as failed, not lost silently
    capfd.readouterr()
    time.sleep(1.0)
    assert "Connect to" not in capfd.readouterr().err
