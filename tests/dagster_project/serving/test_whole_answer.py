"""A fast-path 200 leaves in one write with the bytes uvicorn would send, keep-alive and pipelining intact."""

from __future__ import annotations

import json
import socket

import pytest
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from dagster_project.registry.store import FilesystemRegistry
from dagster_project.spec import StreamSpec
from tests.dagster_project.serving.support import train_version
from tests.dagster_project.serving.test_fastpath import raw_exchange, twin_servers
from tests.dagster_project.serving.test_http import ROW


def post(body: bytes, close: bool = False) -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + connection
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def test_200s_skip_the_asgi_messages_and_errors_do_not(
    spec: StreamSpec, registry: FilesystemRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    train_version(registry, spec)
    sent: list[tuple[str, int | None]] = []
    original = RequestResponseCycle.send

    async def recording(self: RequestResponseCycle, message: dict) -> None:
        sent.append((message["type"], message.get("status")))
        await original(self, message)

    monkeypatch.setattr(RequestResponseCycle, "send", recording)
    good, bad = json.dumps({"rows": [ROW]}).encode(), json.dumps({"rows": [ROW | {"x1": "high"}]}).encode()
    with twin_servers(spec, registry) as servers:
        fast = servers["fast"][0]
        assert raw_exchange(fast, post(good, close=True)).startswith(b"HTTP/1.1 200 OK")
        assert sent == []  # written whole, not through uvicorn's `send`
        assert raw_exchange(fast, post(bad, close=True)).startswith(b"HTTP/1.1 422 ")
        assert sent == [("http.response.start", 422), ("http.response.body", None)]


def test_pipelined_and_closing_requests_get_uvicorns_bytes(spec: StreamSpec, registry: FilesystemRegistry) -> None:
    train_version(registry, spec)
    good, bad = json.dumps({"rows": [ROW]}).encode(), json.dumps({"rows": []}).encode()
    # three requests in one send on one connection, the last asking to close: each answered in turn, then EOF
    raw = post(good) + post(bad) + post(good, close=True)
    with twin_servers(spec, registry) as servers:
        answers = {name: raw_exchange(server, raw) for name, (server, _, _) in servers.items()}
    assert answers["fast"] == answers["starlette"], answers
    assert answers["fast"].count(b"HTTP/1.1 200 OK") == 2 and answers["fast"].count(b"HTTP/1.1 422 ") == 1
    assert answers["fast"].lower().count(b"connection: close") == 1


def test_a_connection_kept_alive_serves_the_next_request(spec: StreamSpec, registry: FilesystemRegistry) -> None:
    train_version(registry, spec)
    good = json.dumps({"rows": [ROW]}).encode()
    with twin_servers(spec, registry) as servers, socket.create_connection(servers["fast"][0].server_address, 10) as s:
        for _ in range(3):  # one request at a time on the same connection
            s.sendall(post(good))
            answer = s.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200 OK") and b"connection: close" not in answer.lower(), answer
            assert answer.endswith(b"]}]}"), answer  # head and body arrived together
