"""`--http-processes N`: the HTTP API in N processes sharing one listening socket, the Kafka loop in the main one.

One Python process caps the API at about one core (uvicorn alone costs 22-24 us of CPU per request),
so N > 1 runs the same server (`ScorerHTTPServer`: fast path, coalescing, limits, token) in N child
processes: the main process reserves the port (a busy port fails there, at once; `http.reserve_reuse_port`)
and each child listens on its own SO_REUSEPORT socket on it, among which the kernel spreads new
connections by their address hash. Sharing one listening socket, as uvicorn's `workers` do
(`reuse_port=False`), let one process take a whole burst of new connections (all 8 of wrk's in
2 of 6 runs, the other process idle). Each child follows the registry with its own `ChampionWatcher`,
so it hot-swaps as the main process does and every answer names the version that scored it.

Children are `python -m dagster_project.serving.http_child` (`serve_child`): their settings arrive pickled on
stdin, which then stays open as a lifeline. The main process holds the other end, so when it exits
in any way (kill -9 included) the kernel closes it, the child reads EOF and stops: no orphans. A child
that dies is replaced (`_supervise`); until then the kernel sends new connections to the others.
Metrics are shared through prometheus_client's multiprocess mode (`metrics.enable_multiprocess`,
a fresh directory per serve), so `GET /metrics` from any process counts every process. The Kafka
loop's state for `/healthz` and `/readyz` lives in the main process: it writes a snapshot to a file
every `SNAPSHOT_EVERY_S`, which the children read (`SharedKafkaState`).
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from dagster_project.registry.store import ModelRegistry
from dagster_project.serving.http import http_url, socket_address
from dagster_project.serving.metrics import MULTIPROC_ENV
from dagster_project.spec import StreamSpec

log = logging.getLogger(__name__)

SNAPSHOT_EVERY_S = 0.2
SNAPSHOT_STALE_S = 5.0  # a snapshot this old: the main process is stuck or gone
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
SUPERVISE_EVERY_S = 0.5
RESTART_BACKOFF_S = 2.0


@dataclass
class WorkerPlan:
    """What a child needs to serve: pickled to its stdin."""

    spec: StreamSpec
    registry: ModelRegistry
    metrics_dir: str  # prometheus_client's multiprocess directory, shared by every process of this serve
    state_file: str
    watch_interval_s: float
    reuse_port: bool = True  # each child listens on its own SO_REUSEPORT socket; False: all share one socket
    server_options: dict[str, Any] = field(default_factory=dict)  # ScorerHTTPServer keyword arguments


class SharedKafkaState:
    """A child's view of the main process's Kafka link and delivery mode, read from its snapshot file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _snapshot(self) -> dict[str, Any] | None:
        try:
            return orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None

    def describe(self) -> dict[str, Any]:
        snapshot = self._snapshot()
        age = time.time() - snapshot["at"] if snapshot else None
        if snapshot is None or age is None or age > SNAPSHOT_STALE_S:
            silent = "never" if age is None else f"not for {age:.1f} s"
            return {
                "state": "unknown",
                "problem": f"the scorer's main process has {silent} reported its Kafka state (limit "
                f"{SNAPSHOT_STALE_S:g} s): check its log",
            }
        return snapshot["kafka"]

    def delivery(self) -> dict[str, Any]:
        snapshot = self._snapshot()
        return snapshot["delivery"] if snapshot and snapshot.get("delivery") is not None else {}


