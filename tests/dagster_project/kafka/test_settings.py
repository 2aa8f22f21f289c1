"""Kafka connection settings (kafka/settings.py): read from an explicit environment mapping,
validated with errors that name the variable to fix, and translated for both client libraries.

The same validation through the process environment, and the SASL keyword arguments fed to
kafka-python's own mechanisms, are in tests/tls/test_sasl.py.
"""

from __future__ import annotations

import pytest

from dagster_project.kafka.settings import (
    BOOTSTRAP_ENV,
    CAFILE_ENV,
    CERTFILE_ENV,
    CHECK_HOSTNAME_ENV,
    CLIENT_ENV,
    CONFLUENT,
    KAFKA_PYTHON,
    KEYFILE_ENV,
    MECHANISM_ENV,
    PASSWORD_ENV,
    PROTOCOL_ENV,
    USERNAME_ENV,
    BrokerConfigError,
    BrokerNotConfigured,
    KafkaSettings,
)

SASL_SSL = {
    BOOTSTRAP_ENV: "b1:9093,b2:9093",
    PROTOCOL_ENV: "SASL_SSL",
    CAFILE_ENV: "/etc/kafka/ca.pem",
    CERTFILE_ENV: "/etc/kafka/client.pem",
    KEYFILE_ENV: "/etc/kafka/client.key",
    MECHANISM_ENV: "SCRAM-SHA-256",
    USERNAME_ENV: "svc",
    PASSWORD_ENV: "hunter2-secret",
}


def test_from_env_reads_only_the_mapping_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BOOTSTRAP_ENV, "from-process:9092")
    monkeypatch.setenv(PROTOCOL_ENV, "SSL")

    settings = KafkaSettings.from_env(environ={BOOTSTRAP_ENV: "from-mapping:9092"})

    assert settings.bootstrap == "from-mapping:9092"
    assert settings.security_protocol == "PLAINTEXT", "the process's variables must not leak in"
    assert settings.client == "auto" and settings.ssl_check_hostname is True


def test_an_explicit_bootstrap_wins() -> None:
    assert KafkaSettings.from_env("given:1", {BOOTSTRAP_ENV: "env:2"}).bootstrap == "given:1"


def test_no_bootstrap_says_how_to_give_one() -> None:
    with pytest.raises(BrokerNotConfigured) as caught:
        KafkaSettings.from_env(environ={})
    assert f"set {BOOTSTRAP_ENV}=host:port" in str(caught.value) and "`streamfit broker`" in str(caught.value)
    with pytest.raises(BrokerNotConfigured):
        KafkaSettings.from_env(environ={BOOTSTRAP_ENV: ""})


