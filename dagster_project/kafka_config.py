"""The one place that knows how to talk to the broker.

Every Kafka client in Streamfit is made here, so pointing the product at another broker (or
adding TLS/SASL) is a matter of environment variables, never code. Only the standard Kafka
protocol is spoken, through kafka-python.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

BOOTSTRAP_ENV = "STREAMFIT_KAFKA_BOOTSTRAP"

# Broker-specific tuning lives here and nowhere else. The embedded Tansu broker ignores a fetch
# with max_wait 0 (returns nothing), and joins consumer groups only after session_timeout/2.
FETCH_MAX_WAIT_MS = 10
GROUP_SESSION_TIMEOUT_MS = 6000
GROUP_HEARTBEAT_INTERVAL_MS = 1000


class BrokerNotConfigured(RuntimeError):
    """Raised when no bootstrap address is known; the message says how to give one."""


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

    @classmethod
    def from_env(cls, bootstrap: str | None = None) -> KafkaSettings:
        """Settings from STREAMFIT_KAFKA_* variables; `bootstrap` overrides the env var."""
        env = os.environ
        bootstrap = bootstrap or env.get(BOOTSTRAP_ENV)
        if not bootstrap:
            raise BrokerNotConfigured(
                f"no Kafka broker configured: set {BOOTSTRAP_ENV}=host:port "
                "(or start the embedded one with `streamfit broker`)"
            )
        return cls(
            bootstrap=bootstrap,
            security_protocol=env.get("STREAMFIT_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
            ssl_cafile=env.get("STREAMFIT_KAFKA_SSL_CAFILE"),
            ssl_certfile=env.get("STREAMFIT_KAFKA_SSL_CERTFILE"),
            ssl_keyfile=env.get("STREAMFIT_KAFKA_SSL_KEYFILE"),
            ssl_check_hostname=env.get("STREAMFIT_KAFKA_SSL_CHECK_HOSTNAME", "true").lower() != "false",
            sasl_mechanism=env.get("STREAMFIT_KAFKA_SASL_MECHANISM"),
            sasl_username=env.get("STREAMFIT_KAFKA_SASL_USERNAME"),
            sasl_password=env.get("STREAMFIT_KAFKA_SASL_PASSWORD"),
        )

    def with_bootstrap(self, bootstrap: str) -> KafkaSettings:
        return replace(self, bootstrap=bootstrap)

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

    def range_reader(self, **overrides: Any):
        """A consumer with no group: it reads exact offsets with assign+seek and never joins."""
        from kafka import KafkaConsumer

        kwargs = self.common() | {
            "group_id": None,
            "enable_auto_commit": False,
            "auto_offset_reset": "none",
            "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
            "max_partition_fetch_bytes": 4 * 1024 * 1024,
        }
        return KafkaConsumer(**(kwargs | overrides))

    def group_consumer(self, group_id: str, **overrides: Any):
        """A consumer in `group_id`, with group timeouts short enough for quick joins."""
        from kafka import KafkaConsumer

        kwargs = self.common() | {
            "group_id": group_id,
            "enable_auto_commit": False,
            "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
            "session_timeout_ms": GROUP_SESSION_TIMEOUT_MS,
            "heartbeat_interval_ms": GROUP_HEARTBEAT_INTERVAL_MS,
        }
        return KafkaConsumer(**(kwargs | overrides))

    def producer(self, **overrides: Any):
        """A producer tuned for throughput with acks from the leader."""
        from kafka import KafkaProducer

        kwargs = self.common() | {"acks": 1, "linger_ms": 5, "batch_size": 256 * 1024}
        return KafkaProducer(**(kwargs | overrides))

    def admin(self):
        from kafka import KafkaAdminClient

        return KafkaAdminClient(**self.common())
