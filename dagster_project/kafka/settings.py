"""Kafka connection settings as data: bootstrap, security, timeouts, and the broker-specific tuning.

Read from `STREAMFIT_KAFKA_*` variables (or the Dagster Kafka resource) and validated at once, so a
wrong setting fails with the variable to fix before any client is made. Clients are built from
these in `clients.py`; the TLS/SASL handshake check is `preflight.py`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

BOOTSTRAP_ENV = "STREAMFIT_KAFKA_BOOTSTRAP"

# Broker-specific tuning lives here and nowhere else. The embedded Tansu broker ignores a fetch
# with max_wait 0 (returns nothing), and joins consumer groups only after session_timeout/2.
# Probes (the sensor's and the exporter's, and other short reads) keep 10 ms: a fetch at the end of
# a partition waits the whole max_wait for records, and a probe reads every partition's end.
FETCH_MAX_WAIT_MS = 10
# Range reads and group consumers (the scorer, the label joiner), on either client, wait up to
# librdkafka's default: Tansu answers a fetch with nothing once assembling it takes longer than
# max_wait, which grows with the record batches a partition holds (a producer sending one event per
# batch: 0.8 s to read 300 rows at 30,000 held, none at 40,000, with 10 ms). Brokers answer as soon
# as records are there, so this costs no latency (a new record reached a waiting reader in 51-55 ms
# at 10 and at 1,000 ms).
READER_FETCH_MAX_WAIT_MS = 500
GROUP_SESSION_TIMEOUT_MS = 6000
GROUP_HEARTBEAT_INTERVAL_MS = 1000
# How stale a group member's metadata may get. kafka-python's group leader assigns from the metadata it
# has at that moment; if a subscribed topic is missing from it (just after a cluster restart, or before the
# first metadata answer), the group gets no partitions, and the rejoin that fixes it waits for the next
# metadata refresh: by default up to 5 minutes. Refreshing every few seconds bounds that wait.
GROUP_METADATA_MAX_AGE_MS = 5000


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
PROTOCOL_ENV = "STREAMFIT_KAFKA_SECURITY_PROTOCOL"
CAFILE_ENV = "STREAMFIT_KAFKA_SSL_CAFILE"
CERTFILE_ENV = "STREAMFIT_KAFKA_SSL_CERTFILE"
KEYFILE_ENV = "STREAMFIT_KAFKA_SSL_KEYFILE"
CHECK_HOSTNAME_ENV = "STREAMFIT_KAFKA_SSL_CHECK_HOSTNAME"
MECHANISM_ENV = "STREAMFIT_KAFKA_SASL_MECHANISM"
USERNAME_ENV = "STREAMFIT_KAFKA_SASL_USERNAME"
PASSWORD_ENV = "STREAMFIT_KAFKA_SASL_PASSWORD"
CLIENT_ENV = "STREAMFIT_KAFKA_CLIENT"
ACKS_ENV = "STREAMFIT_KAFKA_ACKS"
ACKS = ("all", "1", "0")
KAFKA_PYTHON = "kafka-python"
CONFLUENT = "confluent-kafka"
CLIENTS = ("auto", KAFKA_PYTHON, CONFLUENT)


class BrokerNotConfigured(RuntimeError):
    """Raised when no bootstrap address is known; the message says how to give one."""


class BrokerConfigError(ValueError):
    """The security settings are inconsistent (unknown protocol, missing credentials or files)."""


class BrokerSecurityError(ConnectionError):
    """The TLS or SASL handshake with the broker failed; the message names the setting to fix.

    A ConnectionError (an OSError), so code that handles an unreachable broker handles it too.
    """


def _certificate_subject(path: str) -> str:
    """The subject of the PEM certificate at `path` in RFC 4514 form, as Kafka names SSL principals."""
    try:
        from cryptography import x509

        with open(path, "rb") as handle:
            return x509.load_pem_x509_certificate(handle.read()).subject.rfc4514_string()
    except Exception:  # cryptography missing, or an unreadable file (the TLS preflight reports that one)
        return f"<subject of {path}>"


@dataclass(frozen=True)
class KafkaSettings:
    """Connection settings for one Kafka cluster (bootstrap, security, timeouts)."""

    bootstrap: str
    security_protocol: str = "PLAINTEXT"
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    request_timeout_ms: int = 10_000
    api_timeout_ms: int = 5_000
    security_check_timeout_ms: int = 5_000
    client: str = "auto"  # which client reads offset ranges: auto = confluent-kafka when installed
    # Acknowledgements for events, labels and other plain producing: "all" waits for every in-sync
    # replica (with min.insync.replicas=2 a record survives losing its leader) and lets kafka-python
    # use its idempotent producer (no duplicates on retry); "1" is the leader only, "0" fire-and-forget.
    acks: str = "all"

    def __post_init__(self) -> None:
        acks = str(self.acks).strip().lower()
        acks = "all" if acks == "-1" else acks
        if acks not in ACKS:
            raise BrokerConfigError(f"unknown acks {self.acks!r}: set {ACKS_ENV} to one of {list(ACKS)}")
        object.__setattr__(self, "acks", acks)
        client = (self.client or "auto").strip().lower()
        object.__setattr__(self, "client", client)
        if client not in CLIENTS:
            raise BrokerConfigError(f"unknown Kafka client {client!r}: set {CLIENT_ENV} to one of {list(CLIENTS)}")
        protocol = (self.security_protocol or "PLAINTEXT").strip().upper()
        object.__setattr__(self, "security_protocol", protocol)
        if protocol not in SECURITY_PROTOCOLS:
            raise BrokerConfigError(
                f"unknown Kafka security protocol {protocol!r}: set {PROTOCOL_ENV} to one of {list(SECURITY_PROTOCOLS)}"
            )
        if "SASL" in protocol:
            mechanism = (self.sasl_mechanism or "").strip().upper()
            if mechanism not in SASL_MECHANISMS:
                raise BrokerConfigError(
                    f"{PROTOCOL_ENV}={protocol} needs a SASL mechanism: set {MECHANISM_ENV} to one of "
                    f"{list(SASL_MECHANISMS)} (got {self.sasl_mechanism!r})"
                )
            object.__setattr__(self, "sasl_mechanism", mechanism)
            if not self.sasl_username or not self.sasl_password:
                raise BrokerConfigError(f"SASL {mechanism} needs credentials: set {USERNAME_ENV} and {PASSWORD_ENV}")
        if "SSL" in protocol and self.ssl_keyfile and not self.ssl_certfile:
            raise BrokerConfigError(
                f"{KEYFILE_ENV} is set but {CERTFILE_ENV} is not: set both (a key needs its certificate)"
            )

    @classmethod
    def from_env(cls, bootstrap: str | None = None, environ: Mapping[str, str] | None = None) -> KafkaSettings:
        """Settings from STREAMFIT_KAFKA_* variables (of `environ`, default the process's); `bootstrap` wins."""
        env = os.environ if environ is None else environ
        bootstrap = bootstrap or env.get(BOOTSTRAP_ENV)
        if not bootstrap:
            raise BrokerNotConfigured(
                f"no Kafka broker configured: set {BOOTSTRAP_ENV}=host:port "
                "(or start the embedded one with `streamfit broker`)"
            )
        return cls(
            bootstrap=bootstrap,
            security_protocol=env.get(PROTOCOL_ENV) or "PLAINTEXT",
            ssl_cafile=env.get(CAFILE_ENV) or None,
            ssl_certfile=env.get(CERTFILE_ENV) or None,
            ssl_keyfile=env.get(KEYFILE_ENV) or None,
            ssl_check_hostname=env.get(CHECK_HOSTNAME_ENV, "true").strip().lower() not in ("false", "0", "no", "off"),
            sasl_mechanism=env.get(MECHANISM_ENV) or None,
            sasl_username=env.get(USERNAME_ENV) or None,
            sasl_password=env.get(PASSWORD_ENV) or None,
            client=env.get(CLIENT_ENV) or "auto",
            acks=env.get(ACKS_ENV) or "all",
        )

    def with_bootstrap(self, bootstrap: str) -> KafkaSettings:
        return replace(self, bootstrap=bootstrap)

    @property
    def principal(self) -> str:
        """The principal a broker (with Kafka's default principal builder) authorizes these settings as.

        `User:<name>` with SASL; `User:<certificate subject>` on SSL with a client certificate (e.g.
        `User:CN=streamfit-client`); otherwise `User:ANONYMOUS`. For error messages: brokers with custom
        principal builders or mapping rules may see another name.
        """
        if "SASL" in self.security_protocol:
            return f"User:{self.sasl_username}"
        if self.security_protocol == "SSL" and self.ssl_certfile:
            return f"User:{_certificate_subject(self.ssl_certfile)}"
        return "User:ANONYMOUS"

    def identity_fix(self) -> str:
        """How to act as another principal: the variables that choose the identity these settings log in with."""
        if "SASL" in self.security_protocol:
            return f"set {USERNAME_ENV} (and {PASSWORD_ENV}) to a principal that has it"
        if self.security_protocol == "SSL" and self.ssl_certfile:
            return f"set {CERTFILE_ENV} and {KEYFILE_ENV} to a client certificate whose principal has it"
        return f"log in as a principal that has it ({PROTOCOL_ENV}=SASL_SSL and {USERNAME_ENV}, or a client cert)"

    def producer_acks(self) -> int | str:
        """`acks` as kafka-python takes it: "all", 1 or 0."""
        return "all" if self.acks == "all" else int(self.acks)

    def common(self) -> dict[str, Any]:
        """Keyword arguments every kafka-python client takes."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap.split(","),
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
            "client_id": "streamfit",
        }
        if "SSL" in self.security_protocol:
            kwargs.update(
                ssl_cafile=self.ssl_cafile,
                ssl_certfile=self.ssl_certfile,
                ssl_keyfile=self.ssl_keyfile,
                ssl_check_hostname=self.ssl_check_hostname,
            )
        if "SASL" in self.security_protocol:
            kwargs.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        return kwargs

    def librdkafka_config(self) -> dict[str, Any]:
        """The same connection and security settings, in librdkafka's (confluent-kafka's) names."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": self.security_protocol.lower(),
            "socket.timeout.ms": self.request_timeout_ms,
            "client.id": "streamfit",
        }
        if "SSL" in self.security_protocol:
            optional = {
                "ssl.ca.location": self.ssl_cafile,
                "ssl.certificate.location": self.ssl_certfile,
                "ssl.key.location": self.ssl_keyfile,
            }
            config |= {k: v for k, v in optional.items() if v}
            config["ssl.endpoint.identification.algorithm"] = "https" if self.ssl_check_hostname else "none"
        if "SASL" in self.security_protocol:
            config |= {
                "sasl.mechanism": self.sasl_mechanism,
                "sasl.username": self.sasl_username,
                "sasl.password": self.sasl_password,
            }
        return config
