"""TLS end to end: produce -> Kafka sensor -> training run -> registered version -> scorer, all over
mutual TLS (stunnel in front of the embedded broker, which advertises only the TLS address), and
clear, fast errors for the usual misconfigurations (wrong CA, no client certificate, wrong host name,
TLS against a plaintext listener).

Security settings reach Dagster's KafkaResource only through STREAMFIT_KAFKA_* variables (it takes
just `bootstrap`), so the tests set them in the environment, as a deployment would.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import replace

import dagster as dg
import pytest

from dagster_project.factory import build_stream_definitions
from dagster_project.kafka import clients, preflight
from dagster_project.kafka.io import BrokerUnavailable, committed_group_offsets, topic_partitions
from dagster_project.kafka.offsets import decode_ranges
from dagster_project.kafka.settings import (
    CAFILE_ENV,
    CERTFILE_ENV,
    CHECK_HOSTNAME_ENV,
    KEYFILE_ENV,
    PROTOCOL_ENV,
    BrokerSecurityError,
    KafkaSettings,
)
from dagster_project.resources import KafkaResource, RegistryResource
from tests.conftest import synthetic_spec
from tests.dagster_project.serving.support import Client, running_service, wait_for
from tests.helpers import produce_synthetic, read_topic
from tests.tls.conftest import TlsBroker
from tests.tls.pki import Pki


def _advertised_brokers(settings: KafkaSettings) -> set[tuple[str, int]]:
    """The broker addresses the cluster's metadata hands to clients."""
    admin = clients.admin(settings)
    try:
        return {(b["host"], b["port"]) for b in admin.describe_cluster()["brokers"]}
    finally:
        admin.close()


def test_sensor_training_and_scoring_run_over_mutual_tls(tls_broker: TlsBroker, tls_settings, registry, instance):
    spec = synthetic_spec(batch={"rows": 300, "max_rows": 1000, "max_wait_s": 3600, "sensor_interval_s": 5})
    settings = tls_settings
    assert settings.security_protocol == "SSL" and settings.ssl_certfile and settings.ssl_check_hostname
    host, port = tls_broker.bootstrap.split(":")
    assert _advertised_brokers(settings) == {(host, int(port))}, "clients must only ever learn the TLS address"
    sessions_before = tls_broker.stunnel.accepted_tls()

    # produce over TLS
    produced = produce_synthetic(settings, spec, 600)

    # the Kafka sensor plans the batch over TLS (resource built from the environment, like in production)
    kafka = KafkaResource(bootstrap=tls_broker.bootstrap)
    defs = dg.Definitions.merge(
        build_stream_definitions(spec),
        dg.Definitions(resources={"kafka": kafka, "registry": RegistryResource(root=str(registry.root))}),
    )
    sensor = defs.resolve_sensor_def(f"{spec.name}_kafka_sensor")
    context = dg.build_sensor_context(
        instance=instance, resources={"kafka": kafka, "registry": RegistryResource(root=str(registry.root))}
    )
    result = sensor(context)
    assert isinstance(result, dg.SensorResult), f"the sensor did not plan a run over TLS: {result}"
    (request,) = result.run_requests
    ranges = decode_ranges(request.tags["streamfit/ranges"])
    assert sum(end - start for start, end in ranges.values()) == produced

    # the training run: reads the range, writes DLQ/commits over TLS, registers a version
    job = defs.resolve_job_def(f"{spec.name}_training")
    run = job.execute_in_process(run_config=request.run_config, tags=request.tags, instance=instance)
    assert run.success
    (version,) = registry.versions(spec.name)
    assert version.meta["rows_learned_total"] == produced
    assert registry.champion(spec.name) == version.name
    assert committed_group_offsets(settings, spec.trainer_group, spec.events_topic) == version.learned

    # the scorer (consumer group + producer over TLS) scores every event with that version; its HTTP API
    # keeps its hardening (bearer token compared in constant time, row limit) in this deployment too
    row = {f"x{i}": 0.1 * i for i in range(5)}
    with running_service(spec, settings, registry, token="tls-test-token", max_rows=50) as service:
        wait_for(lambda: service.scorer.scored >= produced, 60, f"{produced} events scored over TLS")
        status, body = Client(service.url, token="tls-test-token").predict([row])
        assert status == 200 and body["model_version"] == version.name
        assert Client(service.url).predict([row])[0] == 401
        assert Client(service.url, token="tls-test-token").predict([row] * 51)[0] == 413
    predictions = read_topic(settings, spec.predictions_topic)
    assert len(predictions) == produced
    assert {p["model_version"] for p in predictions} == {version.name}

    assert tls_broker.stunnel.accepted_tls() > sessions_before  # the traffic really went through TLS


