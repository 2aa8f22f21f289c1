"""A run that failed because the broker was away past its retries: the stream resumes by itself once
the broker answers, learning the batch's offsets once; any other failure still halts for an operator."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from prometheus_client import generate_latest

from dagster_project.dev.faults import FAULT_ENV
from dagster_project.kafka import clients
from dagster_project.kafka.brokers.apache import ApacheKafkaCluster, ensure_kafka_jars
from dagster_project.kafka.brokers.tansu import EmbeddedBroker, free_port
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.observability.exporter import exporter_registry
from dagster_project.resources import KafkaResource
from sensors.resume_policy import RESUME_FIRST_WAIT_S
from tests.blip import Blip
from tests.conftest import TEST_BROKER_CONFIG, synthetic_spec
from tests.helpers import defs_for, high_waters, kafka_sensor_tick, produce_synthetic

BATCH = {"rows": 400, "max_rows": 400, "max_wait_s": 3600, "sensor_interval_s": 1, "step_retries": 1}


def _ranges(request: dg.RunRequest) -> dict[int, tuple[int, int]]:
    config = next(iter(request.run_config["ops"].values()))["config"]
    return {int(r["partition"]): (r["start"], r["end"]) for r in config["ranges"]}


def _run(defs: dg.Definitions, spec, request: dg.RunRequest, instance) -> dg.ExecuteInProcessResult:
    """The request's run as the daemon would launch it: its config, its tags and its run key."""
    return defs.resolve_job_def(f"{spec.name}_training").execute_in_process(
        run_config=request.run_config,
        instance=instance,
        tags={**request.tags, "dagster/run_key": request.run_key},
        raise_on_error=False,
    )


def _gauges(registry, spec, settings) -> str:
    return generate_latest(exporter_registry(registry, [spec], settings)).decode()


def _backoff_passed(registry, spec) -> None:
    """As if the backoff's wait were over (the test does not sleep a minute)."""
    halt = registry.halt(spec.name)
    registry.set_halt(spec.name, {**halt, "auto_resume": {**halt["auto_resume"], "not_before": time.time() - 1}})


