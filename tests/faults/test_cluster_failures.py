"""Broker failures on a 3-node Apache Kafka cluster: leaders killed, two nodes down, the whole cluster
restarted. Training, exactly-once scoring and the label join carry on with nothing lost, nothing
twice, and no action beyond (re)starting brokers.

One cluster for the module (replication factor 3, min.insync.replicas 2: the launcher's defaults for 3
nodes), with a short broker session so the controller fences a crashed node, and moves its leaderships,
within seconds. Every test starts and ends with all three nodes up.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest

import assets.training
from dagster_project.kafka import clients
from dagster_project.kafka.brokers.apache import ApacheKafkaCluster, ensure_kafka_jars
from dagster_project.kafka.io import committed_group_offsets, probe_partitions
from dagster_project.kafka.settings import BOOTSTRAP_ENV, KafkaSettings
from dagster_project.labels import produce_labels
from dagster_project.resources import KafkaResource
from dagster_project.serving import scorer_group
from tests.conftest import TEST_BROKER_CONFIG, synthetic_spec
from tests.dagster_project.serving.support import Client, Producer, running_service, wait_for
from tests.helpers import (
    StreamfitProcess,
    defs_for,
    high_waters,
    kafka_sensor_tick,
    produce_synthetic,
    read_committed,
    run_batch,
)

pytestmark = pytest.mark.apache_kafka  # starts its own cluster: runs in the Apache Kafka session (tests/conftest.py)

# The controller fences a broker that missed heartbeats for this long (Kafka's default: 9 s), and only then
# elects new leaders for its partitions: the failover time clients see after a kill -9.
BROKER_SESSION_MS = 4000
CLUSTER_CONFIG = TEST_BROKER_CONFIG | {
    "broker.session.timeout.ms": str(BROKER_SESSION_MS),
    "broker.heartbeat.interval.ms": "500",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    ensure_kafka_jars()
    directory = tmp_path_factory.mktemp("cluster")
    with ApacheKafkaCluster(
        nodes=3, data_dir=directory / "data", log_dir=directory, broker_config=CLUSTER_CONFIG
    ) as started:
        print(f"\n3-node Apache Kafka cluster up in {started.startup_seconds:.1f} s")
        yield started


@pytest.fixture
def healthy(cluster: ApacheKafkaCluster):
    """The cluster with all three nodes up and every partition fully in sync, before and after the test (a failed
    test may leave one down; a restarted node catches up on the internal topics after it is back)."""

    def heal() -> None:
        down = [n for n in cluster.node_ids if n not in cluster.pids]
        for node in down:
            cluster.restart_node(node)
        cluster.wait_fully_replicated()

    heal()
    yield cluster
    heal()


def _planned(tick) -> dict[int, tuple[int, int]]:
    assert isinstance(tick, dg.SensorResult), f"the sensor planned nothing: {tick}"
    (request,) = tick.run_requests
    config = next(iter(request.run_config["ops"].values()))["config"]
    return {int(r["partition"]): (r["start"], r["end"]) for r in config["ranges"]}


def _tick_until_planned(defs, spec, instance, kafka, registry, timeout_s: float = 60.0):
    """Sensor ticks until one plans a run; returns (ranges, the skip reasons seen before it)."""
    skips: list[str] = []
    deadline = time.monotonic() + timeout_s
    while True:
        tick = kafka_sensor_tick(defs, spec, instance, kafka, registry)
        if isinstance(tick, dg.SensorResult):
            return _planned(tick), skips
        skips.append(tick.skip_message)
        assert time.monotonic() < deadline, f"no run planned within {timeout_s}s; the sensor said: {skips[-3:]}"
        time.sleep(0.5)


def _scored(service, count: int, timeout_s: float, what: str) -> None:
    """Wait until the scorer scored `count` events; the failure message carries its health report."""
    _waited(service, lambda: service.scorer.scored >= count, timeout_s, what)


def _waited(service, condition, timeout_s: float, what: str, producer: Producer | None = None) -> None:
    """wait_for, with the scorer's health report and counts in the failure message; fails at once, naming the
    error, when the events `producer` stopped (nothing more to score then)."""
    try:
        wait_for(lambda: condition() or (producer is not None and producer.error is not None), timeout_s, what)
        if producer is not None and producer.error is not None:
            raise AssertionError(f"the events producer stopped after {len(producer.sent)} events: {producer.error!r}")
    except AssertionError as exc:
        report = service.health.report()
        print(_thread_stacks(), file=sys.stderr)
        raise AssertionError(f"{exc}; scored {service.scorer.scored}; scorer health: {report.detail}") from None


def _thread_stacks() -> str:
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    return "\n".join(
        f"--- thread {names.get(ident, ident)}\n" + "".join(traceback.format_stack(frame))
        for ident, frame in sys._current_frames().items()
    )


def _replicas(settings: KafkaSettings, topic: str) -> dict[int, list[int]]:
    admin = clients.admin(settings)
    try:
        (described,) = admin.describe_topics([topic])
    finally:
        admin.close()
    return {p["partition_index"]: sorted(p["replica_nodes"]) for p in described["partitions"]}


def _learned_everything(registry, spec, settings: KafkaSettings, produced: int) -> None:
    head = registry.versions(spec.name)[-1]
    ends = high_waters(settings, spec.events_topic)
    assert head.learned == ends, f"{head.name} learned up to {head.learned}, the topic ends at {ends}"
    assert head.meta["rows_learned_total"] == produced, (
        f"{head.name} learned {head.meta['rows_learned_total']} rows, {produced} were produced (each once)"
    )
    assert committed_group_offsets(settings, spec.trainer_group, spec.events_topic) == ends


@pytest.mark.timeout(240)
def test_the_leader_of_an_events_partition_killed_during_a_training_run(
    healthy: ApacheKafkaCluster, registry, instance, streamfit_home, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = healthy
    spec = synthetic_spec(batch={"rows": 200, "max_rows": 5000, "max_wait_s": 3600, "sensor_interval_s": 5})
    settings = KafkaSettings.from_env(cluster.bootstrap)
    kafka = KafkaResource(bootstrap=cluster.bootstrap)
    defs = defs_for(spec, cluster.bootstrap, registry)
    produced = produce_synthetic(settings, spec, 600)
    assert _replicas(settings, spec.events_topic) == {0: [1, 2, 3], 1: [1, 2, 3]}, "replication factor 3"

    ranges, _ = _tick_until_planned(defs, spec, instance, kafka, registry)
    victim = cluster.leader_of(spec.events_topic, 1)
    killed: list[float] = []
    read_batch = assets.training.read_batch

    def kill_then_read(*args, **kwargs):  # inside the run, just before it reads the planned offsets
        cluster.kill_node(victim)
        killed.append(time.monotonic())
        return read_batch(*args, **kwargs)

    monkeypatch.setattr(assets.training, "read_batch", kill_then_read)
    assert run_batch(defs, spec, ranges, instance).success, "the run must ride out the failover"
    run_seconds = time.monotonic() - killed[0]
    monkeypatch.setattr(assets.training, "read_batch", read_batch)
    new_leader = cluster.leader_of(spec.events_topic, 1)
    assert new_leader not in (None, victim), f"partition 1 should have a new leader, not {new_leader}"

    # Still one node down: acks=all needs 2 in-sync replicas of 3, so producing goes on, and so does training.
    produced += produce_synthetic(settings, spec, 400, start=produced)
    ranges, skips = _tick_until_planned(defs, spec, instance, kafka, registry)
    assert run_batch(defs, spec, ranges, instance).success
    assert all("broker failover" in s for s in skips), skips

    started = time.monotonic()
    cluster.restart_node(victim)  # back with its data: it catches up as a follower, nobody has to act
    rejoin_seconds = time.monotonic() - started
    produced += produce_synthetic(settings, spec, 200, start=produced)
    ranges, _ = _tick_until_planned(defs, spec, instance, kafka, registry)
    assert run_batch(defs, spec, ranges, instance).success

    assert len(registry.versions(spec.name)) == 3
    _learned_everything(registry, spec, settings, produced)
    print(
        f"\nleader {victim} of {spec.events_topic}[1] killed in a run: the run finished {run_seconds:.1f} s after "
        f"the kill (leader now {new_leader}); node {victim} rejoined in {rejoin_seconds:.1f} s; "
        f"{produced} rows learned once"
    )


@pytest.mark.timeout(240)
def test_a_partition_without_a_live_leader_makes_the_sensor_wait_and_say_why(
    healthy: ApacheKafkaCluster, registry, instance, streamfit_home
) -> None:
    """Two of three nodes die at once: the controller quorum is lost too, so nothing can move the
    leadership of the partition they led: it has no live leader until a node returns."""
    cluster = healthy
    spec = synthetic_spec(batch={"rows": 200, "max_rows": 5000, "max_wait_s": 3600, "sensor_interval_s": 5})
    settings = KafkaSettings.from_env(cluster.bootstrap)
    kafka = KafkaResource(bootstrap=cluster.bootstrap)
    defs = defs_for(spec, cluster.bootstrap, registry)
    produced = produce_synthetic(settings, spec, 400)
    assert run_batch(defs, spec, _tick_until_planned(defs, spec, instance, kafka, registry)[0], instance).success

    leaders = {p: cluster.leader_of(spec.events_topic, p) for p in (0, 1)}
    survivor = next(n for n in cluster.node_ids if n != leaders[1] and (n == leaders[0] or leaders[0] == leaders[1]))
    doomed = [n for n in cluster.node_ids if n != survivor]
    for node in doomed:
        cluster.kill_node(node)
    waiting = kafka_sensor_tick(defs, spec, instance, kafka, registry)
    assert isinstance(waiting, dg.SkipReason), f"the sensor should wait, not {waiting}"
    message = waiting.skip_message
    assert f"partition 1 of {spec.events_topic} has no live leader: broker {leaders[1]}" in message, message
    assert "(broker failover); waiting" in message and "nothing planned, nothing advanced" in message, message
    # partition 0 waits too only if the same node led both
    assert (f"partition 0 of {spec.events_topic}" in message) == (leaders[0] == leaders[1]), message
    assert len(registry.versions(spec.name)) == 1

    started = time.monotonic()
    for node in doomed:
        cluster.restart_node(node)
    produced += produce_synthetic(settings, spec, 300, start=produced)
    ranges, skips = _tick_until_planned(defs, spec, instance, kafka, registry)
    back_seconds = time.monotonic() - started
    assert run_batch(defs, spec, ranges, instance).success
    _learned_everything(registry, spec, settings, produced)
    print(f"\nnodes {doomed} down, sensor: {message}\nplanning again {back_seconds:.1f} s after the restarts")


def _transaction_coordinator(settings: KafkaSettings, transactional_id: str) -> int:
    admin = clients.admin(settings)
    try:
        (described,) = admin.describe_transactions([transactional_id]).values()
    finally:
        admin.close()
    return described.coordinator_id


@pytest.mark.timeout(240)
@pytest.mark.parametrize("victim", ["predictions_leader", "transaction_coordinator"])
@pytest.mark.usefixtures("scorer_client")
def test_a_broker_killed_under_an_exactly_once_scorer(
    victim: str, healthy: ApacheKafkaCluster, registry, streamfit_home
) -> None:
    """kill -9 of the leader of a predictions partition (one that is not the scorer's transaction coordinator,
    where the cluster allows), or of the scorer's transaction coordinator, while events flow: every event is
    predicted exactly once (read_committed), and the group's offsets end at the events' ends."""
    from tests.dagster_project.serving.support import train_version

    cluster = healthy
    spec = synthetic_spec()
    settings = KafkaSettings.from_env(cluster.bootstrap)
    train_version(registry, spec)
    producer = Producer(settings, spec, rate=400, chunk=40, retries=30)  # an upstream that rides out the failover
    options = {"delivery": "exactly-once", "replica_id": "failover-1", "max_poll_records": 100}
    with running_service(spec, settings, registry, **options) as service:
        producer.start()
        committed = lambda: service.metrics.value("streamfit_scorer_transactions_total", outcome="committed")  # noqa: E731
        _waited(service, lambda: committed() >= 5, 60, "five committed transactions", producer)
        coordinator = _transaction_coordinator(settings, service.scorer.transactional_id)
        leaders = {p: cluster.leader_of(spec.predictions_topic, p) for p in range(spec.partitions)}
        if victim == "transaction_coordinator":
            node = coordinator
        else:
            node = next((n for n in leaders.values() if n != coordinator), leaders[0])
        before = committed()
        cluster.kill_node(node)
        killed_at = time.monotonic()
        _waited(service, lambda: committed() >= before + 5, 90, "transactions to commit again after the kill", producer)
        resumed_s = time.monotonic() - killed_at
        cluster.restart_node(node)
        sent = producer.stop()
        _scored(service, len(sent), 60, f"all {len(sent)} events scored")
        aborted = service.metrics.value("streamfit_scorer_transactions_total", outcome="aborted")

    # Each event record once: a chunk the producer resent after a failure may have landed twice, as two records.
    events = Counter(e["id"] for e in read_committed(settings, spec.events_topic))
    assert set(events) >= set(sent), f"{len(set(sent) - set(events))} acknowledged events missing from the topic"
    predicted = Counter(p["id"] for p in read_committed(settings, spec.predictions_topic))
    twice = {eid: n for eid, n in predicted.items() if n > events[eid]}
    assert not twice, f"{len(twice)} events predicted more often than they occur: {list(twice.items())[:5]}"
    assert predicted == events, f"{len(set(events) - set(predicted))} events without a committed prediction"
    ends = {s.partition: s.high_water for s in probe_partitions(settings, spec.events_topic, {})}
    assert committed_group_offsets(settings, scorer_group(spec), spec.events_topic) == ends
    led = sorted(p for p, n in leaders.items() if n == node)
    print(
        f"\n{victim}: node {node} killed (transaction coordinator {coordinator}, led predictions partitions {led}) "
        f"under an exactly-once scorer: transactions committed again {resumed_s:.1f} s later ({aborted:.0f} "
        f"failed and retried); {len(sent)} events, each predicted once; the events producer resent "
        f"{len(producer.failures)} chunks{': ' + producer.failures[0] if producer.failures else ''}"
    )


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("scorer_client")
def test_the_whole_cluster_stopped_and_started_again(
    healthy: ApacheKafkaCluster, registry, instance, streamfit_home: Path, tmp_path: Path
) -> None:
    """Training (sensor -> run), an exactly-once scorer and `streamfit labels join` all keep running through a
    full cluster restart; nothing is lost, nothing counted twice, and nobody does anything but start the brokers."""
    import yaml

    cluster = healthy
    spec = synthetic_spec(
        batch={"rows": 200, "max_rows": 5000, "max_wait_s": 3600, "sensor_interval_s": 5},
        labels={"join_window_s": 600, "flush_interval_s": 0.3},
    )
    streams = tmp_path / "streams"
    streams.mkdir()
    (streams / f"{spec.name}.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    settings = KafkaSettings.from_env(cluster.bootstrap)
    kafka = KafkaResource(bootstrap=cluster.bootstrap)
    defs = defs_for(spec, cluster.bootstrap, registry)

    produced = produce_synthetic(settings, spec, 400)
    assert run_batch(defs, spec, _tick_until_planned(defs, spec, instance, kafka, registry)[0], instance).success
    assert registry.champion(spec.name) == "v1"
    labelled = produce_labels(settings, spec, "synthetic", limit=produced)

    env = os.environ | {
        BOOTSTRAP_ENV: cluster.bootstrap,
        "STREAMFIT_STREAMS": str(streams),
        "STREAMFIT_HOME": str(streamfit_home),
        "PYTHONFAULTHANDLER": "1",  # SIGABRT dumps every thread's stack: what a stuck joiner was doing
    }
    joiner = StreamfitProcess(["labels", "join", spec.name], env=env)

    def joined(count: int, timeout_s: float) -> None:
        try:
            joiner.wait_for(f"joined {count}, pending 0 predictions / 0 labels", timeout_s=timeout_s)
        except AssertionError:
            # Its last lines at the very end: CI shows the start and the end of a long failure, not the middle.
            last = "\n".join(joiner.seen[-25:])
            joiner.proc.send_signal(signal.SIGABRT)
            time.sleep(2)
            dump = []
            while not joiner.lines.empty():
                dump.append(joiner.lines.get() or "")
            raise AssertionError(
                "joiner threads:\n" + "\n".join(dump) + f"\nthe joiner did not print 'joined {count}, pending 0 "
                f"...' within {timeout_s} s; its last lines before the stack dump:\n{last}"
            ) from None

    options = {"delivery": "exactly-once", "replica_id": "restart-1"}
    try:
        with running_service(spec, settings, registry, **options) as service:
            _scored(service, produced, 60, f"{produced} predictions")
            joined(produced, 60)

            stopped_at = time.monotonic()
            cluster.stop_all_nodes()
            waiting = kafka_sensor_tick(defs, spec, instance, kafka, registry)
            assert isinstance(waiting, dg.SkipReason) and "unreachable" in waiting.skip_message, waiting
            client = Client(service.url)
            wait_for(lambda: client.request("GET", "/readyz")[0] == 503, 30, "the scorer to report the outage")
            assert client.request("GET", "/livez")[0] == 200

            cluster.start_all_nodes()  # the only action
            down_seconds = time.monotonic() - stopped_at
            more = produce_synthetic(settings, spec, 400, start=produced)
            labelled += produce_labels(settings, spec, "synthetic", start=produced, limit=more)
            produced += more
            ranges, skips = _tick_until_planned(defs, spec, instance, kafka, registry)
            assert run_batch(defs, spec, ranges, instance).success
            _scored(service, produced, 90, f"{produced} predictions after the restart")
            wait_for(lambda: client.request("GET", "/readyz")[0] == 200, 30, "the scorer to be ready again")
            joined(produced, 90)
            caught_up_seconds = time.monotonic() - stopped_at - down_seconds
        joiner.proc.send_signal(signal.SIGTERM)
        assert joiner.proc.wait(timeout=30) == 0
        joiner.wait_for("label joiner stopped")
    finally:
        joiner.kill()

    _learned_everything(registry, spec, settings, produced)
    predicted = Counter(p["id"] for p in read_committed(settings, spec.predictions_topic))
    assert len(predicted) == produced and set(predicted.values()) == {1}, predicted.most_common(3)
    assert labelled == produced
    print(
        f"\nwhole cluster down {down_seconds:.1f} s (stop + start); training, scoring and the label join caught up "
        f"{caught_up_seconds:.1f} s after the start; sensor skips meanwhile: {skips[:2]}"
    )


def _single_replica_topic(cluster: ApacheKafkaCluster, topic: str) -> dict[int, int]:
    """`topic` with one partition on each node and no other replica, so a dead leader has no successor.
    Returns partition -> node."""
    from confluent_kafka.admin import AdminClient, NewTopic

    placement = dict(enumerate(cluster.node_ids))
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    assignment = [[placement[p]] for p in sorted(placement)]
    new = NewTopic(topic, len(assignment), replica_assignment=assignment, config={"min.insync.replicas": "1"})
    admin.create_topics([new])[topic].result(timeout=30)
    wait_for(lambda: all(cluster.leader_of(topic, p) == n for p, n in placement.items()), 30, f"{topic}'s leaders")
    return placement


def _group_coordinator(cluster: ApacheKafkaCluster, group: str) -> int:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    return admin.describe_consumer_groups([group])[group].result(timeout=30).coordinator.id


# A leader's absence is named past the stale limit (6 s) and the check runs every second; slack for a busy machine.
UNFETCHED_BOUND_S = 30.0


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("scorer_client")
def test_a_partition_whose_leader_is_down_is_named_while_the_coordinator_answers(
    healthy: ApacheKafkaCluster, registry, streamfit_home
) -> None:
    """The leader of one assigned events partition killed (one replica: no failover), the group coordinator
    on another node: the heartbeats went on, so the scorer looked ready and healthy while that partition's
    events waited. /healthz names the partition and why within a bound, the gauge counts its seconds, the
    scorer stays ready (/predict does not need the partition); all of it clears when the broker is back."""
    from tests.dagster_project.serving.support import train_version

    cluster = healthy
    spec = synthetic_spec(partitions=len(cluster.node_ids))
    settings = KafkaSettings.from_env(cluster.bootstrap)
    placement = _single_replica_topic(cluster, spec.events_topic)
    train_version(registry, spec)
    produced = produce_synthetic(settings, spec, 60)
    with running_service(spec, settings, registry, delivery="at-least-once") as service:
        _waited(service, lambda: service.scorer.partitions == set(placement), 60, "all partitions assigned")
        _scored(service, produced, 60, f"{produced} events scored")
        client = Client(service.url)
        coordinator = _group_coordinator(cluster, scorer_group(spec))
        partition, victim = next((p, n) for p, n in placement.items() if n != coordinator)
        unfetched = lambda p: service.metrics.value("streamfit_scorer_partition_unfetched_seconds", partition=str(p))  # noqa: E731
        assert not client.request("GET", "/healthz")[1].get("warnings")

        cluster.kill_node(victim)
        killed_at = time.monotonic()

        def named() -> dict | None:
            health = client.request("GET", "/healthz")[1]
            return health if health.get("warnings") else None

        _waited(service, named, UNFETCHED_BOUND_S, f"/healthz to name partition {partition}")
        named_s = time.monotonic() - killed_at
        health = named()
        (warning,) = health["warnings"]
        assert warning.startswith(f"no fetch from partitions [{partition}] of the events topic for "), warning
        assert health["kafka"]["unfetched"]["partitions"] == [partition], health["kafka"]
        assert health["ready"] and client.request("GET", "/readyz")[:2] == (200, {"ready": True}), health
        assert unfetched(partition) > 5 and all(unfetched(p) == 0 for p in placement if p != partition)

        cluster.restart_node(victim)
        restarted_at = time.monotonic()
        _waited(
            service,
            lambda: not client.request("GET", "/healthz")[1]["warnings"] and unfetched(partition) == 0,
            60,
            f"partition {partition}'s warning to clear",
        )
        cleared_s = time.monotonic() - restarted_at
        produced += produce_synthetic(settings, spec, 60, start=produced)
        _scored(service, produced, 60, f"{produced} events scored after the broker returned")
    print(
        f"\nleader {victim} of {spec.events_topic}[{partition}] killed (coordinator {coordinator}): named "
        f"{named_s:.1f} s later ({warning}); cleared {cleared_s:.1f} s after the restart"
    )
