"""Security for real, on Apache Kafka 4.x: SASL_SSL with SCRAM-SHA-512 users made through the admin API,
ACLs enforced by the StandardAuthorizer, and native TLS with client certificates (no stunnel).

- the whole loop (produce -> Kafka sensor -> training run -> version -> scorer -> predictions -> label join)
  with one principal per component, each with only the ACLs `admin_security.component_grants` lists, each
  component configured by its own STREAMFIT_KAFKA_* environment;
- a trainer without READ on the events topic: the sensor skips and the training run fails, both naming the
  principal, the topic and the fix; no version, no committed offset;
- a wrong password or unknown user: refused by the preflight's SCRAM login in well under a second, naming
  STREAMFIT_KAFKA_SASL_USERNAME / _PASSWORD (kafka-python alone retries for 30 s: "Unable to bootstrap");
- native TLS: produce and read a range with a client certificate; no CA or no certificate: clear errors.

The admin (topic creation, users, ACLs) uses the PLAINTEXT listener as User:ANONYMOUS, a super user.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from dataclasses import replace
from pathlib import Path

import dagster as dg
import pytest

from dagster_project import names
from dagster_project.kafka import admin_security, clients
from dagster_project.kafka.brokers.apache import ApacheKafkaCluster, ClusterSecurity
from dagster_project.kafka.io import (
    BrokerUnavailable,
    NotAuthorized,
    committed_group_offsets,
    ensure_topics,
    probe_partitions,
    read_range,
    topic_partitions,
)
from dagster_project.kafka.offsets import decode_ranges
from dagster_project.kafka.settings import (
    CAFILE_ENV,
    CERTFILE_ENV,
    CONFLUENT,
    KAFKA_PYTHON,
    KEYFILE_ENV,
    PASSWORD_ENV,
    USERNAME_ENV,
    BrokerSecurityError,
)
from dagster_project.labels.producer import produce_labels
from dagster_project.resources import KafkaResource
from tests.conftest import synthetic_spec
from tests.dagster_project.serving.support import running_service, wait_for
from tests.helpers import StreamfitProcess, defs_for, kafka_sensor_tick, produce_synthetic, read_topic, run_batch
from tests.kafka_security.conftest import SecureKafka, component_env, settings_of, write_spec_dir
from tests.tls.pki import make_pki

pytestmark = pytest.mark.apache_kafka  # runs in the Apache Kafka session (tests/conftest.py)

COMPONENTS = {"producer": "producer", "trainer": "trainer", "scorer": "scorer", "label-joiner": "joiner"}


def _all_topics(spec) -> list[str]:
    return [spec.events_topic, spec.labels_topic, spec.dlq_topic, spec.predictions_topic]


def _use_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """This process is now the component `env` configures (Dagster's KafkaResource reads the environment)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def _drop_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name in env:
        monkeypatch.delenv(name, raising=False)


def _advertised(settings) -> set[tuple[str, int]]:
    admin = clients.admin(settings)
    try:
        return {(b["host"], b["port"]) for b in admin.describe_cluster()["brokers"]}
    finally:
        admin.close()


def _failure_text(result: dg.ExecuteInProcessResult) -> str:
    texts = []
    for event in result.all_events:
        if event.is_step_failure or event.is_run_failure:
            error = getattr(event.event_specific_data, "error", None)
            texts.append(error.to_string() if error is not None else event.message or "")
    return "\n".join(texts)


# --- a. the whole loop over SASL_SSL, one least-privilege principal per component ----------------------


@pytest.mark.timeout(300)
def test_whole_loop_over_sasl_ssl_with_one_least_privilege_principal_per_component(
    secure_kafka: SecureKafka, clean_security_env, registry, instance, tmp_path: Path
):
    kafka, admin = secure_kafka, secure_kafka.admin
    spec = synthetic_spec(
        batch={"rows": 300, "max_rows": 1000, "max_wait_s": 3600, "sensor_interval_s": 5},
        labels={"join_window_s": 600, "flush_interval_s": 0.3},
    )
    # The admin creates the topics up front: no component may create anything on the cluster.
    ensure_topics(admin, _all_topics(spec), spec.partitions)
    envs: dict[str, dict[str, str]] = {}
    for component, user in COMPONENTS.items():
        envs[component] = kafka.user(user)
        admin_security.grant_component(admin, f"User:{user}", spec, component)
    settings = {component: settings_of(env) for component, env in envs.items()}
    host, port = kafka.sasl_bootstrap.split(":")
    for component, s in settings.items():
        assert (s.security_protocol, s.bootstrap, s.principal) == (
            "SASL_SSL",
            kafka.sasl_bootstrap,
            f"User:{COMPONENTS[component]}",
        )
    assert _advertised(settings["trainer"]) == {(host, int(port))}, "clients must only learn the SASL_SSL address"

    # producer: events (and later labels), nothing else
    produced = produce_synthetic(settings["producer"], spec, 600)
    with pytest.raises(NotAuthorized, match=f"User:producer is not authorized to READ topic '{spec.events_topic}'"):
        list(read_range(settings["producer"], spec.events_topic, {0: (0, 1)}))

    # trainer: the Kafka sensor and the training run, in a process whose environment is the trainer's
    _use_env(clean_security_env, envs["trainer"])
    defs = defs_for(spec, kafka.sasl_bootstrap, registry)
    resource = KafkaResource(bootstrap=kafka.sasl_bootstrap)
    result = kafka_sensor_tick(defs, spec, instance, resource, registry)
    assert isinstance(result, dg.SensorResult), f"the sensor did not plan a run over SASL_SSL: {result}"
    (request,) = result.run_requests
    ranges = decode_ranges(request.tags[names.RANGES_TAG])
    assert sum(end - start for start, end in ranges.values()) == produced
    run = defs.resolve_job_def(f"{spec.name}_training").execute_in_process(
        run_config=request.run_config, tags=request.tags, instance=instance
    )
    assert run.success
    (version,) = registry.versions(spec.name)
    assert version.meta["rows_learned_total"] == produced
    assert registry.champion(spec.name) == version.name
    assert committed_group_offsets(admin, spec.trainer_group, spec.events_topic) == version.learned
    with pytest.raises(NotAuthorized, match=f"User:trainer is not authorized to DESCRIBE topic '{spec.labels_topic}'"):
        probe_partitions(resource.settings(), spec.labels_topic, {})
    _drop_env(clean_security_env, envs["trainer"])

    # scorer: every event scored with that version, predictions written as User:scorer
    with running_service(spec, settings["scorer"], registry) as service:
        wait_for(lambda: service.scorer.scored >= produced, 90, f"{produced} events scored over SASL_SSL")
    predictions = read_topic(settings["label-joiner"], spec.predictions_topic)  # the joiner may read them
    assert len(predictions) == produced
    assert {p["model_version"] for p in predictions} == {version.name}

    # labels (producer) joined with the predictions by `streamfit labels join` running as User:joiner
    assert produce_labels(settings["producer"], spec, "synthetic", limit=produced) == produced
    streams = write_spec_dir(tmp_path / "streams", spec)
    joiner_env = component_env(envs["label-joiner"]) | {
        "STREAMFIT_STREAMS": str(streams),
        "STREAMFIT_HOME": os.environ["STREAMFIT_HOME"],
    }
    joiner = StreamfitProcess(["labels", "join", spec.name], env=joiner_env)
    try:
        line = joiner.wait_for(f"joined {produced}, pending 0 predictions / 0 labels", timeout_s=90)
    finally:
        if joiner.proc.poll() is None:
            joiner.proc.send_signal(signal.SIGTERM)
            try:
                joiner.proc.wait(timeout=20)
            except Exception:
                joiner.kill()
    assert f"{version.name} accuracy" in line and f"({produced})" in line


# --- b. a principal without READ on the events topic --------------------------------------------------


@pytest.mark.timeout(180)
def test_trainer_without_read_on_events_fails_naming_principal_topic_and_fix_and_nothing_advances(
    secure_kafka: SecureKafka, clean_security_env, registry, instance
):
    kafka, admin = secure_kafka, secure_kafka.admin
    spec = synthetic_spec()
    ensure_topics(admin, _all_topics(spec), spec.partitions)
    produced = produce_synthetic(admin, spec, 300)  # setup by the admin
    user = "trainer-noread"
    env = kafka.user(user)
    # everything the trainer needs except READ on the events topic
    admin_security.grant(admin, f"User:{user}", topic=spec.events_topic, operations=["DESCRIBE"])
    admin_security.grant(admin, f"User:{user}", topic=spec.dlq_topic, operations=["WRITE"])
    admin_security.grant(admin, f"User:{user}", group=spec.trainer_group, operations=["READ"])
    expected = (
        f"principal User:{user} is not authorized to READ topic '{spec.events_topic}'",
        "kafka-acls.sh",
        USERNAME_ENV,
    )

    _use_env(clean_security_env, env)
    defs = defs_for(spec, kafka.sasl_bootstrap, registry)
    started = time.monotonic()
    skip = kafka_sensor_tick(defs, spec, instance, KafkaResource(bootstrap=kafka.sasl_bootstrap), registry)
    assert isinstance(skip, dg.SkipReason), skip
    assert all(part in skip.skip_message for part in expected), skip.skip_message
    assert "nothing planned, nothing advanced" in skip.skip_message

    # the batch planned by someone who can read it (e.g. an operator re-executing a run) still cannot train
    ranges = {s.partition: (s.log_start, s.high_water) for s in probe_partitions(admin, spec.events_topic, {})}
    assert sum(end - start for start, end in ranges.values()) == produced
    run = run_batch(defs, spec, ranges, instance, raise_on_error=False)
    assert not run.success
    failure = _failure_text(run)
    assert all(part in failure for part in expected), failure
    assert time.monotonic() - started < 60, "an authorization error must not wait for a timeout"

    assert registry.versions(spec.name) == [] and registry.head(spec.name) is None
    assert committed_group_offsets(admin, spec.trainer_group, spec.events_topic) == {}

    # both range readers say the same; a principal with no ACL at all is told about DESCRIBE
    settings = settings_of(env)
    for client in (CONFLUENT, KAFKA_PYTHON):
        with pytest.raises(NotAuthorized) as caught:
            list(read_range(replace(settings, client=client), spec.events_topic, {0: (0, 1)}))
        assert caught.value.principal == f"User:{user}" and caught.value.operation == "READ"
    nobody = settings_of(kafka.user("nobody"))
    with pytest.raises(NotAuthorized, match=rf"User:nobody is not authorized to DESCRIBE topic '{spec.events_topic}'"):
        topic_partitions(nobody, spec.events_topic)


# --- c. a wrong password ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_wrong_password_or_unknown_user_fails_in_well_under_a_second_naming_the_variables(
    secure_kafka: SecureKafka, clean_security_env
):
    kafka = secure_kafka
    env = kafka.user("alice")
    clients.admin(settings_of(env)).close()  # the right password logs in
    wrong = settings_of(env | {PASSWORD_ENV: "not-her-password"})

    timings = {}
    started = time.monotonic()
    with pytest.raises(BrokerSecurityError) as caught:
        clients.producer(wrong)
    timings["wrong password, producer"] = time.monotonic() - started
    message = str(caught.value)
    assert "rejected the SASL SCRAM-SHA-512 login of 'alice'" in message, message
    assert USERNAME_ENV in message and PASSWORD_ENV in message
    assert "not-her-password" not in message

    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=PASSWORD_ENV):  # what the sensor and the training run report
        topic_partitions(wrong, "anything")
    timings["wrong password, sensor probe"] = time.monotonic() - started

    started = time.monotonic()
    with pytest.raises(BrokerSecurityError, match=f"login of 'mallory'.*{USERNAME_ENV}"):
        clients.range_reader(settings_of(kafka.sasl_env("mallory", "whatever")))
    timings["unknown user, range reader"] = time.monotonic() - started

    print("\nSCRAM failure times: " + ", ".join(f"{what} {seconds * 1000:.0f} ms" for what, seconds in timings.items()))
    assert max(timings.values()) < 5, timings


