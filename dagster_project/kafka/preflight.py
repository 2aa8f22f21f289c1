"""Security preflight: prove the TLS or SASL handshake works before a client is made.

kafka-python alone retries a failing handshake for 30 s and ends with "Unable to bootstrap". Here
the handshake is tried once on the first reachable bootstrap broker, speaking only the standard
Kafka protocol (TLS, then SaslHandshake and the SASL login itself, or ApiVersions), and a failure
raises a `BrokerSecurityError` that names the setting to fix.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Callable
from pathlib import Path

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
    BrokerConfigError,
    BrokerSecurityError,
    KafkaSettings,
)


def ssl_context(settings: KafkaSettings) -> ssl.SSLContext:
    """The TLS context kafka-python will use, built the same way (CA, client cert, hostname check)."""
    for env_name, path in (
        (CAFILE_ENV, settings.ssl_cafile),
        (CERTFILE_ENV, settings.ssl_certfile),
        (KEYFILE_ENV, settings.ssl_keyfile),
    ):
        if path and not Path(path).is_file():
            raise BrokerConfigError(f"{env_name}={path}: no such file")
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # exactly as kafka-python builds it
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = settings.ssl_check_hostname
        if settings.ssl_cafile:
            context.load_verify_locations(settings.ssl_cafile)
        else:
            context.load_default_certs()
        if settings.ssl_certfile:
            context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
    except ssl.SSLError as exc:
        raise BrokerConfigError(
            f"cannot load the TLS files ({CAFILE_ENV}={settings.ssl_cafile}, {CERTFILE_ENV}={settings.ssl_certfile}, "
            f"{KEYFILE_ENV}={settings.ssl_keyfile}): {exc}; they must be PEM files, the key matching the certificate"
        ) from exc
    return context


def check_security(settings: KafkaSettings) -> None:
    """With TLS or SASL configured, prove the handshake works on the first bootstrap broker that
    accepts a TCP connection, or raise BrokerSecurityError naming the fix. PLAINTEXT: no-op.

    Standard Kafka protocol only: the TLS handshake, then SaslHandshake and SaslAuthenticate (SASL: a
    real login with kafka-python's own PLAIN/SCRAM code, so wrong credentials fail here in milliseconds)
    or ApiVersions (TLS, which also surfaces a TLS 1.3 broker rejecting our client certificate after the
    handshake).
    Unreachable brokers are left to the caller's own unreachable handling.
    """
    if settings.security_protocol == "PLAINTEXT":
        return
    context = ssl_context(settings) if "SSL" in settings.security_protocol else None
    timeout_s = settings.security_check_timeout_ms / 1000
    for address in settings.bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        host = host.strip("[]")
        try:
            sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        except (OSError, ValueError):
            continue
        try:
            sock.settimeout(timeout_s)
            if context is not None:
                sock = _tls_handshake(settings, context, sock, host, address, timeout_s)
            _first_request(settings, sock, address, timeout_s)
        finally:
            sock.close()
        return


def _tls_handshake(
    settings: KafkaSettings,
    context: ssl.SSLContext,
    sock: socket.socket,
    host: str,
    address: str,
    timeout_s: float,
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
            trusted = settings.ssl_cafile or "the system's default CAs"
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
        raise BrokerSecurityError(_explain_tls_failure(settings, exc, address)) from exc


def _explain_tls_failure(settings: KafkaSettings, exc: OSError, address: str) -> str:
    text = str(exc).lower()
    if "alert" in text and any(word in text for word in _CLIENT_CERT_ALERTS):
        have = f"sent {settings.ssl_certfile}" if settings.ssl_certfile else "sent no client certificate"
        return (
            f"the Kafka broker at {address} rejected this client's certificate ({have}; {exc}): set "
            f"{CERTFILE_ENV} and {KEYFILE_ENV} to a client certificate and key signed by a CA the broker trusts"
        )
    if isinstance(exc, ssl.SSLEOFError | ConnectionError):  # closed mid-handshake, no alert: ambiguous
        client_cert = (
            f"it may require a client certificate: set {CERTFILE_ENV} and {KEYFILE_ENV} (none set now)"
            if not settings.ssl_certfile
            else f"it may not trust the client certificate {settings.ssl_certfile} ({CERTFILE_ENV})"
        )
        return (
            f"the Kafka broker at {address} closed the TLS handshake ({exc!r}): {client_cert}; or it is not a "
            f"TLS listener: then set {PROTOCOL_ENV}=PLAINTEXT (or SASL_PLAINTEXT)"
        )
    return (
        f"TLS with the Kafka broker at {address} failed ({exc!r}): is it a TLS listener? For a plaintext "
        f"listener set {PROTOCOL_ENV}=PLAINTEXT (or SASL_PLAINTEXT)"
    )


def _first_request(settings: KafkaSettings, sock: socket.socket, address: str, timeout_s: float) -> None:
    sasl = "SASL" in settings.security_protocol
    # Request header v1: api_key, api_version, correlation_id, client_id. SaslHandshake v1 (key 17)
    # carries the mechanism; ApiVersions v0 (key 18) has an empty body. Both are allowed before auth.
    api_key, version = (17, 1) if sasl else (18, 0)
    body = _kafka_string(settings.sasl_mechanism or "") if sasl else b""
    request = struct.pack(">hhi", api_key, version, 1) + _kafka_string("streamfit-check") + body
    try:
        sock.sendall(struct.pack(">i", len(request)) + request)
        response = _recv_frame(sock)
    except TimeoutError:
        return  # slow, not insecure: the client's own timeouts take over
    except (ssl.SSLError, ConnectionError) as exc:
        raise BrokerSecurityError(_explain_tls_failure(settings, exc, address)) from exc
    if response is None:
        fix = f"check that its listener is {settings.security_protocol} ({PROTOCOL_ENV})"
        if "SSL" in settings.security_protocol:
            fix += f"; if it requires client certificates, set {CERTFILE_ENV} and {KEYFILE_ENV}"
        raise BrokerSecurityError(f"the Kafka broker at {address} closed the connection at once: {fix}")
    if sasl and len(response) >= 6:
        (error_code,) = struct.unpack_from(">h", response, 4)
        if error_code:
            from kafka.errors import for_code

            offered = _kafka_string_array(response, 6)
            no_sasl = "SSL" if "SSL" in settings.security_protocol else "PLAINTEXT"
            raise BrokerSecurityError(
                f"the Kafka broker at {address} refused SASL mechanism {settings.sasl_mechanism} "
                f"({for_code(error_code).__name__}, error {error_code}; mechanisms it lists: {offered}): set "
                f"{MECHANISM_ENV} to a mechanism enabled on that listener, or {PROTOCOL_ENV}={no_sasl} if the "
                "listener has no SASL"
            )
        _sasl_authenticate(settings, sock, address)


# SaslAuthenticate (key 36) v1 with request header v1; its response carries error_code, error_message,
# auth_bytes and session_lifetime_ms. Error 58 is SASL_AUTHENTICATION_FAILED (bad user or password).
_SASL_AUTHENTICATE = 36
_SASL_AUTHENTICATION_FAILED = 58


def _sasl_authenticate(settings: KafkaSettings, sock: socket.socket, address: str) -> None:
    """Log in with the configured mechanism and credentials, or raise naming the username/password variables."""
    from kafka.net.sasl import get_sasl_mechanism

    mechanism = get_sasl_mechanism(settings.sasl_mechanism)(**settings.common())
    correlation_id = 2
    while not mechanism.is_done():
        token = mechanism.auth_bytes()
        request = struct.pack(">hhi", _SASL_AUTHENTICATE, 1, correlation_id) + _kafka_string("streamfit-check")
        try:
            sock.sendall(_frame(request + struct.pack(">i", len(token)) + token))
            response = _recv_frame(sock)
        except TimeoutError:
            return  # slow, not refused: the client's own timeouts take over
        except (ssl.SSLError, ConnectionError) as exc:
            raise BrokerSecurityError(_explain_tls_failure(settings, exc, address)) from exc
        if response is None:
            raise BrokerSecurityError(
                f"the Kafka broker at {address} closed the connection during the SASL {settings.sasl_mechanism} "
                f"login of {settings.sasl_username!r}: check {USERNAME_ENV} and {PASSWORD_ENV}"
            )
        error_code, message, auth_bytes = _parse_sasl_authenticate(response)
        if error_code == _SASL_AUTHENTICATION_FAILED:
            raise BrokerSecurityError(
                f"the Kafka broker at {address} rejected the SASL {settings.sasl_mechanism} login of "
                f"{settings.sasl_username!r} ({message or 'authentication failed'}): check {USERNAME_ENV} and "
                f"{PASSWORD_ENV}; a SCRAM user must exist for this mechanism on the cluster "
                "(dagster_project.kafka.admin_security.create_scram_user, or kafka-configs.sh --alter --add-config)"
            )
        if error_code:
            from kafka.errors import for_code

            raise BrokerSecurityError(
                f"the Kafka broker at {address} failed the SASL {settings.sasl_mechanism} login of "
                f"{settings.sasl_username!r} ({for_code(error_code).__name__}: {message}): check {USERNAME_ENV}, "
                f"{PASSWORD_ENV} and {MECHANISM_ENV}"
            )
        try:
            mechanism.receive(auth_bytes)
        except (ValueError, KeyError) as exc:  # e.g. a SCRAM server signature that does not verify
            raise BrokerSecurityError(
                f"the Kafka broker at {address} sent an invalid SASL {settings.sasl_mechanism} answer ({exc}): "
                "it may not be the broker you meant; check the bootstrap address"
            ) from exc
        correlation_id += 1


def _parse_sasl_authenticate(response: bytes) -> tuple[int, str | None, bytes]:
    """(error_code, error_message, auth_bytes) of a SaslAuthenticate v1 response (correlation id first)."""
    try:
        offset = 4
        (error_code, length) = struct.unpack_from(">hh", response, offset)
        offset += 4
        message = None
        if length >= 0:
            message = response[offset : offset + length].decode(errors="replace")
            offset += length
        (size,) = struct.unpack_from(">i", response, offset)
        offset += 4
        return error_code, message, response[offset : offset + max(size, 0)]
    except struct.error:
        return -1, "malformed SaslAuthenticate response", b""


def _frame(request: bytes) -> bytes:
    return struct.pack(">i", len(request)) + request


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


def not_kafka(sock: socket.socket, on_silence: Callable[[], None] | None = None) -> str | None:
    """Why the server on the connected `sock` is not a Kafka broker, or None when it answers like one
    (or says nothing within the socket's timeout: a slow broker is left to the client's own timeouts).

    Anything listening accepts a TCP connection, so a bootstrap address pointed at an HTTP server (a
    wrong port) passed the reachability check and kafka-python then waited 30 s for a reply it could
    not parse, ending in a bare `KafkaTimeoutError: Unable to bootstrap`. One ApiVersions v0 request,
    which every Kafka broker answers before any authentication, tells them apart."""
    # The client id ends in a blank line so that an HTTP server answers "400 Bad Request" at once
    # instead of waiting for the rest of a request line; Kafka brokers take any client id.
    request = struct.pack(">hhi", 18, 0, 7) + _kafka_string("streamfit-check\r\n\r\n")
    try:
        sock.sendall(struct.pack(">i", len(request)) + request)
        header = _recv_exact(sock, 8)
    except TimeoutError:
        if on_silence is not None:  # a caller that keeps a person waiting says so
            on_silence()
        return None
    except OSError:
        return None  # reset: the client's own connection handling says so
    if header is None:
        return (
            "it closed the connection without answering a Kafka request: is it a TLS listener (then set "
            f"{PROTOCOL_ENV}=SSL) or another service?"
        )
    size, correlation_id = struct.unpack(">ii", header)
    if correlation_id == 7 and 0 <= size <= 1 << 20:
        return None
    shown = header.decode("latin-1").strip()
    return f"it answered a Kafka request with {shown!r}..., not a Kafka response: is it another service (HTTP?)"
