"""Liveness vs readiness: a scorer whose broker is gone stays live but stops being ready, and says why."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from dagster_project.kafka.brokers.tansu import EmbeddedBroker
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.registry.store import FilesystemRegistry
from dagster_project.spec import StreamSpec
from tests.dagster_project.serving.support import Client, running_service, train_version, wait_for
from tests.helpers import FakeClock

UNREADY_BOUND_S = 15.0  # the session timeout (6 s) without an answer, plus slack for a busy machine
IDLE_MARGIN_S = 3.0  # an idle scorer stays ready this long past the stale limit


def _timeless(reason: str) -> str:
    """A reason without its elapsed seconds, which grow between two requests."""
    return re.sub(r"for \d+(\.\d+)? s", "for N s", reason)


@pytest.mark.usefixtures("scorer_client")
def test_readiness_needs_a_model_and_the_broker(spec: StreamSpec, registry: FilesystemRegistry, tmp_path: Path) -> None:
    # A private broker, so stopping it disturbs no other test.
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as broker:
        settings = KafkaSettings.from_env(broker.bootstrap)
        with running_service(spec, settings, registry) as service:
            client = Client(service.url)
            assert client.request("GET", "/livez")[:2] == (200, {"live": True})
            status, body, _ = client.request("GET", "/readyz")
            assert (status, body["ready"]) == (503, False)
            # which registry it reads: one started elsewhere (`./.streamfit`) waits on an empty one
            assert body["reasons"][0].startswith(f"waiting for a champion in {registry.root.resolve()} ")
            assert "STREAMFIT_HOME" in body["reasons"][0]

            train_version(registry, spec)
            wait_for(lambda: client.request("GET", "/readyz")[0] == 200, 30, "the scorer to become ready")
            status, health, _ = client.request("GET", "/healthz")
            assert (status, health["live"], health["ready"], health["reasons"]) == (200, True, True, [])
            assert health["kafka"]["assigned"] and health["kafka"]["bootstrap"] == broker.bootstrap

            # No events at all: only the group's heartbeats show the broker answers, past the stale limit.
            idle_until = time.monotonic() + service.scorer.link.stale_after_s + IDLE_MARGIN_S
            while time.monotonic() < idle_until:
                status, body = client.request("GET", "/readyz")[:2]
                assert status == 200, f"an idle scorer with a live broker became unready: {body}"
                time.sleep(0.5)

            broker.stop()
            stopped_at = time.monotonic()
            status, body = wait_for(
                lambda: (answer := client.request("GET", "/readyz")[:2])[0] == 503 and answer,
                UNREADY_BOUND_S,
                "/readyz to report the broker",
                interval_s=0.2,
            )
            unready_s = time.monotonic() - stopped_at
            assert f"no answer from the Kafka broker at {broker.bootstrap}" in body["error"]
            assert body["reasons"] == [body["error"]]
            assert client.request("GET", "/livez")[0] == 200  # a restart would not bring the broker back
            status, health, _ = client.request("GET", "/healthz")
            assert (status, health["model_version"], health["live"], health["ready"]) == (200, "v1", True, False)
            # the same reason, measured a moment later: only its elapsed seconds may differ
            assert [_timeless(reason) for reason in health["reasons"]] == [_timeless(body["error"])]
            assert client.predict([{"x0": 0.1, "x1": 0.2, "x2": 0.3, "x3": 0.4, "x4": 0.5}])[0] == 200
    print(f"\n/readyz reported the stopped broker after {unready_s:.1f} s: {body['error']}")


def test_a_batch_that_keeps_failing_makes_the_scorer_unready_until_it_goes_through(
    spec: StreamSpec, kafka_settings: KafkaSettings, registry: FilesystemRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead letter the broker refused on every write made the scorer retry its batch for ever (writing
    the batch's predictions again each time) while /healthz said ok."""
    from dagster_project.ingest import dead_letters
    from tests.dagster_project.serving.support import produce_raw

    refused = dead_letters.DeadLetterError("1 of 1 dead letters were not acknowledged: MessageSizeTooLarge")
    original = dead_letters.DeadLetterWriter.check

    def refusing(self):
        if self.pending:
            raise refused
        return original(self)

    train_version(registry, spec)
    monkeypatch.setattr(dead_letters.DeadLetterWriter, "check", refusing)
    with running_service(spec, kafka_settings, registry) as service:
        client = Client(service.url)
        wait_for(lambda: client.request("GET", "/readyz")[0] == 200, 30, "the scorer to become ready")
        produce_raw(kafka_settings, spec, [(b"bad", b"{not json")])
        status, body = wait_for(
            lambda: (answer := client.request("GET", "/readyz")[:2])[0] == 503 and answer, 30, "/readyz to say so"
        )
        assert "the same batch failed 3 times in a row, so nothing past it is committed" in body["error"]
        assert "MessageSizeTooLarge" in body["error"]

        monkeypatch.setattr(dead_letters.DeadLetterWriter, "check", original)  # the broker takes it again
        wait_for(lambda: client.request("GET", "/readyz")[0] == 200, 30, "the scorer to be ready again")


