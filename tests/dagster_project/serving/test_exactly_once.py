"""Exactly-once predictions: Kafka transactions per poll batch, read back as read_committed readers see them.

Tests that need working transactions skip on Tansu (its aborted records stay visible to read_committed
readers, see ../shared/FACTS.md); the first test checks what `auto` resolves to on either broker.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
from kafka.errors import InvalidProducerEpochError, ProducerFencedError

from dagster_project.dev.faults import InjectedFault
from dagster_project.kafka import clients
from dagster_project.kafka.io import committed_group_offsets, ensure_topics, probe_partitions, transaction_support
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.registry.store import FilesystemRegistry
from dagster_project.serving import scorer_group
from dagster_project.serving.delivery import DeliveryUnavailable, resolve_delivery
from dagster_project.serving.scorer import ScorerFenced
from dagster_project.spec import StreamSpec
from tests.dagster_project.serving.support import (
    Client,
    Producer,
    produce_rows,
    running_service,
    synthetic_rows,
    train_version,
    wait_for,
)
from tests.dagster_project.serving.test_serve_command import ServeProcess
from tests.helpers import read_committed


@pytest.fixture
def transactions(broker_kind: str, kafka_settings: KafkaSettings) -> None:
    """Skip unless the session's broker has working transactions (Apache Kafka: `--broker kafka`)."""
    if broker_kind == "tansu":
        pytest.skip("needs working Kafka transactions; Tansu's aborted records leak to read_committed readers")
    support = transaction_support(kafka_settings)
    if not support.works:
        pytest.skip(support.reason)


def _events_ends(settings: KafkaSettings, spec: StreamSpec) -> dict[int, int]:
    return {s.partition: s.high_water for s in probe_partitions(settings, spec.events_topic, {})}


@pytest.mark.usefixtures("scorer_client")
def test_auto_is_exactly_once_where_transactions_work_and_healthz_says_why(
    spec: StreamSpec, kafka_settings: KafkaSettings, registry: FilesystemRegistry, on_tansu: bool
) -> None:
    delivery = resolve_delivery(kafka_settings, "auto")
    if on_tansu:
        assert delivery.mode == "at_least_once"
        assert "Tansu (cluster id 'tansu_cluster')" in delivery.reason and "read_committed" in delivery.reason
        with pytest.raises(DeliveryUnavailable, match="exactly-once delivery needs working Kafka transactions"):
            resolve_delivery(kafka_settings, "exactly-once")
    else:
        assert delivery.mode == "exactly_once", delivery
        assert delivery.reason.startswith("auto: the broker (cluster id") and "supports transactions" in delivery.reason
    assert resolve_delivery(kafka_settings, "at-least-once").mode == "at_least_once"

    train_version(registry, spec)
    rows = synthetic_rows(200)
    produce_rows(kafka_settings, spec, rows)
    with running_service(spec, kafka_settings, registry, replica_id="health-1") as service:
        wait_for(lambda: service.scorer.scored >= len(rows), 30, "200 predictions")
        status, health, _ = Client(service.url).request("GET", "/healthz")
        status_m, metrics, _ = Client(service.url).request("GET", "/metrics")
    assert status == 200 and health["delivery"]["mode"] == delivery.mode, health
    assert health["delivery"]["requested"] == "auto" and health["delivery"]["reason"] == delivery.reason
    other = "at_least_once" if delivery.exactly_once else "exactly_once"
    assert f'streamfit_scorer_delivery_mode{{mode="{delivery.mode}",stream="{spec.name}"}} 1.0' in metrics
    assert f'streamfit_scorer_delivery_mode{{mode="{other}",stream="{spec.name}"}} 0.0' in metrics
    if delivery.exactly_once:
        assert health["delivery"]["transactional_id"] == f"streamfit-{spec.name}-scorer-health-1"
        committed = f'streamfit_scorer_transactions_total{{outcome="committed",stream="{spec.name}"}}'
        assert committed in metrics
    print(f"\n{spec.name}: delivery {delivery.mode}: {delivery.reason}")


