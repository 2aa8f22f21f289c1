"""Partitions without a usable leader are named, and the Kafka sensor waits for them saying why.

The real failovers run on a 3-node cluster in tests/faults/test_cluster_failures.py; these pin the
three cases of `leader_problems` (no leader, a leader gone from the cluster, a leader that does not
answer) without a broker.
"""

from __future__ import annotations

import socket

import dagster as dg
import pytest

import sensors.kafka_sensor
from dagster_project.kafka import io
from dagster_project.kafka.io import PartitionsLeaderless, leader_problems
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.resources import KafkaResource
from tests.helpers import defs_for, kafka_sensor_tick


class FakeAdmin:
    def __init__(self, brokers: dict[int, int], leaders: dict[int, int]) -> None:
        self.brokers, self.leaders = brokers, leaders

    def describe_cluster(self):
        return {"brokers": [{"broker_id": b, "host": "127.0.0.1", "port": port} for b, port in self.brokers.items()]}

    def describe_topics(self, topics):
        partitions = [{"partition_index": p, "leader_id": leader} for p, leader in self.leaders.items()]
        return [{"name": topics[0], "error_code": 0, "partitions": partitions}]

    def close(self):
        pass


def test_each_kind_of_missing_leader_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as listening, socket.socket() as closed:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        up, down = listening.getsockname()[1], closed.getsockname()[1]
        admin = FakeAdmin(brokers={1: up, 2: down}, leaders={0: 1, 1: -1, 2: 2, 3: 7})
        monkeypatch.setattr(io.clients, "admin", lambda settings: admin)
        problems = leader_problems(KafkaSettings(bootstrap="127.0.0.1:1"), "s.events")
    assert problems == {
        1: "has no leader (broker failover)",
        2: f"has no live leader: broker 2 (127.0.0.1:{down}) does not answer (broker failover)",
        3: "has no live leader: broker 7 left the cluster (broker failover)",
    }
    message = str(PartitionsLeaderless("s.events", {1: problems[1]}))
    assert message.startswith("partition 1 of s.events has no leader (broker failover); waiting")


def test_the_sensor_waits_for_a_leaderless_partition_and_says_why(
    spec, registry, instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    def leaderless(settings, topic, expected, timeout_s=5.0):
        raise PartitionsLeaderless(topic, {1: "has no leader (broker failover)"})

    monkeypatch.setattr(sensors.kafka_sensor, "probe_partitions", leaderless)
    bootstrap = "127.0.0.1:1"
    defs = defs_for(spec, bootstrap, registry)
    tick = kafka_sensor_tick(defs, spec, instance, KafkaResource(bootstrap=bootstrap), registry)
    assert isinstance(tick, dg.SkipReason)
    assert tick.skip_message == (
        f"{spec.name}: partition 1 of {spec.events_topic} has no leader (broker failover); waiting (nothing to do: "
        "it resumes once the partition has a leader again); nothing planned, nothing advanced"
    )