def test_the_tls_port_does_not_speak_plaintext_kafka(tls_broker: TlsBroker):
    """A plaintext ApiVersions request to the TLS port gets no Kafka answer: the connection is closed.

    (A PLAINTEXT kafka-python client pointed at a TLS port is not pre-checked: it retries for 30 s and
    raises "Unable to bootstrap"; kafka_io reports that as BrokerUnavailable.)
    """
    host, port = tls_broker.bootstrap.split(":")
    client_id = b"streamfit-test"
    request = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id  # ApiVersions v0
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        try:
            answer = sock.recv(4096)
        except ConnectionResetError:
            answer = b""
    assert answer == b"" or answer[:1] == b"\x15", f"expected a close or a TLS alert, got {answer[:40]!r}"


def test_wrong_ca_fails_fast_and_names_the_variable_to_set(tls_broker: TlsBroker, tls_settings, pki: Pki, monkeypatch):
    monkeypatch.setenv(CAFILE_ENV, str(pki.wrong_ca))
    settings = KafkaSettings.from_env()

    started = time.monotonic()
    with pytest.raises(BrokerSecurityError) as direct:
        clients.producer(settings)
    message = str(direct.value)
    assert CAFILE_ENV in message and "not signed by a CA this client trusts" in message
    assert str(pki.wrong_ca) in message

    # what the sensor and the training run see (kafka_io wraps it), with the fix still in the message
    with pytest.raises(BrokerUnavailable) as wrapped:
        topic_partitions(settings, "anything")
    assert CAFILE_ENV in str(wrapped.value)
    assert time.monotonic() - started < 10, "kafka-python alone retries for 30 s and says only 'Unable to bootstrap'"


def test_missing_client_certificate_names_the_certificate_variables(tls_broker: TlsBroker, tls_settings, monkeypatch):
    monkeypatch.delenv(CERTFILE_ENV)
    monkeypatch.delenv(KEYFILE_ENV)
    with pytest.raises(BrokerSecurityError) as caught:
        clients.admin(KafkaSettings.from_env())
    message = str(caught.value)
    # stunnel answers with a "certificate required" alert, or (a race) closes before the client reads it
    assert "sent no client certificate" in message or "(none set now)" in message, message
    assert CERTFILE_ENV in message and KEYFILE_ENV in message


def test_hostname_mismatch_is_explained_and_can_be_switched_off(tls_broker: TlsBroker, pki: Pki, clean_security_env):
    # other-host presents a valid certificate from our CA, but for kafka.example.com, not 127.0.0.1
    settings = KafkaSettings(bootstrap=tls_broker.other_host_bootstrap, security_protocol="SSL", ssl_cafile=str(pki.ca))
    with pytest.raises(BrokerSecurityError) as caught:
        preflight.check_security(settings)
    assert "does not name '127.0.0.1'" in str(caught.value) and CHECK_HOSTNAME_ENV in str(caught.value)

    clean_security_env.setenv(PROTOCOL_ENV, "SSL")
    clean_security_env.setenv(CAFILE_ENV, str(pki.ca))
    clean_security_env.setenv(CHECK_HOSTNAME_ENV, "false")
    relaxed = KafkaSettings.from_env(tls_broker.other_host_bootstrap)
    assert relaxed.ssl_check_hostname is False and relaxed.common()["ssl_check_hostname"] is False
    preflight.check_security(relaxed)  # the chain is still verified; only the name check is off


def test_tls_against_a_plaintext_listener_fails_in_seconds(tls_broker: TlsBroker, tls_settings):
    settings = replace(tls_settings, bootstrap=tls_broker.plaintext_bootstrap, security_check_timeout_ms=1500)
    started = time.monotonic()
    with pytest.raises(BrokerSecurityError) as caught:
        clients.range_reader(settings)
    assert time.monotonic() - started < 5
    assert "plaintext listener" in str(caught.value) and PROTOCOL_ENV in str(caught.value)
