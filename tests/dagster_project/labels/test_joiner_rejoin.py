"""A label joiner whose consumer is wedged replaces it and joins everything after it exactly once: a consumer that
stops hearing from its group while the brokers are up, one whose poll never returns (in CI, after a whole-cluster
restart on Apache Kafka, the joiner joined nothing more, its thread waiting inside kafka-python's poll), one whose
offset commit waits the same way, and one whose assignment lacks partitions of its topics while its group answers
and its polls return the rest."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError

from dagster_project.kafka import clients, rejoin
from dagster_project.kafka.io import committed_group_offsets
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.labels import joiner as joiner_module
from dagster_project.labels import labels_group, live_metrics
from dagster_project.spec import StreamSpec
from tests.conftest import synthetic_spec
from tests.dagster_project.kafka.wedging import WedgingConsumer
from tests.dagster_project.labels.test_joiner import counters, known_rows, running_joiner, send, topic_ends
from tests.dagster_project.serving.support import wait_for
from tests.helpers import label, prediction, sample

AFTER_S = 3.0  # short enough for a test, long beside a healthy group's heartbeats (every 0.5 s here)


def _send_pairs(settings: KafkaSettings, spec: StreamSpec, rows: list[tuple[str, str, int, Any]]) -> None:
    """Each row's prediction, then each row's label (`known_rows`: id, version, prediction, label)."""
    send(settings, spec.predictions_topic, [prediction(i, v, p) for i, v, p, _ in rows])
    send(settings, spec.labels_topic, [label(i, y) for i, _, _, y in rows])


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["silent", "stuck", "stuck_commit", "partial"])
def test_a_wedged_joiner_consumer_is_replaced_and_every_pair_is_joined_once(
    how: str, kafka_settings: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = synthetic_spec(labels={"join_window_s": 600, "flush_interval_s": 0.2})
    opened: list[WedgingConsumer] = []
    real_group_consumer = clients.group_consumer

    def group_consumer(*args: Any, **kwargs: Any) -> WedgingConsumer:
        opened.append(WedgingConsumer(real_group_consumer(*args, **kwargs), how, drop_topic=spec.labels_topic))
        return opened[-1]

    monkeypatch.setattr(clients, "group_consumer", group_consumer)
    monkeypatch.setattr(rejoin, "REJOIN_AFTER_S", AFTER_S)
    monkeypatch.setattr(rejoin, "STUCK_POLL_S", AFTER_S)
    monkeypatch.setattr(rejoin, "PROBE_INTERVAL_S", 0.1)
    root = tmp_path / "registry"
    rng = random.Random(11)
    first, second = known_rows("a", 200, 150, "v1", rng), known_rows("b", 300, 240, "v1", rng)

    with running_joiner(spec, kafka_settings, root) as joiner:
        wait_for(joiner.assigned.is_set, 30, "the joiner's assignment")
        _send_pairs(kafka_settings, spec, first)
        wait_for(lambda: counters(joiner)["joined"] == 200, 30, "the first 200 pairs joined")
        opened[0].wedge.set()
        _send_pairs(kafka_settings, spec, second)
        wait_for(lambda: len(opened) == 2, 60, "a new consumer in place of the wedged one")
        wait_for(lambda: counters(joiner)["joined"] == 500, 60, "the pairs sent after the wedge joined")
        time.sleep(1.0)  # nothing more may arrive: each pair is joined once
        assert counters(joiner)["joined"] == 500
        assert counters(joiner)["duplicate_predictions"] == counters(joiner)["duplicate_labels"] == 0
        assert joiner.snapshot.pending == {"predictions": 0, "labels": 0}
        rejoins = sample(joiner.metrics_registry, "streamfit_label_joiner_consumer_rejoins_total", stream=spec.name)

    assert rejoins == 1 and len(opened) == 2, "a replacement still joining was replaced again"
    assert live_metrics(root, spec.name) == {"v1": {"rows": 500, "accuracy": 0.78}}
    for topic in (spec.predictions_topic, spec.labels_topic):  # the new member committed where the state ends
        assert committed_group_offsets(kafka_settings, labels_group(spec), topic) == topic_ends(kafka_settings, topic)


def test_a_consumer_that_cannot_be_made_while_no_broker_answers_is_tried_again(
    kafka_settings: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kafka-python cannot make a consumer without a broker (KafkaTimeoutError after 30 s): a replacement made
    during an outage, or a start just as the brokers go away, waits for them instead of ending the joiner."""
    attempts: list[int] = []
    real_group_consumer = clients.group_consumer

    def group_consumer(*args: Any, **kwargs: Any) -> Any:
        attempts.append(1)
        if len(attempts) <= 2:
            raise KafkaTimeoutError(f"Unable to bootstrap from ['{kafka_settings.bootstrap}']")
        return real_group_consumer(*args, **kwargs)

    monkeypatch.setattr(clients, "group_consumer", group_consumer)
    spec = synthetic_spec(labels={"join_window_s": 600, "flush_interval_s": 0.2})
    rows = known_rows("c", 50, 40, "v1", random.Random(3))
    with running_joiner(spec, kafka_settings, tmp_path / "registry") as joiner:
        wait_for(joiner.assigned.is_set, 30, "the joiner's assignment after two failed attempts")
        _send_pairs(kafka_settings, spec, rows)
        wait_for(lambda: counters(joiner)["joined"] == 50, 30, "50 pairs joined")
    assert len(attempts) == 3


