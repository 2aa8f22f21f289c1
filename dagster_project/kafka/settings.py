"""The one place that knows how to talk to the broker.

Every Kafka client in Streamfit is made here, so pointing the product at another broker (or
adding TLS/SASL) is a matter of environment variables, never code. Only the standard Kafka
protocol is spoken: through kafka-python everywhere, and through confluent-kafka (librdkafka) for
the one hot path it speeds up several-fold, reading an exact offset range, when it is installed
(`pip install 'streamfit[fast]'`; `STREAMFIT_KAFKA_CLIENT` chooses).

With TLS or SASL configured, every client factory first checks the security handshake itself
(`KafkaSettings.check_security`: TLS handshake, then one standard request, SaslHandshake or
ApiVersions) and fails in seconds with a `BrokerSecurityError` that names the variable to fix,
where kafka-python alone would retry for 30 s and end with "Unable to bootstrap".
"""

from __future__ import annotations

import importlib.util
import os
import socket
import ssl
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

BOOTSTRAP_ENV = "STREAMFIT_KAFKA_BOOTSTRAP"

# Broker-specific tuning lives here and nowhere else. The embedded Tansu broker ignores a fetch
# with max_wait 0 (returns nothing), and joins consumer groups only after session_timeout/2.
FETCH_MAX_WAIT_MS = 10
GROUP_SESSION_TIMEOUT_MS = 6000
GROUP_HEARTBEAT_INTERVAL_MS = 1000


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

    def __post_init__(self) -> None:
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
            security_protocol=env.get(PROTOCOL_ENV) or "PLAINTEXT",
            ssl_cafile=env.get(CAFILE_ENV) or None,
            ssl_certfile=env.get(CERTFILE_ENV) or None,
            ssl_keyfile=env.get(KEYFILE_ENV) or None,
            ssl_check_hostname=env.get(CHECK_HOSTNAME_ENV, "true").strip().lower() not in ("false", "0", "no", "off"),
            sasl_mechanism=env.get(MECHANISM_ENV) or None,
            sasl_username=env.get(USERNAME_ENV) or None,
            sasl_password=env.get(PASSWORD_ENV) or None,
            client=env.get(CLIENT_ENV) or "auto",
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

        self.check_security()
        kwargs = self.common() | {
            "group_id": None,
            "enable_auto_commit": False,
            "auto_offset_reset": "none",
            "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
            "max_partition_fetch_bytes": 4 * 1024 * 1024,
        }
        return KafkaConsumer(**(kwargs | overrides))

    def range_reader_client(self) -> str:
        """The client that reads offset ranges: confluent-kafka if chosen or (auto) installed."""
        if self.client == KAFKA_PYTHON:
            return KAFKA_PYTHON
        if importlib.util.find_spec("confluent_kafka") is not None:
            return CONFLUENT
        if self.client == CONFLUENT:
            raise BrokerConfigError(
                f"{CLIENT_ENV}={CONFLUENT} but confluent-kafka is not installed: "
                f"pip install 'streamfit[fast]', or set {CLIENT_ENV}={KAFKA_PYTHON}"
            )
        return KAFKA_PYTHON

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

    def confluent_range_reader(self, **overrides: Any):
        """A confluent-kafka consumer that reads exact offsets with assign() and never joins or commits.

        librdkafka wants a group.id even for assign(); nothing is ever committed under it.
        """
        from confluent_kafka import Consumer

        self.check_security()
        config = self.librdkafka_config() | {
            "group.id": "streamfit-range-reader",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "error",  # a lost offset is an error, never a silent jump
            "enable.partition.eof": False,
            "fetch.wait.max.ms": FETCH_MAX_WAIT_MS,
        }
        return Consumer(config | overrides)

    def fast_producer(self, acks: int | str = 1):
        """A producer for the hot path (the scorer's predictions): confluent-kafka's when range reads
        use it, else kafka-python's. Same `send` / `flush` / `close` surface either way."""
        if self.range_reader_client() != CONFLUENT:
            return self.producer(acks=acks)
        from dagster_project.kafka.fast_producer import ConfluentProducer

        self.check_security()
        return ConfluentProducer(
            self.librdkafka_config()
            | {
                "acks": str(acks),
                "linger.ms": 1,  # the scorer flushes once per poll batch: batching happens there
                "partitioner": "murmur2_random",  # kafka-python's (and Java's) key -> partition mapping
                "message.timeout.ms": 30_000,
            }
        )

    def group_consumer(self, group_id: str, **overrides: Any):
        """A consumer in `group_id`, with group timeouts short enough for quick joins."""
        from kafka import KafkaConsumer

        self.check_security()
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

        self.check_security()
        kwargs = self.common() | {"acks": 1, "linger_ms": 5, "batch_size": 256 * 1024}
        return KafkaProducer(**(kwargs | overrides))

    def admin(self):
        from kafka import KafkaAdminClient

        self.check_security()
        return KafkaAdminClient(**self.common())

    # --- security pre-flight -------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context kafka-python will use, built the same way (CA, client cert, hostname check)."""
        for env_name, path in (
            (CAFILE_ENV, self.ssl_cafile),
            (CERTFILE_ENV, self.ssl_certfile),
            (KEYFILE_ENV, self.ssl_keyfile),
        ):
            if path and not Path(path).is_file():
                raise BrokerConfigError(f"{env_name}={path}: no such file")
        try:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # exactly as kafka-python builds it
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.check_hostname = self.ssl_check_hostname
            if self.ssl_cafile:
                context.load_verify_locations(self.ssl_cafile)
            else:
                context.load_default_certs()
            if self.ssl_certfile:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        except ssl.SSLError as exc:
            raise BrokerConfigError(
                f"cannot load the TLS files ({CAFILE_ENV}={self.ssl_cafile}, {CERTFILE_ENV}={self.ssl_certfile}, "
                f"{KEYFILE_ENV}={self.ssl_keyfile}): {exc}; they must be PEM files, the key matching the certificate"
            ) from exc
        return context

    def check_security(self) -> None:
        """With TLS or SASL configured, prove the handshake works on the first bootstrap broker that
        accepts a TCP connection, or raise BrokerSecurityError naming the fix. PLAINTEXT: no-op.

        Standard Kafka protocol only: the TLS handshake, then SaslHandshake (SASL) or ApiVersions (TLS,
        which also surfaces a TLS 1.3 broker rejecting our client certificate after the handshake).
        Unreachable brokers are left to the caller's own unreachable handling.
        """
        if self.security_protocol == "PLAINTEXT":
            return
        context = self.ssl_context() if "SSL" in self.security_protocol else None
        timeout_s = self.security_check_timeout_ms / 1000
        for address in self.bootstrap.split(","):
            host, _, port = address.strip().rpartition(":")
            host = host.strip("[]")
            try:
                sock = socket.create_connection((host, int(port)), timeout=timeout_s)
            except (OSError, ValueError):
                continue
            try:
                sock.settimeout(timeout_s)
                if context is not None:
                    sock = self._tls_handshake(context, sock, host, address, timeout_s)
                self._first_request(sock, address, timeout_s)
            finally:
                sock.close()
            return

    def _tls_handshake(
        self, context: ssl.SSLContext, sock: socket.socket, host: str, address: str, timeout_s: float
    ) -> ssl.SSLSocket:
        try:
            return context.wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            reason = exc.verify_message or str(exc)
            if exc.verify_code == 62 or "hostname" in reason.lower() or "ip address mismatch" in reason.lower():
                fix = (
                    f"the certificate does not name {host!r}: use a host name the certificate lists in "
                    f"{BOOTSTRAP_ENV} (and as the broker's advertised listener), or, at your own risk, set "
                    f"{CHECK_HOSTNAME_ENV}=false"
                )
            elif exc.verify_code == 10 or "expired" in reason.lower():
                fix = "the broker's certificate has expired: renew it on the broker"
            else:
                trusted = self.ssl_cafile or "the system's default CAs"
                fix = (
                    f"the broker's certificate is not signed by a CA this client trusts ({trusted}): set "
                    f"{CAFILE_ENV} to the PEM file of the CA that signed the broker's certificate"
                )
            raise BrokerSecurityError(
                f"TLS verification of the Kafka broker at {address} failed ({reason}): {fix}"
            ) from exc
        except TimeoutError as exc:
            raise BrokerSecurityError(
                f"no TLS handshake answer from the Kafka broker at {address} within {timeout_s:g}s: it is probably "
                f"a plaintext listener; set {PROTOCOL_ENV}=PLAINTEXT (or SASL_PLAINTEXT), or point {BOOTSTRAP_ENV} "
                "at the broker's TLS listener"
            ) from exc
        except (ssl.SSLError, ConnectionError) as exc:
            raise BrokerSecurityError(self._explain_tls_failure(exc, address)) from exc

    def _explain_tls_failure(self, exc: OSError, address: str) -> str:
        text = str(exc).lower()
        if "alert" in text and any(word in text for word in _CLIENT_CERT_ALERTS):
            have = f"sent {self.ssl_certfile}" if self.ssl_certfile else "sent no client certificate"
            return (
                f"the Kafka broker at {address} rejected this client's certificate ({have}; {exc}): set "
                f"{CERTFILE_ENV} and {KEYFILE_ENV} to a client certificate and key signed by a CA the broker trusts"
            )
        if isinstance(exc, ssl.SSLEOFError | ConnectionError):  # closed mid-handshake, no alert: ambiguous
            client_cert = (
                f"it may require a client certificate: set {CERTFILE_ENV} and {KEYFILE_ENV} (none set now)"
                if not self.ssl_certfile
                else f"it may not trust the client certificate {self.ssl_certfile} ({CERTFILE_ENV})"
            )
            return (
                f"the Kafka broker at {address} closed the TLS handshake ({exc!r}): {client_cert}; or it is not a "
                f"TLS listener: then set {PROTOCOL_ENV}=PLAINTEXT (or SASL_PLAINTEXT)"
            )
        return (
            f"TLS with the Kafka broker at {address} failed ({exc!r}): is it a TLS listener? For a plaintext "
            f"listener set {PROTOCOL_ENV}=PLAINTEXT (or SASL_PLAINTEXT)"
        )

    def _first_request(self, sock: socket.socket, address: str, timeout_s: float) -> None:
        sasl = "SASL" in self.security_protocol
        # Request header v1: api_key, api_version, correlation_id, client_id. SaslHandshake v1 (key 17)
        # carries the mechanism; ApiVersions v0 (key 18) has an empty body. Both are allowed before auth.
        api_key, version = (17, 1) if sasl else (18, 0)
        body = _kafka_string(self.sasl_mechanism or "") if sasl else b""
        request = struct.pack(">hhi", api_key, version, 1) + _kafka_string("streamfit-check") + body
        try:
            sock.sendall(struct.pack(">i", len(request)) + request)
            response = _recv_frame(sock)
        except TimeoutError:
            return  # slow, not insecure: the client's own timeouts take over
        except (ssl.SSLError, ConnectionError) as exc:
            raise BrokerSecurityError(self._explain_tls_failure(exc, address)) from exc
        if response is None:
            fix = f"check that its listener is {self.security_protocol} ({PROTOCOL_ENV})"
            if "SSL" in self.security_protocol:
                fix += f"; if it requires client certificates, set {CERTFILE_ENV} and {KEYFILE_ENV}"
            raise BrokerSecurityError(f"the Kafka broker at {address} closed the connection at once: {fix}")
        if sasl and len(response) >= 6:
            (error_code,) = struct.unpack_from(">h", response, 4)
            if error_code:
                from kafka.errors import for_code

                offered = _kafka_string_array(response, 6)
                no_sasl = "SSL" if "SSL" in self.security_protocol else "PLAINTEXT"
                raise BrokerSecurityError(
                    f"the Kafka broker at {address} refused SASL mechanism {self.sasl_mechanism} "
                    f"({for_code(error_code).__name__}, error {error_code}; mechanisms it lists: {offered}): set "
                    f"{MECHANISM_ENV} to a mechanism enabled on that listener, or {PROTOCOL_ENV}={no_sasl} if the "
                    "listener has no SASL"
                )


# TLS alerts a broker sends when it refuses the client's certificate (or the lack of one).
_CLIENT_CERT_ALERTS = (
    "certificate required",
    "unknown ca",
    "bad certificate",
    "certificate unknown",
    "handshake failure",
)


def _kafka_string(value: str) -> bytes:
    raw = value.encode()
    return struct.pack(">h", len(raw)) + raw


def _kafka_string_array(buf: bytes, offset: int) -> list[str]:
    try:
        (count,) = struct.unpack_from(">i", buf, offset)
        offset += 4
        out = []
        for _ in range(max(count, 0)):
            (length,) = struct.unpack_from(">h", buf, offset)
            offset += 2
            out.append(buf[offset : offset + length].decode(errors="replace"))
            offset += length
        return out
    except struct.error:
        return []


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _recv_frame(sock: socket.socket) -> bytes | None:
    """One Kafka response frame (correlation id first), or None if the broker closed the connection."""
    header = _recv_exact(sock, 4)
    if header is None:
        return None
    (size,) = struct.unpack(">i", header)
    if not 0 <= size <= 1 << 20:
        return b""
    return _recv_exact(sock, size)