# --- d. native TLS on the SSL listener ----------------------------------------------------------------


@pytest.mark.timeout(120)
def test_native_tls_client_certificate_produces_and_reads_a_range(secure_kafka: SecureKafka, clean_security_env):
    kafka, admin = secure_kafka, secure_kafka.admin
    settings = settings_of(kafka.ssl_env())
    assert settings.principal == "User:CN=streamfit-client"
    topic = f"tls{uuid.uuid4().hex[:8]}.events"
    ensure_topics(admin, [topic], 1)
    admin_security.grant(admin, settings.principal, topic=topic, operations=["WRITE", "READ"])

    producer = clients.producer(settings, acks="all")
    try:
        futures = [producer.send(topic, key=str(i).encode(), value=f"v{i}".encode()) for i in range(50)]
        producer.flush(timeout=30)
        assert [f.get(timeout=10).offset for f in futures] == list(range(50))
    finally:
        producer.close(timeout=10)
    for client in (CONFLUENT, KAFKA_PYTHON):
        records = list(read_range(replace(settings, client=client), topic, {0: (10, 40)}))
        assert [r.offset for r in records] == list(range(10, 40)), client
        assert [r.value for r in records] == [f"v{i}".encode() for i in range(10, 40)], client

    no_ca = settings_of({k: v for k, v in kafka.ssl_env().items() if k != CAFILE_ENV})
    started = time.monotonic()
    with pytest.raises(BrokerSecurityError) as caught:
        clients.producer(no_ca)
    assert time.monotonic() - started < 5
    assert "not signed by a CA this client trusts" in str(caught.value) and CAFILE_ENV in str(caught.value)

    with pytest.raises(BrokerSecurityError) as caught:  # the SSL listener requires a client certificate
        clients.range_reader(settings_of(kafka.ssl_env(with_certificate=False)))
    assert CERTFILE_ENV in str(caught.value) and KEYFILE_ENV in str(caught.value)


