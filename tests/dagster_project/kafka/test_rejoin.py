"""RejoinWatch: a group silent while the brokers are up is a wedge after the limit; an outage is waited out.
AssignmentWatch: so is an assignment lacking partitions of the member's topics."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from kafka import TopicPartition

from dagster_project.kafka import rejoin
from dagster_project.kafka.rejoin import AssignmentWatch, RejoinWatch
from dagster_project.kafka.settings import KafkaSettings
from tests.helpers import FakeClock

AFTER_S = 0.3


@pytest.fixture
def listening() -> Any:
    """An address that accepts connections (the brokers are up)."""
    server = socket.create_server(("127.0.0.1", 0))
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()


@pytest.fixture(autouse=True)
def frequent_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rejoin, "PROBE_INTERVAL_S", 0.05)


def _closed_port() -> str:
    probe = socket.create_server(("127.0.0.1", 0))
    address = f"127.0.0.1:{probe.getsockname()[1]}"
    probe.close()
    return address


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The watch's clock, advanced by the test (AFTER_S is 0.3 s: a loaded machine can pause that long)."""
    clock = FakeClock()
    monkeypatch.setattr(rejoin, "time", clock)
    return clock


def test_a_silent_group_with_brokers_up_is_wedged_only_after_the_limit(listening: str, clock: FakeClock) -> None:
    contact = [clock.monotonic()]
    watch = RejoinWatch(KafkaSettings.from_env(listening), lambda: contact[0], after_s=AFTER_S)
    clock.sleep(AFTER_S * 0.9)
    assert watch.wedged() is None  # silent for less than the limit
    clock.sleep(AFTER_S * 0.6)
    reason = watch.wedged()
    assert reason is not None and listening in reason and "no answer from consumer group" in reason
    contact[0] = clock.monotonic()  # the group answers again
    clock.sleep(rejoin.PROBE_INTERVAL_S)
    assert watch.wedged() is None


def test_an_outage_restarts_the_count(clock: FakeClock) -> None:
    settings = KafkaSettings.from_env(_closed_port())
    watch = RejoinWatch(settings, lambda: None, after_s=AFTER_S)
    clock.sleep(AFTER_S * 1.5)
    assert watch.wedged() is None  # no broker accepts connections: nothing a new consumer would fix
    server = socket.create_server(("127.0.0.1", int(settings.bootstrap.rpartition(":")[2])))
    try:
        clock.sleep(AFTER_S * 0.9)
        assert watch.wedged() is None, "the end of an outage is not a wedge: the silence counts from the outage"
        clock.sleep(AFTER_S * 0.6)
        assert watch.wedged() is not None
    finally:
        server.close()


class _Member:
    """What AssignmentWatch reads of a kafka-python consumer: its cached metadata and its assignment."""

    def __init__(self, partitions: dict[str, set[int]], assigned: set[TopicPartition]) -> None:
        self._cluster = self
        self.partitions, self.assigned = partitions, assigned

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions.get(topic)

    def assignment(self) -> set[TopicPartition]:
        return self.assigned


def test_an_assignment_lacking_partitions_is_a_wedge_after_the_limit_and_an_outage_restarts_the_count(
    listening: str, clock: FakeClock
) -> None:
    topics = ["s.predictions", "s.labels"]
    every = {TopicPartition(t, p) for t in topics for p in range(3)}
    member = _Member({t: {0, 1, 2} for t in topics}, set(every))
    watch = AssignmentWatch(KafkaSettings.from_env(listening), after_s=AFTER_S)
    assert watch.short(member, topics) is None
    clock.sleep(AFTER_S * 2)
    assert watch.short(member, topics) is None, "every partition assigned: never a wedge"

    member.assigned = {tp for tp in every if tp.topic == "s.predictions"} | {TopicPartition("s.labels", 0)}
    assert watch.short(member, topics) is None  # the count starts
    clock.sleep(AFTER_S * 0.9)
    assert watch.short(member, topics) is None
    clock.sleep(AFTER_S * 0.2)
    reason = watch.short(member, topics)
    assert reason is not None and "partitions 1, 2 of 3 of s.labels" in reason and listening in reason

    member.partitions.pop("s.labels")  # the metadata lost the topic as well (the assignor's "No partition metadata")
    member.assigned = {tp for tp in every if tp.topic == "s.predictions"}
    clock.sleep(rejoin.PROBE_INTERVAL_S * 2)
    assert "s.labels (no partition metadata)" in (watch.short(member, topics) or "")

    watch.restart()  # a new consumer: judged afresh
    assert watch.short(member, topics) is None

    member.assigned = set(every)
    member.partitions["s.labels"] = {0, 1, 2}
    assert watch.short(member, topics) is None
    member.assigned = set()  # an empty assignment lacks everything
    assert watch.short(member, topics) is None
    clock.sleep(AFTER_S * 1.1)
    assert watch.short(member, topics) is not None


def test_an_assignment_lacking_partitions_during_an_outage_is_waited_out(clock: FakeClock) -> None:
    settings = KafkaSettings.from_env(_closed_port())
    member = _Member({"t": {0, 1}}, {TopicPartition("t", 0)})
    watch = AssignmentWatch(settings, after_s=AFTER_S)
    assert watch.short(member, ["t"]) is None
    clock.sleep(AFTER_S * 1.5)
    assert watch.short(member, ["t"]) is None  # no broker accepts connections: a new consumer would fare no better
    server = socket.create_server(("127.0.0.1", int(settings.bootstrap.rpartition(":")[2])))
    try:
        clock.sleep(AFTER_S * 0.9)
        assert watch.short(member, ["t"]) is None, "the count restarts at the outage"
        clock.sleep(AFTER_S * 0.6)
        assert watch.short(member, ["t"]) is not None
    finally:
        server.close()
