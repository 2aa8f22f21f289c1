"""confluent-kafka's transactional producer behind kafka-python's calls: fencing and commits as the scorer expects."""

from __future__ import annotations

import uuid

import orjson
import pytest
from kafka.errors import KafkaTimeoutError, ProducerFencedError

from dagster_project.kafka import clients
from dagster_project.kafka.brokers.tansu import free_port
from dagster_project.kafka.io import ensure_topics, transaction_support
from dagster_project.kafka.settings import KafkaSettings
from tests.helpers import read_committed


def test_a_fenced_confluent_zombie_cannot_commit(kafka_settings: KafkaSettings, broker_kind: str) -> None:
    """The newer producer's init fences the older one: its commit raises kafka-python's ProducerFencedError
    (the scorer then stops), and read_committed readers see only the successor's records."""
    if broker_kind == "tansu" or not transaction_support(kafka_settings).works:
        pytest.skip("needs working Kafka transactions; Tansu's aborted records leak to read_committed readers")
    topic = f"fence-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_settings, [topic], 1)
    tid = f"streamfit-test-{uuid.uuid4().hex[:8]}"
    zombie = clients.confluent_transactional_producer(kafka_settings, tid, step_timeout_s=10)
    successor = None
    try:
        zombie.init_transactions()
        zombie.begin_transaction()
        zombie.send(topic, orjson.dumps({"who": "zombie"}))
        zombie.flush(10)

        successor = clients.confluent_transactional_producer(kafka_settings, tid, step_timeout_s=10)
        successor.init_transactions()
        with pytest.raises(ProducerFencedError):
            zombie.commit_transaction()
        successor.begin_transaction()
        successor.send(topic, orjson.dumps({"who": "successor"}))
        successor.flush(10)
        successor.commit_transaction()
    finally:
        zombie.close(timeout=0)
        if successor is not None:
            successor.close(timeout=5)
    assert [r["who"] for r in read_committed(kafka_settings, topic)] == ["successor"]


def test_no_coordinator_is_a_timeout_the_scorer_retries() -> None:
    settings = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}")
    producer = clients.confluent_transactional_producer(settings, "streamfit-test-nobody", step_timeout_s=1)
    with pytest.raises(KafkaTimeoutError, match="init_transactions"):
        producer.init_transactions()
    producer.close(timeout=0)


def test_a_confluent_zombie_fenced_between_batches_fails_its_next_flush(
    kafka_settings: KafkaSettings, broker_kind: str
) -> None:
    """A scorer fenced between two transactions learns it when it flushes the next batch: kafka-python's
    ProducerFencedError (not confluent-kafka 2.16's SystemError around it), remembered as `fatal_error`."""
    if broker_kind == "tansu" or not transaction_support(kafka_settings).works:
        pytest.skip("needs working Kafka transactions; Tansu's aborted records leak to read_committed readers")
    topic = f"fence-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_settings, [topic], 1)
    tid = f"streamfit-test-{uuid.uuid4().hex[:8]}"
    zombie = clients.confluent_transactional_producer(kafka_settings, tid, step_timeout_s=10)
    successor = clients.transactional_producer(kafka_settings, tid)
    try:
        zombie.init_transactions()
        successor.init_transactions()
        zombie.begin_transaction()
        zombie.send_many(topic, [b"k"], [b"zombie"])
        with pytest.raises(ProducerFencedError, match="fenced"):
            zombie.flush(10)
        assert isinstance(zombie.fatal_error, ProducerFencedError)
    finally:
        zombie.close(timeout=0)
        successor.close(timeout=0)
    assert read_committed(kafka_settings, topic) == []
