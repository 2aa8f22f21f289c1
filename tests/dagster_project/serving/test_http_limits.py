"""What an HTTP client may cost the scorer: body deadline, vanished clients, connection cap, keep-alive."""

from __future__ import annotations

import logging
import socket
import time

import orjson
import pytest

from dagster_project.registry.store import FilesystemRegistry
from dagster_project.spec import StreamSpec
from tests.dagster_project.serving.support import Client, train_version, wait_for
from tests.dagster_project.serving.test_http import ROW, http_server


def raw_request(port: int, head: bytes, body: bytes = b"", timeout_s: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock.sendall(head + body)
    return sock


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_trickling_body_gets_408_and_the_connection_closed(spec: StreamSpec, registry: FilesystemRegistry) -> None:
    train_version(registry, spec)
    with http_server(spec, registry, body_timeout_s=0.5) as (server, _):
        port = server.server_address[1]
        started = time.monotonic()
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
        with raw_request(port, head, b'{"rows": [') as sock:
            for _ in range(3):  # keeps trickling, but the deadline is for the whole body
                time.sleep(0.2)
                try:
                    sock.sendall(b" ")
                except OSError:
                    break
            answer = read_all(sock)  # the server answers, then closes: recv() reaches EOF
        elapsed = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"connection: close" in answer.lower()
        body = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert body["error"].startswith("the body did not arrive within 0.5 s (")
        assert elapsed < 3
        assert Client(server.url).predict([ROW])[0] == 200  # nothing else was held up


def test_clients_vanishing_mid_body_log_no_traceback(
    spec: StreamSpec, registry: FilesystemRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    train_version(registry, spec)
    caplog.set_level(logging.DEBUG)
    events = 200
    with http_server(spec, registry) as (server, _):
        port = server.server_address[1]
        caplog.clear()  # from here on, only what the vanishing clients cause
        for i in range(events):
            head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {5000 + i}\r\n\r\n".encode()
            raw_request(port, head, b'{"rows": [{"x0": 1').close()
        time.sleep(0.5)
        assert Client(server.url).predict([ROW])[0] == 200
        lines = [r for r in caplog.records if r.name.startswith(("uvicorn", "dagster_project.serving"))]
    assert not [r for r in lines if r.exc_info or r.levelno >= logging.WARNING], [r.getMessage() for r in lines]
    assert len(lines) <= events


def test_connection_cap_and_keep_alive(spec: StreamSpec, registry: FilesystemRegistry) -> None:
    train_version(registry, spec)
    with http_server(spec, registry, max_connections=3, keep_alive_s=1) as (server, _):
        port = server.server_address[1]
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
        # The server counts a connection once its event loop has accepted it and forgets it once it has seen
        # it close: wait for each (a fixed 0.2 s was a guess a busy machine could miss), one fresh connection
        # per probe, closed after it, so that no probe's keep-alive connection stays open to hold a slot.
        wait_for(lambda: _livez_status(server.url) == 503, 10, "503 beyond limit_concurrency (3 idle connections)")
        for sock in idle:
            sock.close()
        wait_for(lambda: _livez_status(server.url) == 200, 10, "200 once the idle connections closed")

        # An idle keep-alive connection is closed by the server after keep_alive_s, counted from its answer:
        # the clock starts before the request, so no pause of this thread can make the wait look shorter.
        started = time.monotonic()
        with raw_request(port, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n") as sock:
            answer = read_all(sock)
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert 0.8 < time.monotonic() - started < 4


def _livez_status(url: str) -> int:
    client = Client(url)
    try:
        return client.request("GET", "/livez")[0]
    finally:
        client.close()