def test_every_variable_is_read() -> None:
    settings = KafkaSettings.from_env(environ=SASL_SSL | {CHECK_HOSTNAME_ENV: "false", CLIENT_ENV: KAFKA_PYTHON})

    assert settings.bootstrap == "b1:9093,b2:9093"
    assert (settings.security_protocol, settings.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-256")
    assert (settings.ssl_cafile, settings.ssl_certfile, settings.ssl_keyfile) == (
        "/etc/kafka/ca.pem",
        "/etc/kafka/client.pem",
        "/etc/kafka/client.key",
    )
    assert (settings.sasl_username, settings.sasl_password) == ("svc", "hunter2-secret")
    assert settings.ssl_check_hostname is False and settings.client == KAFKA_PYTHON
    assert "hunter2-secret" not in repr(settings)


@pytest.mark.parametrize(
    "value, checked",
    [("false", False), ("FALSE", False), (" 0 ", False), ("no", False), ("off", False)]
    + [("true", True), ("1", True), ("yes", True), ("", True)],
)
def test_hostname_check_is_on_unless_switched_off(value: str, checked: bool) -> None:
    environ = {BOOTSTRAP_ENV: "b:9093", PROTOCOL_ENV: "SSL", CHECK_HOSTNAME_ENV: value}
    assert KafkaSettings.from_env(environ=environ).ssl_check_hostname is checked


def test_empty_variables_count_as_unset() -> None:
    environ = {BOOTSTRAP_ENV: "b:9092"} | dict.fromkeys(
        (PROTOCOL_ENV, CAFILE_ENV, CERTFILE_ENV, KEYFILE_ENV, MECHANISM_ENV, USERNAME_ENV, PASSWORD_ENV, CLIENT_ENV), ""
    )
    settings = KafkaSettings.from_env(environ=environ)
    assert settings == KafkaSettings(bootstrap="b:9092")


def test_names_are_normalised() -> None:
    settings = KafkaSettings.from_env(
        environ={
            BOOTSTRAP_ENV: "b:9093",
            PROTOCOL_ENV: " sasl_plaintext ",
            MECHANISM_ENV: "plain",
            USERNAME_ENV: "u",
            PASSWORD_ENV: "p",
            CLIENT_ENV: " Confluent-Kafka ",
        }
    )
    assert (settings.security_protocol, settings.sasl_mechanism, settings.client) == (
        "SASL_PLAINTEXT",
        "PLAIN",
        CONFLUENT,
    )


@pytest.mark.parametrize(
    "environ, message",
    [
        ({PROTOCOL_ENV: "TLS"}, f"unknown Kafka security protocol 'TLS': set {PROTOCOL_ENV} to one of"),
        ({PROTOCOL_ENV: "SASL_SSL"}, f"{PROTOCOL_ENV}=SASL_SSL needs a SASL mechanism: set {MECHANISM_ENV}"),
        ({PROTOCOL_ENV: "SASL_PLAINTEXT", MECHANISM_ENV: "GSSAPI"}, "(got 'GSSAPI')"),
        (
            {PROTOCOL_ENV: "SASL_PLAINTEXT", MECHANISM_ENV: "PLAIN"},
            f"SASL PLAIN needs credentials: set {USERNAME_ENV} and {PASSWORD_ENV}",
        ),
        ({PROTOCOL_ENV: "SASL_PLAINTEXT", MECHANISM_ENV: "PLAIN", USERNAME_ENV: "u"}, PASSWORD_ENV),
        ({PROTOCOL_ENV: "SASL_PLAINTEXT", MECHANISM_ENV: "PLAIN", PASSWORD_ENV: "p"}, USERNAME_ENV),
        ({PROTOCOL_ENV: "SSL", KEYFILE_ENV: "/k.pem"}, f"{KEYFILE_ENV} is set but {CERTFILE_ENV} is not"),
        ({CLIENT_ENV: "librdkafka"}, f"unknown Kafka client 'librdkafka': set {CLIENT_ENV} to one of"),
    ],
)
def test_inconsistent_settings_name_the_variable_to_fix(environ: dict, message: str) -> None:
    with pytest.raises(BrokerConfigError) as caught:
        KafkaSettings.from_env(environ={BOOTSTRAP_ENV: "b:9093"} | environ)
    assert message in str(caught.value)


def test_tls_files_are_ignored_without_tls() -> None:
    settings = KafkaSettings.from_env(environ={BOOTSTRAP_ENV: "b:9092", KEYFILE_ENV: "/k.pem"})
    assert settings.security_protocol == "PLAINTEXT"
    assert not any(key.startswith("ssl") for key in settings.common())


def test_plaintext_client_arguments() -> None:
    settings = KafkaSettings(bootstrap="b1:9092,b2:9092", request_timeout_ms=7000)
    assert settings.common() == {
        "bootstrap_servers": ["b1:9092", "b2:9092"],
        "security_protocol": "PLAINTEXT",
        "request_timeout_ms": 7000,
        "client_id": "streamfit",
    }
    assert settings.librdkafka_config() == {
        "bootstrap.servers": "b1:9092,b2:9092",
        "security.protocol": "plaintext",
        "socket.timeout.ms": 7000,
        "client.id": "streamfit",
    }


def test_sasl_ssl_in_both_clients_names() -> None:
    settings = KafkaSettings.from_env(environ=SASL_SSL)

    common = settings.common()
    assert common["security_protocol"] == "SASL_SSL" and common["ssl_check_hostname"] is True
    assert (common["ssl_cafile"], common["ssl_certfile"], common["ssl_keyfile"]) == (
        "/etc/kafka/ca.pem",
        "/etc/kafka/client.pem",
        "/etc/kafka/client.key",
    )
    assert (common["sasl_mechanism"], common["sasl_plain_username"], common["sasl_plain_password"]) == (
        "SCRAM-SHA-256",
        "svc",
        "hunter2-secret",
    )
    assert settings.librdkafka_config() == {
        "bootstrap.servers": "b1:9093,b2:9093",
        "security.protocol": "sasl_ssl",
        "socket.timeout.ms": 10_000,
        "client.id": "streamfit",
        "ssl.ca.location": "/etc/kafka/ca.pem",
        "ssl.certificate.location": "/etc/kafka/client.pem",
        "ssl.key.location": "/etc/kafka/client.key",
        "ssl.endpoint.identification.algorithm": "https",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "svc",
        "sasl.password": "hunter2-secret",
    }


def test_librdkafka_leaves_unset_tls_files_to_its_defaults() -> None:
    settings = KafkaSettings(bootstrap="b:9093", security_protocol="ssl", ssl_check_hostname=False)
    config = settings.librdkafka_config()
    assert config["security.protocol"] == "ssl"
    assert config["ssl.endpoint.identification.algorithm"] == "none"
    assert not {"ssl.ca.location", "ssl.certificate.location", "ssl.key.location"} & set(config)
    assert not any(key.startswith("sasl") for key in config)


@pytest.mark.parametrize(
    "environ",
    [
        {BOOTSTRAP_ENV: "127.0.0.1:1"},
        {BOOTSTRAP_ENV: "127.0.0.1:1", PROTOCOL_ENV: "SASL_PLAINTEXT", MECHANISM_ENV: "PLAIN"}
        | {USERNAME_ENV: "u", PASSWORD_ENV: "p"},
    ],
    ids=["plaintext", "sasl_plaintext"],
)
def test_librdkafka_accepts_the_translated_config(environ: dict) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    config = KafkaSettings.from_env(environ=environ).librdkafka_config()
    producer = confluent_kafka.Producer(config)  # raises KafkaException for an unknown or invalid property
    assert producer.flush(0) == 0


def test_with_bootstrap_keeps_everything_else() -> None:
    settings = KafkaSettings.from_env(environ=SASL_SSL)
    moved = settings.with_bootstrap("elsewhere:9093")
    assert moved.bootstrap == "elsewhere:9093" and settings.bootstrap == "b1:9093,b2:9093"
    assert moved.sasl_password == settings.sasl_password and moved.ssl_cafile == settings.ssl_cafile
