"""The scorer's HTTP server: uvicorn in a thread of the scorer process, serving `api.build_app`.

In the same process as the Kafka loop, so both use the one hot-swapped model (`ChampionWatcher.current`).
The two inference routes are answered by `fastpath.FastInference` in front of the Starlette app,
which scores the requests ready in one loop iteration together (`coalesce.Coalescer`).
The listening socket is bound in the constructor, so a busy port fails at once with the address
in the message, and port 0 is resolved before anyone asks for the URL. uvicorn caps concurrent
connections (`limit_concurrency`: 503 beyond it) and closes idle keep-alive connections after
`keep_alive_s`; its access log is off (one line per request would drown the scorer's own logs).
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

from dagster_project.serving.api import ScoringContext, build_app
from dagster_project.serving.champion import ChampionWatcher
from dagster_project.serving.fastpath import FastInference
from dagster_project.serving.features import ServingFeatures
from dagster_project.serving.health import ScorerHealth
from dagster_project.serving.kserve import kserve_routes
from dagster_project.serving.limits import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_KEEP_ALIVE_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_ROWS,
    BearerToken,
    HttpLimits,
)
from dagster_project.serving.metrics import ScorerMetrics
from dagster_project.spec import StreamSpec

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 5  # in-flight requests may finish; a slow body is cut by its own deadline anyway


def address_family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def socket_address(sock: socket.socket) -> tuple[str, int]:
    """(host, port) a bound socket listens on; port 0 already resolved."""
    host, port = sock.getsockname()[:2]
    return host, port


def http_url(address: tuple[str, int]) -> str:
    host, port = address
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def bind_http_socket(address: tuple[str, int]) -> socket.socket:
    """The listening socket, bound here so a busy port fails at once (and port 0 resolves) before serving."""
    host, port = address
    return socket.create_server((host, port), family=address_family(host), backlog=2048)


def reserve_reuse_port(address: tuple[str, int]) -> socket.socket:
    """A socket bound to `address` with SO_REUSEPORT but not listening: it holds the port while server
    processes bind their own listening sockets to it, among which the kernel spreads connections.

    A plain bind first, so a busy port fails here naming nothing new (another server's SO_REUSEPORT
    socket of the same user would otherwise let the reserving bind succeed and share the port)."""
    host, port = address
    family = address_family(host)
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, port))  # EADDRINUSE if anyone holds it
        port = probe.getsockname()[1]  # port 0: the free one just found
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class ScorerHTTPServer:
    """The HTTP API of one stream's scorer; `start()` serves in a daemon thread, `stop()` ends it."""

    def __init__(
        self,
        address: tuple[str, int],
        spec: StreamSpec,
        watcher: ChampionWatcher,
        metrics: ScorerMetrics,
        health: ScorerHealth | None = None,
        token: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_rows: int = DEFAULT_MAX_ROWS,
        body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        keep_alive_s: int = DEFAULT_KEEP_ALIVE_S,
        features: ServingFeatures | None = None,
        fast_path: bool = True,
        coalesce: bool = True,
        sock: socket.socket | None = None,
    ) -> None:
        self.spec = spec
        self.limits = HttpLimits(max_body_bytes, max_rows, body_timeout_s, max_connections, keep_alive_s)
        health = health or ScorerHealth(spec.name, watcher)
        context = ScoringContext(spec, watcher, metrics, health, BearerToken(token), self.limits, features)
        app = build_app(context, kserve_routes(context))
        # False serves the hot routes through Starlette too: the benchmark's and the equivalence test's reference;
        # coalesce=False scores each fast-path request in its own onnxruntime call (the benchmark's reference)
        self.app = FastInference(app, context, coalesce=coalesce) if fast_path else app
        self._socket = sock or bind_http_socket(
            address
        )  # given: bound by a parent process and shared by several (`--http-processes`)
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                log_config=None,  # keep the process's logging as the CLI configured it
                access_log=False,
                lifespan="off",
                limit_concurrency=self.limits.max_connections,
                timeout_keep_alive=self.limits.keep_alive_s,
                timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
                server_header=False,
            )
        )
        self._thread: threading.Thread | None = None

    @property
    def server_address(self) -> tuple[str, int]:
        return socket_address(self._socket)

    @property
    def url(self) -> str:
        return http_url(self.server_address)

    def start(self, timeout_s: float = 10.0) -> ScorerHTTPServer:
        """Serve in a daemon thread; returns once uvicorn accepts connections."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.run, kwargs={"sockets": [self._socket]}, name="scorer-http", daemon=True
            )
            self._thread.start()
            deadline = time.monotonic() + timeout_s
            while not self._server.started:
                if not self._thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the HTTP server did not start on {self.url}")
                time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=SHUTDOWN_GRACE_S + 5)
            if self._thread.is_alive():
                log.warning("%s: the HTTP server did not stop within %d s", self.spec.name, SHUTDOWN_GRACE_S + 5)
            self._thread = None
        self._socket.close()