@pytest.mark.timeout(120)
def test_a_stop_while_the_replacement_still_joins_checkpoints_what_the_old_member_joined(
    kafka_settings: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop gives a member still joining two session timeouts before leaving (a Tansu group can wedge otherwise);
    after a replacement that member follows one whose records are in the state, so the stop still checkpoints."""
    opened: list[WedgingConsumer] = []
    real_group_consumer = clients.group_consumer

    def group_consumer(*args: Any, **kwargs: Any) -> WedgingConsumer:
        opened.append(WedgingConsumer(real_group_consumer(*args, **kwargs), "silent"))
        if len(opened) > 1:
            opened[-1].wedge.set()  # the replacement never joins: polls nothing, hears nothing
        return opened[-1]

    monkeypatch.setattr(clients, "group_consumer", group_consumer)
    monkeypatch.setattr(rejoin, "REJOIN_AFTER_S", AFTER_S)
    monkeypatch.setattr(rejoin, "PROBE_INTERVAL_S", 0.1)
    monkeypatch.setattr(joiner_module, "GROUP_SESSION_TIMEOUT_MS", 1000)  # gives up joining after 2 s
    spec = synthetic_spec(labels={"join_window_s": 600, "flush_interval_s": 600})  # checkpoints at the stop only
    root = tmp_path / "registry"
    rows = known_rows("d", 100, 70, "v1", random.Random(5))
    with running_joiner(spec, kafka_settings, root) as joiner:
        wait_for(joiner.assigned.is_set, 30, "the joiner's assignment")
        _send_pairs(kafka_settings, spec, rows)
        wait_for(lambda: counters(joiner)["joined"] == 100, 30, "100 pairs joined")
        opened[0].wedge.set()
        wait_for(lambda: len(opened) == 2, 30, "a new consumer in place of the wedged one")
    assert joiner.checkpoints == 1
    assert live_metrics(root, spec.name) == {"v1": {"rows": 100, "accuracy": 0.7}}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("which", ["first", "replacement"])
def test_a_consumer_whose_metadata_never_arrives_before_it_subscribes_is_replaced(
    which: str, kafka_settings: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kafka-python waits for the topics' metadata before subscribing without a deadline (partitions_for_topic ->
    net.run(wait_for, future, None)): a consumer made as the cluster restarts, the first one or a replacement for a
    wedged one, could wait there for good, the joiner joining nothing more. The wait is watched like a poll."""
    opened: list[WedgingConsumer] = []
    real_group_consumer = clients.group_consumer
    stuck_at = 0 if which == "first" else 1  # the replacement follows a first consumer whose poll gets stuck

    def group_consumer(*args: Any, **kwargs: Any) -> WedgingConsumer:
        how = "stuck_metadata" if len(opened) == stuck_at else "stuck"
        opened.append(WedgingConsumer(real_group_consumer(*args, **kwargs), how))
        if len(opened) - 1 == stuck_at:
            opened[-1].wedge.set()
        return opened[-1]

    monkeypatch.setattr(clients, "group_consumer", group_consumer)
    monkeypatch.setattr(rejoin, "REJOIN_AFTER_S", AFTER_S)
    monkeypatch.setattr(rejoin, "STUCK_POLL_S", AFTER_S)
    spec = synthetic_spec(labels={"join_window_s": 600, "flush_interval_s": 0.2})
    rng = random.Random(13)
    first, second = known_rows("e", 60, 45, "v1", rng), known_rows("f", 40, 30, "v1", rng)

    with running_joiner(spec, kafka_settings, tmp_path / "registry") as joiner:
        if which == "replacement":
            wait_for(joiner.assigned.is_set, 30, "the first consumer's assignment")
            _send_pairs(kafka_settings, spec, first)
            wait_for(lambda: counters(joiner)["joined"] == 60, 30, "the first 60 pairs joined")
            opened[0].wedge.set()  # its poll gets stuck: the replacement's metadata wait gets stuck next
        else:
            _send_pairs(kafka_settings, spec, first)
        wait_for(lambda: len(opened) == stuck_at + 2, 60, "a consumer in place of the one stuck before subscribing")
        _send_pairs(kafka_settings, spec, second)
        wait_for(lambda: counters(joiner)["joined"] == 100, 60, "every pair joined")
        assert counters(joiner)["duplicate_predictions"] == counters(joiner)["duplicate_labels"] == 0
        assert joiner.rejoins == stuck_at + 1


@pytest.mark.timeout(120)
def test_a_joiner_whose_consumer_is_wedged_at_stop_stops_within_a_bound_and_checkpoints(
    kafka_settings: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kafka-python's close waits on its network loop without a deadline (its close-prepare step): a client wedged at
    stop time kept `streamfit labels join` from exiting after SIGTERM. The close is bounded; the checkpoint before it
    holds everything joined, and its offsets reach the group."""
    opened: list[WedgingConsumer] = []
    real_group_consumer = clients.group_consumer

    def group_consumer(*args: Any, **kwargs: Any) -> WedgingConsumer:
        opened.append(WedgingConsumer(real_group_consumer(*args, **kwargs), "stuck_close"))
        return opened[-1]

    monkeypatch.setattr(clients, "group_consumer", group_consumer)
    monkeypatch.setattr(rejoin, "CLOSE_TIMEOUT_S", 2.0)
    spec = synthetic_spec(labels={"join_window_s": 600, "flush_interval_s": 600})  # checkpoints at the stop only
    root = tmp_path / "registry"
    rows = known_rows("g", 80, 60, "v1", random.Random(7))
    try:
        with running_joiner(spec, kafka_settings, root) as joiner:
            wait_for(joiner.assigned.is_set, 30, "the joiner's assignment")
            _send_pairs(kafka_settings, spec, rows)
            wait_for(lambda: counters(joiner)["joined"] == 80, 30, "80 pairs joined")
            opened[0].wedge.set()
            stopping_at = time.monotonic()
        stopped_s = time.monotonic() - stopping_at
    finally:
        opened[0]._consumer._net.stop(timeout_ms=2000)  # releases the close left waiting in the background
    assert stopped_s < 2.0 + 5.0, f"the joiner took {stopped_s:.1f} s to stop"
    assert len(opened) == 1 and joiner.checkpoints == 1
    assert live_metrics(root, spec.name) == {"v1": {"rows": 80, "accuracy": 0.75}}
    for topic in (spec.predictions_topic, spec.labels_topic):
        assert committed_group_offsets(kafka_settings, labels_group(spec), topic) == topic_ends(kafka_settings, topic)


class _SeekRecorder:
    """Stands for a consumer in a listener race: records the seeks made on it; `on_first_seek` runs at the first."""

    def __init__(self, on_first_seek: Callable[[], None] | None = None) -> None:
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.on_first_seek = on_first_seek

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))
        if len(self.seeks) == 1 and self.on_first_seek is not None:
            self.on_first_seek()


def test_a_rebalance_listener_seeks_only_its_own_consumer_while_a_replacement_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listener runs on its consumer's network-loop thread; a replacement is made on the joiner's. The old member's
    listener, mid-way through its seeks as the new consumer is made, must neither seek the new consumer (whose
    assignment it is not) nor mark it assigned (a member still joining must not be replaced, nor left at a stop
    before its time). Unit level: the race cannot be provoked on demand with a broker."""
    spec = synthetic_spec()
    joiner = joiner_module.LabelJoiner(spec, KafkaSettings(bootstrap="127.0.0.1:9"), tmp_path / "registry")
    for topic in joiner.topics:
        joiner.state.advance(topic, 0, 41)  # positions 42
    assigned = [TopicPartition(topic, 0) for topic in joiner.topics]
    listeners: list[Any] = []
    monkeypatch.setattr(clients, "subscribe", lambda consumer, topics, listener, **_: listeners.append(listener))
    replacing: list[threading.Thread] = []

    def replace() -> None:  # the joiner's thread makes a new consumer meanwhile
        replacing.append(threading.Thread(target=joiner._open_consumer, daemon=True))
        replacing[0].start()
        replacing[0].join(1.0)  # with the race closed it waits for the listener to finish

    old, new = _SeekRecorder(on_first_seek=replace), _SeekRecorder()
    made = iter([old, new])
    monkeypatch.setattr(clients, "group_consumer", lambda *args, **kwargs: next(made))
    assert joiner._open_consumer() is old
    listeners[0].on_partitions_assigned(assigned)
    replacing[0].join(5.0)
    assert not replacing[0].is_alive() and joiner._consumer is new
    assert new.seeks == [], "the old member's listener sought the new consumer"
    assert old.seeks == [(tp, 42) for tp in assigned]
    assert not joiner._member_assigned, "the old member's listener marked the new consumer assigned"
    listeners[0].on_partitions_assigned(assigned)  # the old member again, after the replacement: ignored
    assert old.seeks == [(tp, 42) for tp in assigned] and new.seeks == []
    listeners[1].on_partitions_assigned(assigned)
    assert new.seeks == [(tp, 42) for tp in assigned] and joiner._member_assigned


@pytest.mark.timeout(120)
def test_a_consumer_found_stuck_while_the_joiner_stops_is_not_replaced(
    kafka_settings: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop that comes while a poll is stuck ends the joiner once the watch unblocks it: a new member made then only
    joined the group to leave it (leaving while still joining can wedge a Tansu group), and delayed the stop.
    The watch gives a stopping member's call `STOPPING_STUCK_S`, not the 30 s `STUCK_POLL_S` (left as shipped here):
    `streamfit labels join` stuck at SIGTERM exits within a 30 s grace, the close after the unblock included."""
    opened: list[WedgingConsumer] = []
    real_group_consumer = clients.group_consumer

    def group_consumer(*args: Any, **kwargs: Any) -> WedgingConsumer:
        opened.append(WedgingConsumer(real_group_consumer(*args, **kwargs), "stuck"))
        return opened[-1]

    monkeypatch.setattr(clients, "group_consumer", group_consumer)
    monkeypatch.setattr(rejoin, "STOPPING_STUCK_S", AFTER_S)
    spec = synthetic_spec(labels={"join_window_s": 600, "flush_interval_s": 600})  # checkpoints at the stop only
    root = tmp_path / "registry"
    rows = known_rows("h", 80, 60, "v1", random.Random(11))
    with running_joiner(spec, kafka_settings, root) as joiner:
        wait_for(joiner.assigned.is_set, 30, "the joiner's assignment")
        _send_pairs(kafka_settings, spec, rows)
        wait_for(lambda: counters(joiner)["joined"] == 80, 30, "80 pairs joined")
        opened[0].wedge.set()
        time.sleep(1.0)  # its next poll is stuck by now
        stopping = time.monotonic()
    stopped_s = time.monotonic() - stopping
    assert len(opened) == 1 and joiner.rejoins == 0, "a new consumer was made while the joiner stopped"
    assert stopped_s < AFTER_S + 8, f"the stop waited {stopped_s:.1f} s for the stuck call (STUCK_POLL_S)"
    assert joiner.checkpoints == 1
    assert live_metrics(root, spec.name) == {"v1": {"rows": 80, "accuracy": 0.75}}
