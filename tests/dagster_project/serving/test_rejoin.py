"""A scorer whose consumer is wedged replaces it and scores every event: a consumer that stops hearing from its group
while the brokers are up, and one whose poll, offset commit or committed-offset lookup never returns (kafka-python 3.0:
each waits on its own network loop). A replacement that cannot be made while no broker answers is made again."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError

import dagster_project.serving.scorer as scorer_module
from dagster_project.kafka import clients, rejoin
from dagster_project.kafka.io import transaction_support
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.registry.store import FilesystemRegistry
from dagster_project.serving.consumers import KAFKA_PYTHON
from dagster_project.spec import StreamSpec
from tests.dagster_project.kafka.wedging import WedgingConsumer
from tests.dagster_project.serving.support import produce_rows, running_service, synthetic_rows, train_version, wait_for
from tests.helpers import read_committed, read_topic

E2E_AFTER_S = 3.0  # end to end: short enough for a test, long beside a healthy group's heartbeats


@pytest.fixture(autouse=True)
def frequent_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rejoin, "PROBE_INTERVAL_S", 0.05)


class _Wedging:
    """A real consumer that, once `wedge` is set, polls nothing and hears nothing (as kafka-python 3.0 after a
    SyncGroup that never completed): the group and the broker are fine, the client is not."""

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer
        self.wedge = threading.Event()

    def poll(self, timeout_s: float, max_records: int) -> Any:
        if self.wedge.is_set():
            time.sleep(timeout_s)
            return None
        return self._consumer.poll(timeout_s, max_records)

    def heartbeat_answered_at(self) -> float | None:
        return None if self.wedge.is_set() else self._consumer.heartbeat_answered_at()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


def _score_across_a_wedge(
    spec: StreamSpec,
    settings: KafkaSettings,
    registry: FilesystemRegistry,
    opened: list[Any],
    committed_read: bool = False,
    **options: Any,
) -> tuple[set[str], float]:
    """Score events, wedge the first consumer opened, score more: the ids of all the events sent, and the rejoins
    counted once the scorer served them all (with `committed_read`: once a read_committed reader sees a prediction
    of each, where the scorer's own count may miss a batch)."""
    first, second = synthetic_rows(60, start=0, seed=5), synthetic_rows(60, start=60, seed=5)
    ids = {eid for eid, _, _ in first + second}
    with running_service(spec, settings, registry, **options) as service:
        produce_rows(settings, spec, first)
        wait_for(lambda: service.scorer.scored >= len(first), 60, "the first events scored")
        opened[0].wedge.set()
        produce_rows(settings, spec, second)
        wait_for(lambda: len(opened) == 2, 60, "a new consumer in place of the wedged one")
        if committed_read:
            wait_for(
                lambda: {p["id"] for p in read_committed(settings, spec.predictions_topic)} >= ids,
                60,
                "committed predictions of the events after the wedge",
                interval_s=0.5,
            )
        else:
            wait_for(lambda: service.scorer.scored >= len(ids), 60, "the events after the wedge scored")
        rejoins = service.metrics.value("streamfit_scorer_consumer_rejoins_total")
    return ids, rejoins


def _wedged_scorer_consumers(spec: StreamSpec, monkeypatch: pytest.MonkeyPatch, how: str) -> list[WedgingConsumer]:
    """Every kafka-python consumer the scorer opens, wrapped to wedge `how`: the list fills as they are opened."""
    opened: list[WedgingConsumer] = []
    real_group_consumer = clients.group_consumer

    def group_consumer(settings: KafkaSettings, group_id: str, **kwargs: Any) -> Any:
        consumer = real_group_consumer(settings, group_id, **kwargs)
        if group_id != scorer_module.scorer_group(spec):
            return consumer
        opened.append(WedgingConsumer(consumer, how))
        return opened[-1]

    monkeypatch.setattr(clients, "group_consumer", group_consumer)
    return opened


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("scorer_client")
def test_a_wedged_consumer_is_replaced_and_every_event_is_scored(
    spec: StreamSpec, kafka_settings: KafkaSettings, registry: FilesystemRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    train_version(registry, spec)
    opened: list[Any] = []
    real_open = scorer_module.open_consumer

    def open_consumer(*args: Any, **kwargs: Any) -> Any:
        opened.append(_Wedging(real_open(*args, **kwargs)))
        if len(opened) == 2:  # the replacement is slow to join: silent for twice the limit before its first poll
            opened[1].wedge.set()
            threading.Timer(2 * E2E_AFTER_S, opened[1].wedge.clear).start()
        return opened[-1]

    monkeypatch.setattr(scorer_module, "open_consumer", open_consumer)
    monkeypatch.setattr(rejoin, "REJOIN_AFTER_S", E2E_AFTER_S)
    ids, rejoins = _score_across_a_wedge(spec, kafka_settings, registry, opened)
    assert {p["id"] for p in read_topic(kafka_settings, spec.predictions_topic)} >= ids
    assert rejoins == 1, (
        "a replacement still joining was replaced again (a member leaving unassigned can wedge a group)"
    )
    assert len(opened) == 2


@pytest.mark.timeout(180)
@pytest.mark.parametrize("scorer_client", [KAFKA_PYTHON], indirect=True)  # librdkafka bounds confluent's polls
@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_a_consumer_stuck_in_its_poll_is_replaced_and_every_event_is_scored(
    delivery: str,
    scorer_client: str,
    broker_kind: str,
    spec: StreamSpec,
    kafka_settings: KafkaSettings,
    registry: FilesystemRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The poll waits on kafka-python's network loop for an answer that never comes (no check in the loop can
    run): the poll watch stops that loop, and the scorer replaces the consumer."""
    exactly_once = delivery == "exactly-once"
    if exactly_once and (broker_kind == "tansu" or not transaction_support(kafka_settings).works):
        pytest.skip("needs working Kafka transactions; Tansu's aborted records leak to read_committed readers")
    train_version(registry, spec)
    opened = _wedged_scorer_consumers(spec, monkeypatch, "stuck")
    monkeypatch.setattr(rejoin, "STUCK_POLL_S", E2E_AFTER_S)
    ids, rejoins = _score_across_a_wedge(spec, kafka_settings, registry, opened, delivery=delivery)
    if exactly_once:  # every event's prediction committed once, and nothing else
        counts = Counter(p["id"] for p in read_committed(kafka_settings, spec.predictions_topic))
        assert counts == Counter(ids)
    else:
        assert {p["id"] for p in read_topic(kafka_settings, spec.predictions_topic)} >= ids
    assert rejoins == 1 and len(opened) == 2


@pytest.mark.timeout(180)
@pytest.mark.parametrize("scorer_client", [KAFKA_PYTHON], indirect=True)  # librdkafka bounds confluent's calls
@pytest.mark.parametrize(
    ("delivery", "transaction"),
    [("at-least-once", None), ("exactly-once", "aborted"), ("exactly-once", "committed")],
)
def test_a_consumer_stuck_in_its_offset_commit_is_replaced_and_every_event_is_scored(
    delivery: str,
    transaction: str | None,
    scorer_client: str,
    broker_kind: str,
    spec: StreamSpec,
    kafka_settings: KafkaSettings,
    registry: FilesystemRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At-least-once, the offset commit after a batch is acknowledged; exactly-once, the committed-offset lookup that
    tells whether a transaction that got no answer committed (`transaction`: it was aborted, or it committed and only
    its answer was lost). Either waits on kafka-python's network loop for an answer that never comes: the poll watch
    stops that loop, and the new consumer reads on from the group's committed offsets (nothing skipped; exactly-once,
    nothing committed twice)."""
    exactly_once = delivery == "exactly-once"
    if exactly_once and (broker_kind == "tansu" or not transaction_support(kafka_settings).works):
        pytest.skip("needs working Kafka transactions; Tansu's aborted records leak to read_committed readers")
    train_version(registry, spec)
    opened = _wedged_scorer_consumers(spec, monkeypatch, "stuck_committed" if exactly_once else "stuck_commit")

    failed: list[str] = []  # exactly-once: the one transaction made to fail once the first consumer is wedged
    real_bounded = scorer_module._bounded

    def bounded(producer: Any, call: str, *args: Any, timeout_s: float) -> None:
        if call == "commit" and opened[0].wedge.is_set() and not failed:
            failed.append(call)
            if transaction == "committed":
                real_bounded(producer, call, *args, timeout_s=timeout_s)  # the answer is lost, not the commit
            raise KafkaTimeoutError(f"commit_transaction got no answer within {timeout_s:g}s")
        real_bounded(producer, call, *args, timeout_s=timeout_s)

    monkeypatch.setattr(scorer_module, "_bounded", bounded)
    monkeypatch.setattr(rejoin, "STUCK_POLL_S", E2E_AFTER_S)
    ids, rejoins = _score_across_a_wedge(
        spec, kafka_settings, registry, opened, committed_read=exactly_once, delivery=delivery
    )
    if exactly_once:  # every event's prediction committed once, and nothing else
        assert failed, "no transaction failed: the committed-offset lookup was never made"
        counts = Counter(p["id"] for p in read_committed(kafka_settings, spec.predictions_topic))
        assert counts == Counter(ids)
    else:
        assert {p["id"] for p in read_topic(kafka_settings, spec.predictions_topic)} >= ids
    assert rejoins == 1 and len(opened) == 2


@pytest.mark.timeout(180)
@pytest.mark.parametrize("scorer_client", [KAFKA_PYTHON], indirect=True)
def test_a_replacement_that_cannot_be_made_while_no_broker_answers_is_tried_again(
    scorer_client: str,
    spec: StreamSpec,
    kafka_settings: KafkaSettings,
    registry: FilesystemRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stuck poll is unblocked and its consumer replaced whether or not the brokers are up, and kafka-python cannot
    make a consumer while none answers (KafkaTimeoutError after 30 s): the scorer tries again instead of ending."""
    train_version(registry, spec)
    opened: list[Any] = []
    refused: list[int] = []
    real_open = scorer_module.open_consumer

    def open_consumer(*args: Any, **kwargs: Any) -> Any:
        if opened and len(refused) < 2:
            refused.append(1)
            raise KafkaTimeoutError(f"Unable to bootstrap from ['{kafka_settings.bootstrap}']")
        opened.append(_Wedging(real_open(*args, **kwargs)))
        return opened[-1]

    monkeypatch.setattr(scorer_module, "open_consumer", open_consumer)
    monkeypatch.setattr(rejoin, "REJOIN_AFTER_S", E2E_AFTER_S)
    ids, rejoins = _score_across_a_wedge(spec, kafka_settings, registry, opened)
    assert {p["id"] for p in read_topic(kafka_settings, spec.predictions_topic)} >= ids
    assert rejoins == 1 and len(opened) == 2 and len(refused) == 2


@pytest.mark.timeout(180)
@pytest.mark.parametrize("scorer_client", [KAFKA_PYTHON], indirect=True)  # librdkafka bounds its metadata waits
def test_a_consumer_stuck_before_it_subscribes_is_replaced_and_every_event_is_scored(
    scorer_client: str,
    spec: StreamSpec,
    kafka_settings: KafkaSettings,
    registry: FilesystemRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kafka-python waits for the topic's metadata before subscribing without a deadline (clients.subscribe): the
    first consumer waits there for good, and `streamfit serve` scored nothing and said nothing."""
    train_version(registry, spec)
    opened = _wedged_scorer_consumers(spec, monkeypatch, "stuck_metadata")
    real_init = WedgingConsumer.__init__

    def wedged_first(self: WedgingConsumer, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        if not opened:  # the first consumer is stuck from the start; its replacement is not
            self.wedge.set()

    monkeypatch.setattr(WedgingConsumer, "__init__", wedged_first)
    monkeypatch.setattr(rejoin, "STUCK_POLL_S", E2E_AFTER_S)
    rows = synthetic_rows(60, start=0, seed=5)
    with running_service(spec, kafka_settings, registry) as service:
        produce_rows(kafka_settings, spec, rows)
        wait_for(lambda: service.scorer.scored >= len(rows), 60, "the events scored by a consumer in its place")
        rejoins = service.metrics.value("streamfit_scorer_consumer_rejoins_total")
    assert {p["id"] for p in read_topic(kafka_settings, spec.predictions_topic)} >= {eid for eid, _, _ in rows}
    assert rejoins == 1 and len(opened) == 2


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scorer_client", [KAFKA_PYTHON], indirect=True)
def test_a_scorer_whose_consumer_is_wedged_at_stop_stops_within_a_bound(
    scorer_client: str,
    spec: StreamSpec,
    kafka_settings: KafkaSettings,
    registry: FilesystemRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kafka-python's close waits on its network loop without a deadline (leaving the group): a client wedged
    there kept `streamfit serve` from exiting after SIGTERM."""
    train_version(registry, spec)
    opened = _wedged_scorer_consumers(spec, monkeypatch, "stuck_close")
    rows = synthetic_rows(30, start=0, seed=5)
    try:
        with running_service(spec, kafka_settings, registry) as service:
            produce_rows(kafka_settings, spec, rows)
            wait_for(lambda: service.scorer.scored >= len(rows), 60, "the events scored")
            opened[0].wedge.set()
            stopping = time.monotonic()
        stopped_s = time.monotonic() - stopping
    finally:  # releases the close left waiting in the background (else its consumer lives on in this worker)
        for consumer in opened:
            consumer._consumer._net.stop(timeout_ms=2000)
    assert stopped_s < rejoin.CLOSE_TIMEOUT_S + 5, f"the stop waited on the wedged close ({stopped_s:.1f} s)"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scorer_client", [KAFKA_PYTHON], indirect=True)
def test_a_consumer_found_stuck_while_the_scorer_stops_is_not_replaced(
    scorer_client: str,
    spec: StreamSpec,
    kafka_settings: KafkaSettings,
    registry: FilesystemRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stop that comes while a poll is stuck ends the scorer once the watch unblocks it: a new member made then
    only joined the group to leave it (leaving while still joining can wedge a Tansu group), and delayed the stop.
    The watch gives a stopping member's call `STOPPING_STUCK_S`, not the 30 s `STUCK_POLL_S` (left as shipped here):
    `streamfit serve` stuck at SIGTERM exits within a 30 s grace, the close after the unblock included."""
    train_version(registry, spec)
    opened = _wedged_scorer_consumers(spec, monkeypatch, "stuck")
    monkeypatch.setattr(rejoin, "STOPPING_STUCK_S", E2E_AFTER_S)
    rows = synthetic_rows(30, start=0, seed=5)
    with running_service(spec, kafka_settings, registry) as service:
        produce_rows(kafka_settings, spec, rows)
        wait_for(lambda: service.scorer.scored >= len(rows), 60, "the events scored")
        opened[0].wedge.set()
        time.sleep(1.0)  # its next poll is stuck by now
        stopping = time.monotonic()
    stopped_s = time.monotonic() - stopping
    assert len(opened) == 1, "a new consumer was made while the scorer stopped"
    assert stopped_s < E2E_AFTER_S + 8, f"the stop waited {stopped_s:.1f} s for the stuck call (STUCK_POLL_S)"