def test_the_failing_batch_count_clears_only_when_its_partitions_are_revoked() -> None:
    """A cooperative rebalance reports other members' changes too: clearing on every assignment let a
    replica retrying a poison batch look ready through a rolling deploy."""
    from dagster_project.serving.health import KafkaLink

    link = KafkaLink("broker:9092", "group", stale_after_s=60, stall_after_s=60)
    link.attach(object())
    link.assigned()
    for _ in range(3):
        link.batch_failed("MessageSizeTooLarge", {0})
    assert "the same batch failed 3 times in a row" in link.problem()
    link.assigned()
    link.revoked([1])
    assert "the same batch failed 3 times in a row" in link.problem()
    link.revoked([0])  # its partition went to another member
    assert link.problem() is None


@pytest.mark.usefixtures("scorer_client")
def test_a_scorer_the_group_gave_no_partitions_stays_ready_and_says_it_is_idle(
    kafka_settings: KafkaSettings, registry: FilesystemRegistry
) -> None:
    """Two scorers of a one-partition stream: the second consumed nothing, and nothing said so (/healthz
    showed it `assigned` like the first). Ready all the same: it answers /predict, and it is the standby."""
    from tests.conftest import synthetic_spec

    spec = synthetic_spec(partitions=1, label={"classes": ["neg", "pos"]})
    train_version(registry, spec)
    with running_service(spec, kafka_settings, registry) as first:
        wait_for(lambda: first.scorer.partitions == {0}, 30, "the first scorer to own the partition")
        with running_service(spec, kafka_settings, registry) as second:
            clients = {first: Client(first.url), second: Client(second.url)}

            def links() -> dict:
                return {s: c.request("GET", "/healthz")[1]["kafka"] for s, c in clients.items()}

            def settled() -> dict | None:  # both in the group, one partition between them
                found = links()
                owners = [s for s, k in found.items() if k["partitions"] == [0]]
                assigned = all(k["assigned"] for k in found.values())
                return found if assigned and len(owners) == 1 and second.scorer.assigned.is_set() else None

            found = wait_for(settled, 30, "the group to settle with one owner")
            owner = next(s for s, k in found.items() if k["partitions"] == [0])  # either: the assignor decides
            idle = second if owner is first else first
            assert found[idle]["partitions"] == [] and "no partitions" in found[idle]["idle"]
            assert found[owner]["idle"] is None
            for scorer, client in clients.items():
                assert client.request("GET", "/readyz")[:2] == (200, {"ready": True})
                assert scorer.metrics.value("streamfit_scorer_partitions") == (1 if scorer is owner else 0)

            owner.stop()  # the owner leaves: the standby takes over
            kafka = wait_for(
                lambda: (k := clients[idle].request("GET", "/healthz")[1]["kafka"])["partitions"] == [0] and k,
                30,
                "the standby to take the partition over",
            )
            assert kafka["idle"] is None and idle.metrics.value("streamfit_scorer_partitions") == 1
            assert clients[idle].request("GET", "/readyz")[0] == 200