def write_snapshot(path: Path, kafka: dict[str, Any] | None, delivery: dict[str, Any] | None) -> None:
    """Replace the snapshot atomically (a reader never sees half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps({"at": time.time(), "kafka": kafka, "delivery": delivery}))
    os.replace(tmp, path)


class HttpProcesses:
    """N child HTTP servers on `sock`; `start()` returns once all accept, `stop()` ends them."""

    def __init__(
        self,
        sock: socket.socket,
        count: int,
        plan: WorkerPlan,
        kafka: Callable[[], dict[str, Any]] | None,
        delivery: Callable[[], dict[str, Any]] | None,
    ) -> None:
        self._socket = sock
        self.count = count
        self.plan = plan
        self._kafka, self._delivery = kafka, delivery
        self.children: list[subprocess.Popen] = []
        self._halt = threading.Event()
        self._snapshots: threading.Thread | None = None
        self._supervisor: threading.Thread | None = None
        self.restarts = 0  # children replaced after they died

    @property
    def server_address(self) -> tuple[str, int]:
        return socket_address(self._socket)

    @property
    def url(self) -> str:
        return http_url(self.server_address)

    def _snapshot(self) -> None:
        write_snapshot(
            Path(self.plan.state_file),
            self._kafka() if self._kafka else None,
            self._delivery() if self._delivery else None,
        )

    def _keep_snapshot(self) -> None:
        while not self._halt.wait(SNAPSHOT_EVERY_S):
            try:
                self._snapshot()
            except Exception:  # noqa: BLE001 (the children say "not reported" if this keeps failing)
                log.exception("%s: cannot write the Kafka state for the HTTP processes", self.plan.spec.name)

    def start(self) -> HttpProcesses:
        if self.children:
            return self
        self._snapshot()
        self._snapshots = threading.Thread(target=self._keep_snapshot, name="http-processes-state", daemon=True)
        self._snapshots.start()
        self.children = [self._spawn() for _ in range(self.count)]
        for child in self.children:
            problem = _started(child)
            if problem:
                self.stop()
                raise RuntimeError(f"{problem}; see the log above")
        self._supervisor = threading.Thread(target=self._supervise, name="http-processes-supervisor", daemon=True)
        self._supervisor.start()
        return self

    def _spawn(self) -> subprocess.Popen:
        """One child, its plan written to its stdin (which stays open: its lifeline)."""
        shared = () if self.plan.reuse_port else (self._socket.fileno(),)
        payload = pickle.dumps((self.plan, shared[0] if shared else self._socket.getsockname()[:2]))
        child = subprocess.Popen(
            [sys.executable, "-m", "dagster_project.serving.http_child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=shared,
            env=os.environ | {MULTIPROC_ENV: self.plan.metrics_dir},  # read when prometheus_client is imported
        )
        child.stdin.write(len(payload).to_bytes(8, "big") + payload)
        child.stdin.flush()
        return child

    def _supervise(self) -> None:
        """Replace a child that died (a crash, the OOM killer, a kill): its port share would otherwise be lost
        for good. Restarts are spaced by RESTART_BACKOFF_S so a child that cannot start does not spin."""
        while not self._halt.wait(SUPERVISE_EVERY_S):
            for i, child in enumerate(list(self.children)):
                code = child.poll()
                if code is None or self._halt.is_set():
                    continue
                log.warning(
                    "%s: HTTP process %d exited (code %s); starting another", self.plan.spec.name, child.pid, code
                )
                replacement = self._spawn()
                problem = _started(replacement)
                if self._halt.is_set():
                    _end(replacement, self.plan.spec.name)
                    return
                self.children[i] = replacement
                self.restarts += 1
                if problem:
                    log.error("%s: %s", self.plan.spec.name, problem)
                    self._halt.wait(RESTART_BACKOFF_S)

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self.children]

    def stop(self) -> None:
        self._halt.set()
        if self._supervisor is not None:
            self._supervisor.join(START_TIMEOUT_S + 5)
        for child in self.children:  # every lifeline first, so the children stop together
            _close_lifeline(child)
        for child in self.children:
            _wait_ended(child, self.plan.spec.name)
        self.children = []
        if self._snapshots is not None:
            self._snapshots.join(5)
        self._socket.close()


def _end(child: subprocess.Popen, stream: str) -> None:
    """Close the child's lifeline and wait for it; kill it past STOP_TIMEOUT_S."""
    _close_lifeline(child)
    _wait_ended(child, stream)


def _close_lifeline(child: subprocess.Popen) -> None:
    """EOF on the child's stdin: it stops its server and exits."""
    try:
        child.stdin.close()
    except OSError:
        pass


def _wait_ended(child: subprocess.Popen, stream: str) -> None:
    """Wait for a child whose lifeline is closed; kill it past STOP_TIMEOUT_S."""
    try:
        child.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.warning("%s: HTTP process %d did not stop; killing it", stream, child.pid)
        child.kill()
        child.wait()


def _started(child: subprocess.Popen) -> str | None:
    """None once the child says it accepts, else what went wrong."""
    line = _read_line(child, START_TIMEOUT_S)
    if line == b"ready":
        return None
    return f"an HTTP process (pid {child.pid}) did not start: {line.decode(errors='replace') or 'it exited'}"


def _read_line(child: subprocess.Popen, timeout_s: float) -> bytes:
    """The child's first stdout line, or b"" if it exits or stays silent."""
    found: list[bytes] = []
    reader = threading.Thread(target=lambda: found.append(child.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return found[0].strip() if found else b""


def serve_child() -> None:
    """A child's main: read the plan, serve until stdin closes."""
    from dagster_project.serving.champion import ChampionWatcher
    from dagster_project.serving.health import ScorerHealth
    from dagster_project.serving.http import ScorerHTTPServer, address_family
    from dagster_project.serving.metrics import ScorerMetrics

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    stdin = sys.stdin.buffer
    size = int.from_bytes(stdin.read(8), "big")
    plan, where = pickle.loads(stdin.read(size))  # noqa: S301 (from our own parent, through a private pipe)
    ready = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # later prints go to the log, never block the pipe
    if plan.reuse_port:  # our own listening socket on the port the main process holds
        sock = socket.create_server(tuple(where), family=address_family(where[0]), backlog=2048, reuse_port=True)
    else:  # the main process's listening socket
        sock = socket.socket(fileno=where)
    metrics = ScorerMetrics(plan.spec.name)
    watcher = ChampionWatcher(plan.registry, plan.spec, metrics, interval_s=plan.watch_interval_s)
    shared = SharedKafkaState(plan.state_file)
    health = ScorerHealth(plan.spec.name, watcher, shared, delivery=shared.delivery)
    watcher.start()
    server = ScorerHTTPServer(("", 0), plan.spec, watcher, metrics, health=health, sock=sock, **plan.server_options)
    server.start()
    ready.write(b"ready\n")
    ready.close()
    try:
        while stdin.read(65536):  # only EOF matters: the main process stopped us or died
            pass
    finally:
        server.stop()
        watcher.stop()
