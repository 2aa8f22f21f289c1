"""One secured Apache Kafka 4.x node for the module: PLAINTEXT (the admin, a super user), native TLS and
SASL_SSL (SCRAM-SHA-512) listeners from the test PKI, ACLs enforced by the StandardAuthorizer.

Skipped with STREAMFIT_SKIP_APACHE_KAFKA=1 (no Java/Maven, or no network for the first jar download).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dagster_project.kafka import admin_security
from dagster_project.kafka.brokers.apache import ApacheKafkaCluster, ClusterSecurity, ensure_kafka_jars
from dagster_project.kafka.settings import (
    BOOTSTRAP_ENV,
    CAFILE_ENV,
    CERTFILE_ENV,
    KEYFILE_ENV,
    MECHANISM_ENV,
    PASSWORD_ENV,
    PROTOCOL_ENV,
    USERNAME_ENV,
    KafkaSettings,
)
from tests.tls.conftest import SECURITY_ENV
from tests.tls.pki import Pki, make_pki

SKIP_ENV = "STREAMFIT_SKIP_APACHE_KAFKA"
MECHANISM = "SCRAM-SHA-512"


@dataclass
class SecureKafka:
    """The running node, its listeners, and a way to make SCRAM users and their client environments."""

    cluster: ApacheKafkaCluster
    pki: Pki
    admin: KafkaSettings  # PLAINTEXT as User:ANONYMOUS, a super user
    ssl_bootstrap: str
    sasl_bootstrap: str
    passwords: dict[str, str] = field(default_factory=dict)

    def user(self, name: str) -> dict[str, str]:
        """Create the SCRAM user `name` (once) through the admin API; its STREAMFIT_KAFKA_* environment."""
        if name not in self.passwords:
            self.passwords[name] = secrets.token_urlsafe(16)
            admin_security.create_scram_user(self.admin, name, self.passwords[name], MECHANISM)
        return self.sasl_env(name, self.passwords[name])

    def sasl_env(self, name: str, password: str) -> dict[str, str]:
        """What a component deployed as `name` sets: SASL_SSL, the CA, SCRAM-SHA-512 and its credentials."""
        return {
            BOOTSTRAP_ENV: self.sasl_bootstrap,
            PROTOCOL_ENV: "SASL_SSL",
            CAFILE_ENV: str(self.pki.ca),
            MECHANISM_ENV: MECHANISM,
            USERNAME_ENV: name,
            PASSWORD_ENV: password,
        }

    def ssl_env(self, with_certificate: bool = True) -> dict[str, str]:
        """A native TLS client: the CA, and (by default) the client certificate, principal User:CN=streamfit-client."""
        env = {BOOTSTRAP_ENV: self.ssl_bootstrap, PROTOCOL_ENV: "SSL", CAFILE_ENV: str(self.pki.ca)}
        if with_certificate:
            env |= {CERTFILE_ENV: str(self.pki.client_cert), KEYFILE_ENV: str(self.pki.client_key)}
        return env


def settings_of(env: dict[str, str]) -> KafkaSettings:
    """The settings a process with exactly this STREAMFIT_KAFKA_* environment makes."""
    return KafkaSettings.from_env(environ=env)


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1")
    ensure_kafka_jars()
    directory = tmp_path_factory.mktemp("secure_kafka")
    pki = make_pki(directory / "pki")
    security = ClusterSecurity(server_cert=pki.server_cert, server_key=pki.server_key, ca=pki.ca)
    cluster = ApacheKafkaCluster(1, data_dir=directory / "data", log_dir=directory / "logs", security=security)
    with cluster:
        print(f"\nsecured Apache Kafka node up in {cluster.startup_seconds:.1f}s (format + start + registered)")
        yield SecureKafka(
            cluster=cluster,
            pki=pki,
            admin=KafkaSettings(bootstrap=cluster.bootstrap),
            ssl_bootstrap=cluster.listener_bootstrap("SSL"),
            sasl_bootstrap=cluster.listener_bootstrap("SASL_SSL"),
        )


@pytest.fixture
def clean_security_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No STREAMFIT_KAFKA_* security variable from the caller's shell leaks into a test."""
    for name in (*SECURITY_ENV, BOOTSTRAP_ENV):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def component_env(base: dict[str, str]) -> dict[str, str]:
    """os.environ without any STREAMFIT_KAFKA_* security variable, plus `base`: a child process's environment."""
    env = {k: v for k, v in os.environ.items() if k not in SECURITY_ENV and k != BOOTSTRAP_ENV}
    return env | base


def write_spec_dir(directory: Path, spec) -> Path:
    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{spec.name}.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    return directory