@pytest.mark.usefixtures("scorer_client")
def test_a_stuck_kafka_loop_makes_the_scorer_unready_naming_the_loop(
    spec: StreamSpec, kafka_settings: KafkaSettings, registry: FilesystemRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loop stuck in one batch (a hung call) while the broker answers: unready, and the reason names the loop
    (with confluent it said "no answer from the Kafka broker", sending the operator to a healthy broker)."""
    import threading

    from dagster_project.serving.scoring import BatchScorer
    from tests.dagster_project.serving.support import produce_rows, synthetic_rows

    release = threading.Event()
    prepare = BatchScorer.prepare

    def hanging(self, batch):
        release.wait(60)
        return prepare(self, batch)

    train_version(registry, spec)
    with running_service(spec, kafka_settings, registry) as service:
        # flush timeout + session timeout (36 s) in production; kept above the session timeout (6 s) here, where
        # confluent's heartbeats (served inside poll) go stale first: that was reported as a broker that did not answer
        service.scorer.link.stall_after_s = 12.0
        client = Client(service.url)
        wait_for(lambda: client.request("GET", "/readyz")[0] == 200, 30, "the scorer to become ready")
        monkeypatch.setattr(BatchScorer, "prepare", hanging)
        produce_rows(kafka_settings, spec, synthetic_rows(10))
        try:
            status, body = wait_for(
                lambda: (answer := client.request("GET", "/readyz")[:2])[0] == 503 and answer, 30, "/readyz to say so"
            )
            assert "the Kafka loop has not polled for" in body["error"]
        finally:
            release.set()  # a failed assertion must not leave the loop hanging
        wait_for(lambda: client.request("GET", "/readyz")[0] == 200, 30, "the scorer to be ready again")
        wait_for(lambda: service.scorer.scored >= 10, 30, "the batch scored")


def test_the_stall_clock_starts_when_the_consumer_is_attached(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop stuck before its first poll returned (a replacement consumer after a rejoin) never counted as stuck."""
    from dagster_project.serving import health
    from dagster_project.serving.health import KafkaLink

    clock = FakeClock()  # a real pause of 0.2 s between attach() and the first problem() failed this
    monkeypatch.setattr(health, "time", clock)
    link = KafkaLink("broker:9092", "group", stale_after_s=60, stall_after_s=0.2)
    link.attach(object())
    link.assigned([0])
    clock.sleep(0.15)
    assert link.problem() is None
    clock.sleep(0.15)
    assert link.problem() == "the Kafka loop has not polled for 0.3 s (limit 0.2 s)"


def test_a_partition_without_a_fetchable_leader_is_a_warning_past_the_stale_limit_not_unready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The group coordinator answers, so the scorer looked ready while one partition's leader was down and
    its events waited: /healthz names the partition, for how long and why; /readyz stays 200 (readiness
    steers /predict, which does not need that partition). The real cluster case is in
    tests/faults/test_cluster_failures.py."""
    from dagster_project.serving import health
    from dagster_project.serving.health import KafkaLink

    clock = FakeClock()  # the grace and the warning are judged on elapsed time: a loaded machine's pause is not
    monkeypatch.setattr(health, "time", clock)

    class Consumer:
        blocked: dict[int, str] = {}

        def unfetchable(self, partitions: frozenset[int]) -> dict[int, str]:
            return {p: why for p, why in self.blocked.items() if p in partitions}

    consumer = Consumer()
    link = KafkaLink("broker:9092", "group", stale_after_s=0.2, stall_after_s=60)
    link.attach(consumer)
    link.assigned([0, 1])
    link.contact()
    assert link.check_fetches() == {0: 0.0, 1: 0.0} and link.unfetched() is None
    consumer.blocked = {1: "no leader", 2: "not ours"}
    link.check_fetches()
    assert link.unfetched() is None, "a leader election is not worth a word"
    clock.sleep(0.3)
    link.contact()
    seconds = link.check_fetches()
    assert seconds[0] == 0.0 and seconds[1] > 0.2 and 2 not in seconds
    unfetched = link.unfetched()
    assert unfetched["partitions"] == [1] and unfetched["reasons"] == {"1": "no leader"}
    assert re.match(
        r"no fetch from partitions \[1\] of the events topic for 0\.3 s \(limit 0\.2 s\): no leader",
        unfetched["warning"],
    )
    assert link.problem() is None and link.describe()["unfetched"] == unfetched
    link.revoked([1])  # another member has it now
    assert link.unfetched() is None and link.check_fetches() == {0: 0.0}
    link.assigned([1])
    consumer.blocked = {}
    assert link.check_fetches() == {0: 0.0, 1: 0.0} and link.unfetched() is None
