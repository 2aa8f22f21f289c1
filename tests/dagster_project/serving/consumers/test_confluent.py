"""Which partitions librdkafka's statistics say the confluent-kafka scorer cannot fetch."""

from __future__ import annotations

from dagster_project.serving.consumers.base import NO_LEADER
from dagster_project.serving.consumers.confluent import _unfetchable


def _stats(brokers: dict, leaders: dict[int, int]) -> dict:
    partitions = {str(p): {"partition": p, "leader": leader} for p, leader in leaders.items()}
    partitions["-1"] = {"partition": -1, "leader": -1}  # librdkafka's unassigned-partition queue
    return {"brokers": brokers, "topics": {"events": {"partitions": partitions}}}


def test_a_partition_whose_leader_is_down_is_named_even_when_it_is_the_group_coordinator() -> None:
    """librdkafka lists a logical GroupCoordinator entry next to the real brokers, and it can carry the
    coordinator's node id: read first or last, it must not stand in for that broker's own connection."""
    brokers = {
        "b1:9092/1": {"name": "b1:9092/1", "nodeid": 1, "state": "UP", "source": "learned"},
        "b2:9092/2": {"name": "b2:9092/2", "nodeid": 2, "state": "DOWN", "source": "learned"},
        "GroupCoordinator": {"name": "GroupCoordinator", "nodeid": 2, "state": "UP", "source": "logical"},
    }
    blocked = _unfetchable(_stats(brokers, {0: 1, 1: 2, 2: -1}), "events")
    assert set(blocked) == {1, 2}
    assert "broker 2 (b2:9092)" in blocked[1] and "state DOWN" in blocked[1]
    assert blocked[2] == NO_LEADER
    assert _unfetchable(_stats(brokers, {0: 1}), "other") == {}
