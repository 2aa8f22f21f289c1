"""The Apache Kafka launcher: a real JVM broker (1 node and a 3-node KRaft cluster), and its setup errors.

The cluster tests fetch Kafka with Maven the first time (~45 MB, cached); set STREAMFIT_SKIP_APACHE_KAFKA=1
to skip them on a machine without Java/Maven or network. Self-contained: no conftest fixtures.
"""

from __future__ import annotations

import shutil
import socket
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dagster_project.kafka.brokers import apache
from dagster_project.kafka.brokers.apache import KAFKA_VERSION, POM_PATH, ApacheKafkaCluster, ensure_kafka_jars

needs_kafka = pytest.mark.apache_kafka  # runs in the Apache Kafka session (tests/conftest.py)


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """acks=all, bounded: librdkafka's flush honours its timeout (kafka-python 3.0's can hang after a leader crash)."""
    from confluent_kafka import Producer

    errors: list[str] = []
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, "message.timeout.ms": 45000})
    for value in values:
        producer.produce(topic, value, on_delivery=lambda err, _msg: errors.append(str(err)) if err else None)
        producer.poll(0)
    remaining = producer.flush(60)
    assert remaining == 0 and not errors, f"{remaining} unacknowledged, errors: {errors[:3]}"


def _consume(bootstrap: str, topic: str, count: int, timeout_s: float = 60) -> list[bytes]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        values: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while len(values) < count and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                values.extend(record.value for record in records)
        return values
    finally:
        consumer.close()


def _create_topic(bootstrap: str, topic: str, replication: int, configs: dict[str, str] | None = None) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        spec = {"num_partitions": 1, "replication_factor": replication, "configs": configs or {}}
        admin.create_topics({topic: spec}, timeout_ms=30000, wait_for_metadata=True)
    finally:
        admin.close()


def _is_kafka_process(pid: int) -> bool:
    try:
        return b"kafka.Kafka" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@needs_kafka
@pytest.mark.timeout(600)  # includes the first Maven download on a cold cache
def test_single_node_round_trip_and_clean_stop(tmp_path: Path) -> None:
    ensure_kafka_jars()
    port = _free_port()
    cluster = ApacheKafkaCluster(1, log_dir=tmp_path, client_port=port)  # `streamfit broker --kafka --port`
    try:
        cluster.start(timeout_s=120)
        assert cluster.startup_seconds is not None and cluster.startup_seconds < 120
        assert cluster.node_ids == [1]
        assert cluster.bootstrap == f"127.0.0.1:{port}"
        pids = list(cluster.pids.values())
        assert len(pids) == 1 and _is_kafka_process(pids[0])

        _create_topic(cluster.bootstrap, "round-trip", replication=1)
        assert cluster.leader_of("round-trip", 0) == 1
        assert cluster.leader_of("no-such-topic", 0) is None
        sent = [f"message-{i}".encode() for i in range(1000)]
        _produce(cluster.bootstrap, "round-trip", sent)
        assert _consume(cluster.bootstrap, "round-trip", len(sent)) == sent
        data_dir = cluster.data_dir
    finally:
        cluster.stop()
    assert cluster.pids == {}
    assert not any(_is_kafka_process(pid) for pid in pids)
    assert not data_dir.exists()  # a temporary data dir goes with the cluster; the logs stay in log_dir
    assert (tmp_path / "kafka-node-1.log").stat().st_size > 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@needs_kafka
def test_a_port_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cluster = ApacheKafkaCluster(1, log_dir=tmp_path, client_port=port)
        with pytest.raises(RuntimeError, match=f"port {port} is in use .*choose another --port"):
            cluster.start(timeout_s=30)
    assert cluster.pids == {}


