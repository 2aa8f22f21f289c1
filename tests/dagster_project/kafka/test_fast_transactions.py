"""confluent-kafka's transactional producer behind kafka-python's calls: fencing and commits as the scorer expects."""

from __future__ import annotations

import threading
import time
import uuid

import orjson
import pytest
from kafka.errors import KafkaTimeoutError, ProducerFencedError

from dagster_project.kafka import clients, fast_transactions
from dagster_project.kafka.brokers.tansu import free_port
from dagster_project.kafka.fast_transactions import OVERDUE_GRACE_S, ClientCallsStuck, stuck_calls
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


def test_a_librdkafka_call_stuck_past_its_timeout_is_given_up() -> None:
    """librdkafka 2.16's send_offsets_to_transaction can wait forever on a group coordinator it cached before the
    brokers went away (issues #5456, #5511; it hung the scorer after a whole-cluster restart). The adapter gives the
    call up soon after its timeout with kafka-python's retriable KafkaTimeoutError, so the scorer makes a new
    producer, and discarding the stuck one leaves it alone (purging or destroying it mid-call is unsafe)."""
    settings = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}")
    producer = clients.confluent_transactional_producer(settings, "streamfit-test-stuck", step_timeout_s=0.2)
    released = threading.Event()

    class StuckInLibrdkafka:
        """Stands in for the librdkafka handle, inside a call that ignores its timeout until released."""

        def send_offsets_to_transaction(self, *_args) -> None:
            released.wait(15)

        def purge(self) -> None:
            raise AssertionError("purged while librdkafka is still inside a call")

    producer._producer = StuckInLibrdkafka()
    started = time.monotonic()
    try:
        with pytest.raises(KafkaTimeoutError, match="send_offsets_to_transaction got no answer"):
            producer.send_offsets_to_transaction({}, group_metadata=None)
        assert time.monotonic() - started < 0.2 + OVERDUE_GRACE_S + 1.0
        producer.close(timeout=0)  # the scorer's discard: must not purge under the running call
    finally:
        released.set()


def _stuck_producer(settings: KafkaSettings, released: threading.Event):
    """A confluent transactional producer whose librdkafka handle hangs in send_offsets_to_transaction."""

    class StuckInLibrdkafka:
        def send_offsets_to_transaction(self, *_args) -> None:
            released.wait(30)

        def abort_transaction(self, *_args) -> None:
            raise AssertionError("a second call stacked on a producer whose call is stuck")

    producer = clients.confluent_transactional_producer(settings, f"streamfit-test-{uuid.uuid4().hex[:6]}", 0.05)
    producer._producer = StuckInLibrdkafka()
    return producer


def test_stuck_calls_are_bounded_and_then_the_scorer_is_told_to_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each given-up call keeps its producer alive until librdkafka returns (maybe never): one per whole-cluster
    outage. A given-up producer refuses further calls at once (an abort would wait on the same dead coordinator),
    and past MAX_STUCK_CALLS alive the process stops with a message that names the fix, instead of leaking on."""
    monkeypatch.setattr(fast_transactions, "OVERDUE_GRACE_S", 0.05)
    monkeypatch.setattr(fast_transactions, "MAX_STUCK_CALLS", 2)
    settings = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}")
    released = threading.Event()
    producers = []
    _wait_until_no_call_is_stuck()  # an earlier test's released call may still be returning
    try:
        for _ in range(2):
            producer = _stuck_producer(settings, released)
            producers.append(producer)
            with pytest.raises(KafkaTimeoutError):
                producer.send_offsets_to_transaction({}, group_metadata=None)
            with pytest.raises(KafkaTimeoutError, match="given up"):
                producer.abort_transaction()
        producer = _stuck_producer(settings, released)
        producers.append(producer)
        with pytest.raises(ClientCallsStuck, match="restart the scorer"):
            producer.send_offsets_to_transaction({}, group_metadata=None)
    finally:
        released.set()
        for producer in producers:
            producer.close(timeout=0)
    _wait_until_no_call_is_stuck()  # released: the calls return and stop counting


def _wait_until_no_call_is_stuck() -> None:
    deadline = time.monotonic() + 5
    while stuck_calls() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stuck_calls() == 0


def test_a_producer_that_lost_every_broker_says_so() -> None:
    """After every broker was unreachable, librdkafka may keep a group coordinator that is gone: the producer says
    so, and the scorer replaces it before its next transaction rather than hang in send_offsets_to_transaction."""
    settings = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}")
    producer = clients.confluent_transactional_producer(settings, "streamfit-test-lost", step_timeout_s=1)
    try:
        deadline = time.monotonic() + 10
        while not producer.lost_every_broker():
            assert time.monotonic() < deadline, "librdkafka never reported every broker down"
            time.sleep(0.1)
    finally:
        producer.close(timeout=0)