# --- the launcher's configuration (no JVM) ------------------------------------------------------------


def test_listeners_and_security_keys_appear_only_with_cluster_security(tmp_path: Path):
    plain = ApacheKafkaCluster(1, data_dir=tmp_path / "plain")
    plain._prepare()
    config = plain._config(plain._nodes[1])
    assert config["listeners"].count("://") == 2 and config["listener.security.protocol.map"].count(":") == 2
    assert not any(key.startswith(("ssl.", "sasl.", "listener.name.", "authorizer.", "super.")) for key in config)
    with pytest.raises(KeyError, match="no SSL listener"):
        plain.listener_bootstrap("SSL")

    pki = make_pki(tmp_path / "pki")
    secured = ApacheKafkaCluster(
        1, data_dir=tmp_path / "secured", security=ClusterSecurity(pki.server_cert, pki.server_key, pki.ca)
    )
    secured._prepare()
    node = secured._nodes[1]
    config = secured._config(node)
    for name in ("SSL", "SASL_SSL"):
        assert f"{name}://127.0.0.1:{node.extra_ports[name]}" in config["advertised.listeners"]
        assert secured.listener_bootstrap(name) == f"127.0.0.1:{node.extra_ports[name]}"
    assert config["inter.broker.listener.name"] == "PLAINTEXT" and config["controller.listener.names"] == "CONTROLLER"
    assert config["ssl.keystore.type"] == config["ssl.truststore.type"] == "PEM"
    assert config["listener.name.ssl.ssl.client.auth"] == "required"
    assert config["listener.name.sasl_ssl.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert config["super.users"] == "User:ANONYMOUS"
    written = node.config_path.read_text()
    assert "\\n" in written and "-----BEGIN PRIVATE KEY-----\\n" in written  # one escaped line per PEM value