@needs_kafka
@pytest.mark.timeout(600)
def test_three_node_cluster_survives_leader_crash(tmp_path: Path) -> None:
    ensure_kafka_jars()
    with ApacheKafkaCluster(3, log_dir=tmp_path) as cluster:
        assert cluster.node_ids == [1, 2, 3] and len(cluster.bootstrap.split(",")) == 3
        _create_topic(cluster.bootstrap, "failover", replication=3, configs={"min.insync.replicas": "2"})
        before = [f"before-{i}".encode() for i in range(100)]
        _produce(cluster.bootstrap, "failover", before)

        leader = cluster.leader_of("failover", 0)
        assert leader in cluster.node_ids
        cluster.kill_node(leader)
        assert leader not in cluster.pids
        killed_at = time.monotonic()
        new_leader = None
        while time.monotonic() - killed_at < 60:
            new_leader = cluster.leader_of("failover", 0)
            if new_leader is not None and new_leader != leader:
                break
            time.sleep(0.2)
        failover_s = time.monotonic() - killed_at
        assert new_leader is not None and new_leader != leader, f"no new leader {failover_s:.1f}s after the crash"
        print(f"leader {leader} killed; node {new_leader} leads after {failover_s:.1f}s")

        after = [f"after-{i}".encode() for i in range(100)]
        _produce(cluster.bootstrap, "failover", after)  # acks=all with 2 of 3 in sync (min.insync.replicas=2)

        cluster.restart_node(leader, timeout_s=120)
        assert leader in cluster.pids
        assert _consume(cluster.bootstrap, "failover", len(before) + len(after)) == before + after
        pids = list(cluster.pids.values())
    assert not any(_is_kafka_process(pid) for pid in pids)


@needs_kafka
@pytest.mark.timeout(300)
def test_node_that_dies_while_starting_is_reported_with_its_log() -> None:
    cluster = ApacheKafkaCluster(1, broker_config={"authorizer.class.name": "does.not.Exist"})
    try:
        with pytest.raises(RuntimeError) as error:
            cluster.start(timeout_s=120)
        message = str(error.value)
        log = cluster.log_dir / "kafka-node-1.log"
        assert f"see {log}" in message and "ClassNotFoundException: does.not.Exist" in message
        assert log.is_file() and cluster.pids == {}  # stopped, but the log it names is kept
    finally:
        shutil.rmtree(cluster.data_dir, ignore_errors=True)


def test_missing_java_is_one_line_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apache.shutil, "which", lambda name, *args, **kwargs: None)
    with pytest.raises(RuntimeError) as error:
        ensure_kafka_jars()
    message = str(error.value)
    assert "\n" not in message and "Java 17+" in message and "apt-get install openjdk-17-jre-headless" in message


def test_old_java_is_one_line_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apache.shutil, "which", lambda name, *args, **kwargs: f"/opt/fake/bin/{name}")
    monkeypatch.setattr(apache, "_java_major", lambda java: 11)
    with pytest.raises(RuntimeError) as error:
        ensure_kafka_jars()
    message = str(error.value)
    assert "\n" not in message and "Java 11" in message and "openjdk-17-jre-headless" in message


def test_missing_maven_is_one_line_with_install_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(apache.shutil, "which", lambda name, *a, **k: None if name == "mvn" else f"/opt/java/{name}")
    monkeypatch.setattr(apache, "_java_major", lambda java: 17)  # a Java is there; don't need a real one
    with pytest.raises(RuntimeError) as error:
        ensure_kafka_jars(cache_dir=tmp_path / "empty-cache", progress=lambda line: None)
    message = str(error.value)
    assert "\n" not in message and "Maven" in message and "apt-get install maven" in message


def test_cached_jars_need_no_maven(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "libs").mkdir(parents=True)
    (cache / "complete").write_text(apache._pom_digest() + "\n")
    monkeypatch.setattr(apache.shutil, "which", lambda name, *a, **k: None if name == "mvn" else f"/opt/java/{name}")
    monkeypatch.setattr(apache, "_java_major", lambda java: 21)
    lines: list[str] = []
    assert ensure_kafka_jars(cache_dir=cache, progress=lines.append) == cache / "libs"
    assert lines == []  # the marker matched: nothing fetched, nothing printed


def test_pom_pins_kafka_version() -> None:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ET.parse(POM_PATH).getroot()
    assert root.findtext("m:properties/m:kafka.version", namespaces=ns) == KAFKA_VERSION
    dependencies = root.iterfind("m:dependencies/m:dependency", ns)
    artifacts = [dep.findtext("m:artifactId", namespaces=ns) for dep in dependencies]
    assert "kafka_2.13" in artifacts and KAFKA_VERSION.startswith("4.")


def test_cluster_id_looks_like_kafkas() -> None:
    ids = {apache.random_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 22 and not i.startswith("-") and "=" not in i for i in ids)