@pytest.mark.timeout(300)
def test_a_run_failed_by_a_broker_outage_resumes_by_itself_once_the_broker_answers(
    registry, instance, specs_dir, streamfit_home, blip
):
    spec = synthetic_spec(batch=BATCH)
    with _behind_a_blip(spec, registry, instance, blip) as (defs, kafka, settings, request):
        blip.cut()  # down past the step retries: the run fails, as in production after ~30 s
        failed = _run(defs, spec, request, instance)
        assert not failed.success
        down = kafka_sensor_tick(defs, spec, instance, kafka, registry)
        assert isinstance(down, dg.SkipReason) and "nothing planned" in down.skip_message  # as before

        blip.restore()  # the broker answers: the failed batch halts the stream, which resumes itself
        halted = kafka_sensor_tick(defs, spec, instance, kafka, registry)
        assert isinstance(halted, dg.SkipReason) and "HALTED by a failed run" in halted.skip_message
        assert "BrokerUnavailable" in halted.skip_message, halted.skip_message
        assert "resuming automatically after the broker answers; attempt 1" in halted.skip_message
        halt = registry.halt(spec.name)
        assert halt["run_id"] == failed.run_id and halt["auto_resume"]["error"] == "BrokerUnavailable"
        scraped = _gauges(registry, spec, settings)
        assert f'streamfit_halted{{stream="{spec.name}"}} 1.0' in scraped
        assert f'streamfit_halt_auto_resuming{{stream="{spec.name}"}} 1.0' in scraped  # it does not page

        blip.cut()  # gone again before the next tick: nothing is requested until it answers
        waiting = kafka_sensor_tick(defs, spec, instance, kafka, registry)
        assert isinstance(waiting, dg.SkipReason) and "the broker does not answer yet" in waiting.skip_message
        blip.restore()
        resumed = kafka_sensor_tick(defs, spec, instance, kafka, registry)
        assert isinstance(resumed, dg.SensorResult), resumed
        (first,) = resumed.run_requests
        assert first.run_config == request.run_config  # the same exact offsets
        assert first.run_key == f"{request.run_key}#resume1" and first.tags["streamfit/resumes_run"]
        # A tick before the daemon created the run requests the same key: Dagster launches it once
        (same,) = kafka_sensor_tick(defs, spec, instance, kafka, registry).run_requests
        assert same.run_key == first.run_key

        blip.cut()  # the resumed run meets the outage too: the next resume waits (backoff)
        assert not _run(defs, spec, first, instance).success
        blip.restore()
        backoff = kafka_sensor_tick(defs, spec, instance, kafka, registry)
        assert isinstance(backoff, dg.SkipReason) and "attempt 2, not before" in backoff.skip_message, backoff
        auto = registry.halt(spec.name)["auto_resume"]
        assert auto["failed"] == 1 and auto["not_before"] >= time.time() + RESUME_FIRST_WAIT_S - 10
        assert "attempt 2" in auto["status"]
        _backoff_passed(registry, spec)
        (again,) = kafka_sensor_tick(defs, spec, instance, kafka, registry).run_requests
        assert again.run_key == f"{request.run_key}#resume2" and again.run_config == request.run_config

        assert _run(defs, spec, again, instance).success
        assert registry.halt(spec.name) is None  # its version cleared the halt
        (version,) = registry.versions(spec.name)
        assert version.learned == {p: end for p, (_, end) in _ranges(request).items()}
        assert version.meta["rows_learned_total"] == 400
        cleared = [d for d in registry.decisions(spec.name) if d.get("kind") == "halt_cleared"]
        assert cleared[-1]["halt"]["auto_resume"]["attempt"] == 2  # the record says how it resumed

        produce_synthetic(settings, spec, 400, start=400)  # and on: the next batch starts after it
        (following,) = kafka_sensor_tick(defs, spec, instance, kafka, registry).run_requests
        assert all(_ranges(following)[p][0] == end for p, (_, end) in _ranges(request).items())
        assert _run(defs, spec, following, instance).success
        head = registry.versions(spec.name)[-1]
        assert head.meta["rows_learned_total"] == 800  # every row once
        assert head.learned == high_waters(settings, spec.events_topic)


def test_a_run_that_fails_on_anything_else_still_halts_for_an_operator(
    kafka_bootstrap, kafka_settings, spec, registry, stream_defs, instance, specs_dir, streamfit_home, monkeypatch
):
    produce_synthetic(kafka_settings, spec, 400)
    kafka = KafkaResource(bootstrap=kafka_bootstrap)
    (request,) = kafka_sensor_tick(stream_defs, spec, instance, kafka, registry).run_requests
    monkeypatch.setenv(FAULT_ENV, "after_train")  # a bug, not an outage
    assert not _run(stream_defs, spec, request, instance).success
    monkeypatch.delenv(FAULT_ENV)
    for _ in range(2):  # the broker answers, and still nothing is requested
        halted = kafka_sensor_tick(stream_defs, spec, instance, kafka, registry)
        assert isinstance(halted, dg.SkipReason) and "HALTED by a failed run" in halted.skip_message
        assert "resuming automatically" not in halted.skip_message and "InjectedFault" in halted.skip_message
    assert "auto_resume" not in registry.halt(spec.name)
    assert f'streamfit_halt_auto_resuming{{stream="{spec.name}"}} 0.0' in _gauges(registry, spec, kafka_settings)


def _tansu_at(tmp_path: Path, port: int, advertised: str) -> contextlib.AbstractContextManager[object]:
    """The embedded Tansu broker on `port`, telling clients to reach it at `advertised`."""
    return EmbeddedBroker(port=port, advertised=advertised, log_path=tmp_path / "tansu.log")


def _apache_kafka_at(tmp_path: Path, port: int, advertised: str) -> contextlib.AbstractContextManager[object]:
    """A single Apache Kafka node whose PLAINTEXT listener is on `port` and advertised at `advertised`.

    The one listener is also the inter-broker one, so the node's requests to itself (transaction markers)
    would cross the link too; training sends none, and a single node replicates nothing.
    """
    ensure_kafka_jars()
    config = TEST_BROKER_CONFIG | {"advertised.listeners": f"PLAINTEXT://{advertised}"}
    return ApacheKafkaCluster(1, data_dir=tmp_path / "kafka", log_dir=tmp_path, broker_config=config, client_port=port)


