"""`streamfit broker`: the embedded broker as a real process, and the --kafka/--nodes options.

The Apache Kafka path is checked against a stand-in for `dagster_project.kafka.brokers.apache`:
the tests never start real Kafka.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import types
from pathlib import Path

import pytest

from dagster_project.kafka.brokers.tansu import free_port
from dagster_project.kafka.io import ensure_topics, topic_partitions
from dagster_project.kafka.settings import BOOTSTRAP_ENV, KafkaSettings
from tests.helpers import StreamfitProcess


class BrokerProcess(StreamfitProcess):
    """`streamfit broker` as a child process, its output lines collected by a reader thread."""

    def __init__(self, port: int) -> None:
        super().__init__(["broker", "--port", str(port)])

    def wait_for(self, prefix: str, timeout_s: float = 15.0) -> str:
        return super().wait_for(prefix, timeout_s, prefix=True)

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []

    def rest(self) -> list[str]:
        out = []
        while (line := self.lines.get(timeout=5)) is not None:
            out.append(line)
        return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_broker_command_serves_kafka_and_stops_cleanly(stop_signal: signal.Signals) -> None:
    port = free_port()
    broker = BrokerProcess(port)
    tansu: list[int] = []
    try:
        export = broker.wait_for("export ")
        assert export == f"export {BOOTSTRAP_ENV}=127.0.0.1:{port}"
        broker.wait_for("embedded broker running")
        tansu = broker.children()
        assert len(tansu) == 1

        settings = KafkaSettings.from_env(export.split("=", 1)[1])
        ensure_topics(settings, ["cli-check"], partitions=3)
        assert topic_partitions(settings, "cli-check") == [0, 1, 2]

        broker.proc.send_signal(stop_signal)
        assert broker.proc.wait(timeout=10) == 0
        rest = broker.rest()
        if stop_signal == signal.SIGINT:
            assert rest[-1] == "broker stopped", rest
        assert not alive(tansu[0]), "the Tansu process outlived `streamfit broker`"
    finally:
        if broker.proc.poll() is None:
            broker.proc.kill()
            broker.proc.wait()
        for pid in tansu:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_nodes_without_kafka_is_a_usage_error(cli) -> None:
    result = cli("broker", "--nodes", 3)
    assert result.exit_code == 2
    assert "Error: --nodes applies to an Apache Kafka cluster only: add --kafka" in result.output
    assert "export " not in result.output


class FakeCluster:
    """Stands in for ApacheKafkaCluster; `fail` makes start() raise like a node that never came up."""

    instances: list[FakeCluster] = []
    fail: str | None = None

    def __init__(
        self, nodes: int = 1, data_dir: Path | None = None, log_dir: Path | None = None, client_port: int | None = None
    ) -> None:
        self.nodes = nodes
        self.client_port = client_port
        self.bootstrap = ""
        self.startup_seconds = 0.0
        self.stopped = False
        FakeCluster.instances.append(self)

    def start(self) -> FakeCluster:
        if self.fail:
            raise RuntimeError(self.fail)
        assert callable(signal.getsignal(signal.SIGTERM)), "SIGTERM must be handled before the cluster starts"
        self.bootstrap = ",".join(f"127.0.0.1:{(self.client_port or 9092) + i}" for i in range(self.nodes))
        self.startup_seconds = 4.2
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()  # what `kill <pid>` does
        return self

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def fake_apache(monkeypatch: pytest.MonkeyPatch):
    """A stand-in `dagster_project.kafka.brokers.apache`; restores this process's SIGTERM handler after."""
    module = types.ModuleType("dagster_project.kafka.brokers.apache")
    module.missing = None

    def ensure_kafka_jars(cache_dir: Path | None = None, progress=print) -> Path:
        if module.missing:
            raise RuntimeError(module.missing)
        progress("kafka jars: cached")
        return Path("/nonexistent/kafka-jars")

    module.ensure_kafka_jars = ensure_kafka_jars
    module.ApacheKafkaCluster = FakeCluster
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(FakeCluster, "instances", [])
    monkeypatch.setattr(FakeCluster, "fail", None)
    previous = signal.getsignal(signal.SIGTERM)
    yield module
    signal.signal(signal.SIGTERM, previous)


def test_kafka_cluster_prints_the_export_line_and_stops_on_sigterm(cli, fake_apache) -> None:
    result = cli("broker", "--kafka", "--nodes", 3)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"export {BOOTSTRAP_ENV}=127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094"
    assert lines[1] == "Apache Kafka running (3 KRaft nodes, started in 4.2 s); Ctrl-C stops it"
    assert lines[-1] == "broker stopped"
    assert "kafka jars: cached" in result.stderr  # progress stays off stdout, so the export line comes first
    (cluster,) = FakeCluster.instances
    assert cluster.nodes == 3 and cluster.stopped


def test_a_kafka_cluster_listens_where_port_says(cli, fake_apache) -> None:
    """A stable bootstrap across restarts, as with the embedded broker (--port was refused with --kafka)."""
    result = cli("broker", "--kafka", "--nodes", 2, "--port", 29092)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"export {BOOTSTRAP_ENV}=127.0.0.1:29092,127.0.0.1:29093"
    (cluster,) = FakeCluster.instances
    assert cluster.client_port == 29092


def test_a_port_with_no_room_for_the_nodes_is_a_usage_error(cli, fake_apache) -> None:
    result = cli("broker", "--kafka", "--nodes", 3, "--port", 65534)
    assert result.exit_code == 2
    assert "--port 65534 leaves no room for 3 nodes (ports 65534..65536)" in result.output
    assert FakeCluster.instances == []


@pytest.mark.parametrize("failure", ["jars", "start"])
def test_kafka_failures_are_one_line_errors(cli, fake_apache, failure: str) -> None:
    message = "java not found on PATH: install a JDK (17 or newer) to run Apache Kafka"
    if failure == "jars":
        fake_apache.missing = message
    else:
        FakeCluster.fail = message
    result = cli("broker", "--kafka")
    assert result.exit_code == 1
    assert f"Error: {message}" in result.output
    assert "Traceback" not in result.output and "export " not in result.output
    assert isinstance(result.exception, SystemExit)
    assert all(cluster.stopped for cluster in FakeCluster.instances)