def test_a_fenced_zombie_cannot_commit(kafka_settings: KafkaSettings, transactions: None) -> None:
    """Two producers with one transactional id: the newer one's init fences the older and aborts its
    open transaction, so the zombie's commit fails and read_committed readers never see its records."""
    topic = f"fence-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_settings, [topic], 1)
    tid = f"streamfit-test-{uuid.uuid4().hex[:8]}"
    zombie = clients.transactional_producer(kafka_settings, tid)
    successor = None
    try:
        zombie.init_transactions()
        zombie.begin_transaction()
        zombie.send(topic, orjson.dumps({"who": "zombie"}))
        zombie.flush()  # on the broker, inside the open transaction

        successor = clients.transactional_producer(kafka_settings, tid)
        successor.init_transactions()  # bumps the epoch: the zombie is fenced, its transaction aborted
        with pytest.raises((ProducerFencedError, InvalidProducerEpochError)):
            zombie.commit_transaction()
        successor.begin_transaction()
        successor.send(topic, orjson.dumps({"who": "successor"}))
        successor.commit_transaction()
    finally:
        zombie.close(timeout=0)
        if successor is not None:
            successor.close(timeout=5)
    assert [r["who"] for r in read_committed(kafka_settings, topic)] == ["successor"]


@pytest.mark.usefixtures("scorer_client")
def test_a_scorer_fenced_by_another_process_with_its_replica_id_stops_loudly(
    spec: StreamSpec, kafka_settings: KafkaSettings, registry: FilesystemRegistry, transactions: None
) -> None:
    train_version(registry, spec)
    produce_rows(kafka_settings, spec, synthetic_rows(100))
    successor = None
    with pytest.raises(ScorerFenced, match="two live replicas share a replica id"):
        with running_service(spec, kafka_settings, registry, replica_id="twin", max_poll_records=20) as service:
            wait_for(lambda: service.scorer.scored >= 100, 30, "the first 100 predictions")
            successor = clients.transactional_producer(kafka_settings, service.scorer.transactional_id)
            successor.init_transactions()  # what a second live replica with the same id does at start-up
            produce_rows(kafka_settings, spec, synthetic_rows(100, start=100))
            client = Client(service.url)

            def fenced_health():
                health = client.request("GET", "/healthz")[1]
                reasons = health["reasons"]
                return any(r.startswith("the Kafka consumer is not running (FENCED: ") for r in reasons) and health

            health = wait_for(fenced_health, 30, "/healthz to report the scorer fenced")
            assert not health["ready"] and "another producer uses transactional id" in health["delivery"]["fenced"]
    if successor is not None:
        successor.close(timeout=0)
    ids = [p["id"] for p in read_committed(kafka_settings, spec.predictions_topic)]
    assert len(ids) == len(set(ids)) == 100, "the zombie committed nothing after it was fenced"


@pytest.mark.usefixtures("scorer_client")
def test_a_transaction_that_dies_before_its_commit_is_never_seen(
    spec: StreamSpec,
    kafka_settings: KafkaSettings,
    registry: FilesystemRegistry,
    monkeypatch: pytest.MonkeyPatch,
    transactions: None,
) -> None:
    """The exactly-once twin of test_scorer's crash test: predictions sent and offsets added to the
    transaction, then the process dies before the commit. Nothing is visible; the restart scores the
    batch again and every event ends up predicted exactly once."""
    train_version(registry, spec)
    rows = synthetic_rows(300)
    produce_rows(kafka_settings, spec, rows)
    options = {"max_poll_records": 50, "delivery": "exactly-once", "replica_id": "crash-1"}

    monkeypatch.setenv("STREAMFIT_FAULT", "scorer_before_transaction_commit")
    with pytest.raises(InjectedFault), running_service(spec, kafka_settings, registry, **options) as service:
        wait_for(lambda: service.scorer.link.describe()["state"].startswith("failed"), 30, "the crash")
    assert read_committed(kafka_settings, spec.predictions_topic) == []
    assert committed_group_offsets(kafka_settings, scorer_group(spec), spec.events_topic) == {}

    monkeypatch.delenv("STREAMFIT_FAULT")
    with running_service(spec, kafka_settings, registry, **options) as service:
        wait_for(lambda: service.scorer.scored >= len(rows), 30, "the restart to score everything")
        assert service.metrics.value("streamfit_scorer_transactions_total", outcome="committed") >= len(rows) / 50

    counts = Counter(p["id"] for p in read_committed(kafka_settings, spec.predictions_topic))
    assert set(counts) == {eid for eid, _, _ in rows} and set(counts.values()) == {1}, counts.most_common(3)
    assert committed_group_offsets(kafka_settings, scorer_group(spec), spec.events_topic) == _events_ends(
        kafka_settings, spec
    )