BROKERS_AT = {"tansu": _tansu_at, "kafka": _apache_kafka_at}


@pytest.fixture(params=["tansu", pytest.param("kafka", marks=pytest.mark.apache_kafka)])
def blip(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Blip]:
    """A broker of each kind that every client, the runs' included, reaches only through a link the test
    can cut: it advertises the link's address, so metadata and coordinator lookups lead back to the link.
    The link listens first: Apache Kafka's start-up check already follows the advertised address."""
    proxy_port, broker_port = _two_free_ports()
    with Blip(broker_port, proxy_port) as link, BROKERS_AT[request.param](tmp_path, broker_port, link.address):
        assert _advertised(link.address) == {("127.0.0.1", link.port)}, "clients must only learn the link's address"
        yield link


def _advertised(bootstrap: str) -> set[tuple[str, int]]:
    """The broker addresses the cluster's metadata hands to clients."""
    admin = clients.admin(KafkaSettings.from_env(bootstrap))
    try:
        return {(b["host"], b["port"]) for b in admin.describe_cluster()["brokers"]}
    finally:
        admin.close()


def _two_free_ports() -> tuple[int, int]:
    """Two distinct free loopback ports (free_port() may hand out the same one twice)."""
    first = free_port()
    second = free_port()
    while second == first:
        second = free_port()
    return first, second


@contextlib.contextmanager
def _behind_a_blip(spec, registry, instance, blip: Blip):
    """A stream on a broker reached only through `blip`, with 400 events and the sensor's first request:
    (defs, kafka resource, settings, request)."""
    settings = KafkaSettings.from_env(blip.address)
    kafka = KafkaResource(bootstrap=blip.address)
    defs = defs_for(spec, blip.address, registry)
    produce_synthetic(settings, spec, 400)
    (request,) = kafka_sensor_tick(defs, spec, instance, kafka, registry).run_requests
    yield defs, kafka, settings, request


@contextlib.contextmanager
def _halted_by_outage(spec, registry, instance, blip: Blip):
    """A stream whose first batch's run failed with the broker away, halted to resume by itself."""
    with _behind_a_blip(spec, registry, instance, blip) as (defs, kafka, settings, request):
        blip.cut()
        assert not _run(defs, spec, request, instance).success
        blip.restore()
        halted = kafka_sensor_tick(defs, spec, instance, kafka, registry)
        assert "resuming automatically" in halted.skip_message, halted
        yield defs, kafka, settings, request


@pytest.mark.timeout(300)
def test_a_resumed_run_that_registered_before_failing_makes_no_second_version(
    registry, instance, specs_dir, streamfit_home, blip, monkeypatch
):
    spec = synthetic_spec(batch=BATCH)
    with _halted_by_outage(spec, registry, instance, blip) as (defs, kafka, settings, request):
        (resume,) = kafka_sensor_tick(defs, spec, instance, kafka, registry).run_requests
        monkeypatch.setenv(FAULT_ENV, "after_register")  # its version is written, then the run fails
        assert not _run(defs, spec, resume, instance).success
        monkeypatch.delenv(FAULT_ENV)
        assert registry.halt(spec.name) is None  # the version cleared it: nothing to resume
        idle = kafka_sensor_tick(defs, spec, instance, kafka, registry)
        assert isinstance(idle, dg.SkipReason) and "HALTED" not in idle.skip_message, idle
        (version,) = registry.versions(spec.name)
        assert version.learned == {p: end for p, (_, end) in _ranges(request).items()}

        produce_synthetic(settings, spec, 400, start=400)
        (following,) = kafka_sensor_tick(defs, spec, instance, kafka, registry).run_requests
        assert all(_ranges(following)[p][0] == end for p, end in version.learned.items())
        assert _run(defs, spec, following, instance).success
        assert [v.meta["rows_learned_total"] for v in registry.versions(spec.name)] == [400, 800]
