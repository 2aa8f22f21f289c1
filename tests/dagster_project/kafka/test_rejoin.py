"""RejoinWatch: a group silent while the brokers are up is a wedge after the limit; an outage is waited out."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from dagster_project.kafka import rejoin
from dagster_project.kafka.rejoin import RejoinWatch
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
