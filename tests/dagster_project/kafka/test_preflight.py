"""The security preflight (kafka/preflight.py) against the session's plaintext broker: a no-op for
PLAINTEXT, and a fast, clear failure when TLS or SASL is configured for a listener that speaks
neither. The TLS setup files are checked before any connection is made.

Handshakes with a real TLS listener (wrong CA, missing client certificate, hostname mismatch, and
TLS against the plaintext side of that setup) are in tests/tls/test_tls.py and tests/tls/test_sasl.py.
"""

from __future__ import annotations

import ssl
import time

import pytest

from dagster_project.kafka.brokers.tansu import free_port
from dagster_project.kafka.preflight import check_security, ssl_context
from dagster_project.kafka.settings import (
    CAFILE_ENV,
    CERTFILE_ENV,
    KEYFILE_ENV,
    PROTOCOL_ENV,
    BrokerConfigError,
    BrokerSecurityError,
    KafkaSettings,
)

FAST_MS = 1500


def _ssl(bootstrap: str, **fields) -> KafkaSettings:
    return KafkaSettings(bootstrap=bootstrap, security_protocol="SSL", security_check_timeout_ms=FAST_MS, **fields)


def test_plaintext_is_a_no_op_without_any_connection() -> None:
    started = time.monotonic()
    check_security(KafkaSettings(bootstrap="does-not-resolve.invalid:9092"))
    check_security(KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}"))
    assert time.monotonic() - started < 0.5


def test_plaintext_against_the_broker_passes(kafka_bootstrap: str) -> None:
    check_security(KafkaSettings(bootstrap=kafka_bootstrap))


def test_tls_against_a_plaintext_listener_fails_fast_naming_the_protocol_setting(kafka_bootstrap: str) -> None:
    started = time.monotonic()
    with pytest.raises(BrokerSecurityError) as caught:
        check_security(_ssl(kafka_bootstrap))
    elapsed = time.monotonic() - started

    message = str(caught.value)
    assert kafka_bootstrap in message
    assert f"{PROTOCOL_ENV}=PLAINTEXT" in message, message
    assert "plaintext listener" in message or "not a TLS listener" in message, message
    assert elapsed < FAST_MS / 1000 + 3, f"took {elapsed:.1f}s"


def test_sasl_against_a_listener_without_sasl_fails_naming_the_settings(kafka_bootstrap: str) -> None:
    settings = KafkaSettings(
        bootstrap=kafka_bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="alice",
        sasl_password="pw",
        security_check_timeout_ms=FAST_MS,
    )
    started = time.monotonic()
    with pytest.raises(BrokerSecurityError) as caught:
        check_security(settings)
    message = str(caught.value)
    assert kafka_bootstrap in message and PROTOCOL_ENV in message, message
    assert time.monotonic() - started < FAST_MS / 1000 + 3


def test_unreachable_brokers_are_left_to_the_callers_own_handling(kafka_bootstrap: str) -> None:
    started = time.monotonic()
    check_security(_ssl(f"127.0.0.1:{free_port()}"))  # nothing listens: not a security problem
    check_security(_ssl("not-a-host-port"))
    assert time.monotonic() - started < 3


def test_the_first_reachable_bootstrap_broker_is_checked(kafka_bootstrap: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with pytest.raises(BrokerSecurityError) as caught:
        check_security(_ssl(f"{dead},{kafka_bootstrap}"))
    assert kafka_bootstrap in str(caught.value) and dead not in str(caught.value)


@pytest.mark.parametrize(
    "field, variable",
    [("ssl_cafile", CAFILE_ENV), ("ssl_certfile", CERTFILE_ENV)],
)
def test_a_missing_tls_file_is_named_before_connecting(tmp_path, field: str, variable: str) -> None:
    missing = tmp_path / "missing.pem"
    settings = _ssl(f"127.0.0.1:{free_port()}", **{field: str(missing)})
    with pytest.raises(BrokerConfigError, match=f"{variable}={missing}: no such file"):
        check_security(settings)


def test_a_missing_key_file_is_named(tmp_path) -> None:
    cert = tmp_path / "client.pem"
    cert.write_text("placeholder")
    missing = tmp_path / "client.key"
    with pytest.raises(BrokerConfigError, match=f"{KEYFILE_ENV}={missing}: no such file"):
        ssl_context(_ssl("b:9093", ssl_certfile=str(cert), ssl_keyfile=str(missing)))


def test_files_that_are_not_pem_say_what_they_must_be(tmp_path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    with pytest.raises(BrokerConfigError) as caught:
        ssl_context(_ssl("b:9093", ssl_cafile=str(ca)))
    message = str(caught.value)
    assert f"{CAFILE_ENV}={ca}" in message and "they must be PEM files" in message


def test_the_context_is_built_as_kafka_python_builds_it() -> None:
    checked = ssl_context(_ssl("b:9093"))  # no CA given: the system's default CAs
    assert checked.check_hostname is True and checked.verify_mode == ssl.CERT_REQUIRED
    assert checked.minimum_version == ssl.TLSVersion.TLSv1_2
    relaxed = ssl_context(_ssl("b:9093", ssl_check_hostname=False))
    assert relaxed.check_hostname is False and relaxed.verify_mode == ssl.CERT_REQUIRED, "the chain is still verified"
