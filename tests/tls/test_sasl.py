"""SASL, as far as it can be tested here.

The embedded broker (Tansu 0.6.0) cannot authenticate anyone: without `--authentication` it answers
every SaslHandshake with UnsupportedSaslMechanism (error 33, no mechanism offered), and with it every
request before authentication, AlterUserScramCredentials included, fails with NotAuthenticated, so no
SCRAM user can ever be created (its storage is in memory). A successful SASL PLAIN/SCRAM login is
therefore not tested here; what is tested:

- STREAMFIT_KAFKA_SASL_* variables map to the kafka-python keyword arguments that kafka-python's own
  PLAIN and SCRAM mechanisms read (built from those kwargs here, producing the first auth message);
- inconsistent settings fail at once with the variable to set (kafka-python's SCRAM class builds
  its error for a missing username but never raises it);
- a SASL_SSL client against the TLS endpoint of a broker without SASL fails in well under a second
  with an error naming STREAMFIT_KAFKA_SASL_MECHANISM / STREAMFIT_KAFKA_SECURITY_PROTOCOL (kafka-python
  alone retries for 30 s and ends with "Unable to bootstrap").
"""

from __future__ import annotations

import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.net.sasl import get_sasl_mechanism

from dagster_project.kafka import clients
from dagster_project.kafka.io import BrokerUnavailable, topic_partitions
from dagster_project.kafka.settings import (
    CAFILE_ENV,
    CERTFILE_ENV,
    KEYFILE_ENV,
    MECHANISM_ENV,
    PASSWORD_ENV,
    PROTOCOL_ENV,
    USERNAME_ENV,
    BrokerConfigError,
    BrokerSecurityError,
    KafkaSettings,
)
from tests.tls.conftest import TlsBroker
from tests.tls.pki import Pki


def _sasl_env(env: pytest.MonkeyPatch, protocol: str, mechanism: str, pki: Pki | None = None) -> None:
    env.setenv(PROTOCOL_ENV, protocol)
    env.setenv(MECHANISM_ENV, mechanism)
    env.setenv(USERNAME_ENV, "alice")
    env.setenv(PASSWORD_ENV, "s3cret-pw")
    if pki:
        env.setenv(CAFILE_ENV, str(pki.ca))
        env.setenv(CERTFILE_ENV, str(pki.client_cert))
        env.setenv(KEYFILE_ENV, str(pki.client_key))


def test_sasl_ssl_scram_variables_map_to_kafka_python_arguments(clean_security_env, pki: Pki):
    _sasl_env(clean_security_env, "sasl_ssl", "scram-sha-512", pki)  # case is normalized
    settings = KafkaSettings.from_env("broker-1:9093,broker-2:9093")
    kwargs = settings.common()

    assert kwargs["bootstrap_servers"] == ["broker-1:9093", "broker-2:9093"]
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("alice", "s3cret-pw")
    assert (kwargs["ssl_cafile"], kwargs["ssl_certfile"], kwargs["ssl_keyfile"]) == (
        str(pki.ca),
        str(pki.client_cert),
        str(pki.client_key),
    )
    assert kwargs["ssl_check_hostname"] is True
    assert "s3cret-pw" not in repr(settings)

    # every key is one each kafka-python client accepts, and its SCRAM mechanism reads them
    for client in (KafkaProducer, KafkaConsumer, KafkaAdminClient):
        assert set(kwargs) <= set(client.DEFAULT_CONFIG), (client.__name__, set(kwargs) - set(client.DEFAULT_CONFIG))
    scram = get_sasl_mechanism(kwargs["sasl_mechanism"])(**kwargs)
    assert scram.username == "alice" and scram.mechanism == "SCRAM-SHA-512"
    assert scram.auth_bytes().startswith(b"n,,n=alice,r=")


def test_sasl_plaintext_plain_maps_credentials_and_no_tls(clean_security_env):
    _sasl_env(clean_security_env, "SASL_PLAINTEXT", "PLAIN")
    kwargs = KafkaSettings.from_env("127.0.0.1:9092").common()
    assert kwargs["security_protocol"] == "SASL_PLAINTEXT" and kwargs["sasl_mechanism"] == "PLAIN"
    assert not any(key.startswith("ssl_") for key in kwargs)
    plain = get_sasl_mechanism("PLAIN")(**kwargs)
    assert plain.auth_bytes() == b"alice\0alice\0s3cret-pw"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({PROTOCOL_ENV: "TLS"}, [PROTOCOL_ENV]),
        ({PROTOCOL_ENV: "SASL_SSL"}, [MECHANISM_ENV]),
        ({PROTOCOL_ENV: "SASL_SSL", MECHANISM_ENV: "GSSAPI"}, [MECHANISM_ENV]),
        ({PROTOCOL_ENV: "SASL_SSL", MECHANISM_ENV: "SCRAM-SHA-256", USERNAME_ENV: "alice"}, [PASSWORD_ENV]),
        ({PROTOCOL_ENV: "SSL", KEYFILE_ENV: "/some/client.key"}, [CERTFILE_ENV]),
    ],
)
def test_inconsistent_settings_fail_at_once_naming_the_variable(clean_security_env, env, names):
    for name, value in env.items():
        clean_security_env.setenv(name, value)
    with pytest.raises(BrokerConfigError) as caught:
        KafkaSettings.from_env("127.0.0.1:9093")
    for name in names:
        assert name in str(caught.value)


def test_missing_tls_file_is_named(clean_security_env, tmp_path):
    clean_security_env.setenv(PROTOCOL_ENV, "SSL")
    clean_security_env.setenv(CAFILE_ENV, str(tmp_path / "nope.pem"))
    with pytest.raises(BrokerConfigError, match=f"{CAFILE_ENV}=.*nope.pem: no such file"):
        clients.producer(KafkaSettings.from_env("127.0.0.1:9093"))


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_sasl_ssl_against_a_listener_without_sasl_fails_fast_and_clearly(
    tls_broker: TlsBroker, pki: Pki, clean_security_env, mechanism: str
):
    _sasl_env(clean_security_env, "SASL_SSL", mechanism, pki)
    settings = KafkaSettings.from_env(tls_broker.bootstrap)

    started = time.monotonic()
    with pytest.raises(BrokerSecurityError) as caught:
        clients.producer(settings)
    message = str(caught.value)
    assert f"refused SASL mechanism {mechanism} (UnsupportedSaslMechanismError, error 33" in message, message
    assert MECHANISM_ENV in message and f"{PROTOCOL_ENV}=SSL" in message

    with pytest.raises(BrokerUnavailable, match=MECHANISM_ENV):  # what the sensor would report
        topic_partitions(settings, "anything")
    assert time.monotonic() - started < 5