@pytest.mark.timeout(240)
@pytest.mark.usefixtures("scorer_client")
def test_serve_kill_9_mid_stream_and_restart_predicts_every_event_exactly_once(
    spec: StreamSpec,
    specs_dir: Path,
    kafka_settings: KafkaSettings,
    registry: FilesystemRegistry,
    transactions: None,
) -> None:
    train_version(registry, spec)
    options = ("--delivery", "exactly-once", "--replica-id", "kill-9")
    producer = Producer(kafka_settings, spec, rate=800, chunk=40)
    producer.start()
    first = second = None
    try:
        first = ServeProcess(spec, kafka_settings.bootstrap, *options)
        assert any(f"delivery exactly-once as streamfit-{spec.name}-scorer-kill-9" in line for line in first.seen)
        committed = f'streamfit_scorer_transactions_total{{outcome="committed",stream="{spec.name}"}}'

        def transactions_committed() -> float:
            text = Client(first.url).request("GET", "/metrics")[1]
            return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(committed)), 0.0)

        wait_for(lambda: transactions_committed() >= 10, 60, "ten committed transactions")
        first.kill()  # SIGKILL mid-stream: most likely inside an open transaction
        before = len(read_committed(kafka_settings, spec.predictions_topic))
        assert before > 0, "some predictions were committed before the kill"

        second = ServeProcess(spec, kafka_settings.bootstrap, *options)  # same replica id: fences and aborts
        time.sleep(2)
        sent = producer.stop()
        predicted = wait_for(
            lambda: (
                (ids := [p["id"] for p in read_committed(kafka_settings, spec.predictions_topic)])
                and len(set(ids)) >= len(sent)
                and ids
            ),
            90,
            f"a committed prediction for each of the {len(producer.sent)} events",
            interval_s=1.0,
        )
        status, health, _ = Client(second.url).request("GET", "/healthz")
        assert status == 200 and health["delivery"]["mode"] == "exactly_once", health
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(timeout=30) == 0
    finally:
        producer.halt.set()
        for process in (first, second):
            if process is not None:
                process.kill()

    duplicates = {eid: n for eid, n in Counter(predicted).items() if n > 1}
    assert not duplicates, f"{len(duplicates)} events predicted more than once: {list(duplicates.items())[:5]}"
    assert set(predicted) == set(sent), f"missing {len(set(sent) - set(predicted))}"
    assert committed_group_offsets(kafka_settings, scorer_group(spec), spec.events_topic) == _events_ends(
        kafka_settings, spec
    )
    print(f"\nexactly-once kill -9: {len(sent)} events, {before} committed before the kill, 0 duplicates")


def test_scorer_env_chooses_the_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster_project.serving.delivery import DELIVERY_ENV, REPLICA_ENV, replica_id_or_default, requested_delivery

    monkeypatch.setenv(DELIVERY_ENV, "AT-LEAST-ONCE")
    assert requested_delivery() == "at_least_once" and requested_delivery("exactly-once") == "exactly_once"
    monkeypatch.setenv(DELIVERY_ENV, "twice")
    with pytest.raises(ValueError, match="unknown delivery 'twice'"):
        requested_delivery()
    monkeypatch.setenv(REPLICA_ENV, "pod-3")
    assert replica_id_or_default(None, 8080) == "pod-3" and replica_id_or_default("a", 1) == "a"
    monkeypatch.delenv(REPLICA_ENV)
    assert replica_id_or_default(None, 8080) == f"{os.uname().nodename}-8080"
    with pytest.raises(ValueError, match="replica id"):
        replica_id_or_default("no spaces", 1)
