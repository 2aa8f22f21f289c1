"""TLS fixtures: a generated PKI, and the embedded broker behind stunnel, advertising only TLS."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dagster_project.kafka.brokers.tansu import EmbeddedBroker, free_port
from dagster_project.kafka.settings import (
    BOOTSTRAP_ENV,
    CAFILE_ENV,
    CERTFILE_ENV,
    CHECK_HOSTNAME_ENV,
    KEYFILE_ENV,
    MECHANISM_ENV,
    PASSWORD_ENV,
    PROTOCOL_ENV,
    USERNAME_ENV,
    KafkaSettings,
)
from tests.tls.pki import Pki, make_pki
from tests.tls.terminator import Stunnel, TlsService, system_binary

SECURITY_ENV = (
    PROTOCOL_ENV,
    CAFILE_ENV,
    CERTFILE_ENV,
    KEYFILE_ENV,
    CHECK_HOSTNAME_ENV,
    MECHANISM_ENV,
    USERNAME_ENV,
    PASSWORD_ENV,
)


@dataclass(frozen=True)
class TlsBroker:
    bootstrap: str  # stunnel, mutual TLS: the only address clients are given or told about
    plaintext_bootstrap: str  # Tansu itself (only stunnel connects here)
    other_host_bootstrap: str  # stunnel with a certificate for kafka.example.com: a hostname mismatch
    stunnel: Stunnel
    log_dir: Path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def tls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    stunnel_binary = system_binary(("stunnel4", "stunnel"), "stunnel4")
    directory = tmp_path_factory.mktemp("tls_broker")
    plain, tls, other = free_port(), free_port(), free_port()
    services = [
        TlsService("kafka", tls, plain, pki.server_cert, pki.server_key, ca=pki.ca),
        TlsService("other-host", other, plain, pki.other_host_cert, pki.other_host_key),
    ]
    broker = EmbeddedBroker(port=plain, advertised=f"127.0.0.1:{tls}", log_path=directory / "tansu.log")
    with broker, Stunnel(stunnel_binary, services, directory) as stunnel:
        yield TlsBroker(f"127.0.0.1:{tls}", broker.bootstrap, f"127.0.0.1:{other}", stunnel, directory)


@pytest.fixture
def clean_security_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No STREAMFIT_KAFKA_* security variable from the caller's shell leaks into a test."""
    for name in SECURITY_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def tls_settings(tls_broker: TlsBroker, pki: Pki, clean_security_env: pytest.MonkeyPatch) -> KafkaSettings:
    """The environment a TLS deployment sets (mutual TLS, hostname checked), and the settings it gives."""
    env = clean_security_env
    env.setenv(BOOTSTRAP_ENV, tls_broker.bootstrap)
    env.setenv(PROTOCOL_ENV, "SSL")
    env.setenv(CAFILE_ENV, str(pki.ca))
    env.setenv(CERTFILE_ENV, str(pki.client_cert))
    env.setenv(KEYFILE_ENV, str(pki.client_key))
    env.setenv(CHECK_HOSTNAME_ENV, "true")
    return KafkaSettings.from_env()
