"""Helpers for the serving tests: real trained versions in a registry, events on the real broker."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson

from dagster_project.dev.datasets import synthetic_events
from dagster_project.dev.producer import produce
from dagster_project.ingest.events import make_event
from dagster_project.kafka.io import probe_partitions
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.learning.estimators import build_model, partial_fit
from dagster_project.onnx.export import OnnxModel, export_onnx
from dagster_project.registry.contract import contract_of
from dagster_project.registry.store import FilesystemRegistry, Version
from dagster_project.serving import ScoringService
from dagster_project.spec import StreamSpec
from tests.helpers import read_topic  # noqa: F401  (re-exported for the serving tests)


def synthetic_rows(rows: int, start: int = 0, seed: int = 7, drifted: bool = False) -> list[tuple[str, dict, int]]:
    """(event id, features, label index) for synthetic rows [start, start + rows)."""
    change_at = 0 if drifted else 10**9
    events = list(synthetic_events(rows=start + rows, change_at=change_at, seed=seed))[start:]
    return [(e.event_id, e.features, int(e.label)) for e in events]


def feature_matrix(spec: StreamSpec, features: list[dict]) -> np.ndarray:
    return np.array([[f[name] for name in spec.feature_names] for f in features], dtype=np.float64)


def train_version(
    registry: FilesystemRegistry,
    spec: StreamSpec,
    rows: int = 400,
    seed: int = 0,
    drifted: bool = False,
    champion: bool = True,
) -> Version:
    """Really train a model on synthetic data (partial_fit), export it to ONNX and register it as the head's child.

    `drifted=True` learns the post-change concept, so its predictions differ visibly from a model of the
    original concept. Regression streams learn a linear target of the same features.
    """
    data = synthetic_rows(rows, seed=seed + 100, drifted=drifted)
    X = feature_matrix(spec, [f for _, f, _ in data])
    model = build_model(spec)
    if spec.task == "classification":
        y = np.array([label for _, _, label in data])
        partial_fit(model, X, y, np.arange(len(spec.label.classes)))
    else:
        partial_fit(model, X, X @ np.arange(1.0, X.shape[1] + 1.0) + 0.5, None)
    onnx_bytes = export_onnx(model, len(spec.features))
    head = registry.head(spec.name)
    meta = {
        "task": spec.task,
        "features": spec.input_names,
        "classes": spec.label.classes,
        "contract": contract_of(spec),
        "offsets": {"topic": spec.events_topic, "learned": {}},
        "rows_learned_total": rows,
    }
    version = registry.register(spec.name, head.name if head else None, onnx_bytes, model, meta)
    if champion:
        registry.set_champion(spec.name, version.name, reason="test")
    return version


def onnx_of(registry: FilesystemRegistry, spec: StreamSpec, version: str) -> OnnxModel:
    return OnnxModel(registry.load_onnx(spec.name, version))


def produce_rows(settings: KafkaSettings, spec: StreamSpec, rows: list[tuple[str, dict, int]]) -> int:
    """Send unlabelled events (what a scorer sees in production) keyed by event id."""
    pairs = ((eid.encode(), make_event(eid, features, None, time.time())) for eid, features, _ in rows)
    return produce(settings, spec, pairs)


def produce_raw(settings: KafkaSettings, spec: StreamSpec, pairs: list[tuple[bytes | None, bytes]]) -> int:
    return produce(settings, spec, pairs)


def topic_size(settings: KafkaSettings, topic: str) -> int:
    return sum(s.high_water for s in probe_partitions(settings, topic, {}))


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


@contextmanager
def running_service(
    spec: StreamSpec, settings: KafkaSettings, registry: FilesystemRegistry, **options: Any
) -> Iterator[ScoringService]:
    """A ScoringService on a free port, its Kafka loop in a thread; stopped (and checked) on exit."""
    options.setdefault("port", 0)
    service = ScoringService(spec, settings, registry, **options)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            service.run()
        except BaseException as exc:  # surfaced in the test, not lost in a thread
            errors.append(exc)

    service.start()
    thread = threading.Thread(target=run, name="scorer-loop", daemon=True)
    thread.start()
    try:
        yield service
    finally:
        service.stop()
        thread.join(timeout=30)
        service.close()
        assert not thread.is_alive(), "the scorer loop did not stop within 30 s"
    if errors:
        raise errors[0]


class Client:
    """A keep-alive HTTP client for one scorer."""

    def __init__(self, url: str, token: str | None = None) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.token = token
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, http.client.HTTPResponse]:
        headers = dict(headers or {})
        if self.token and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {self.token}"
        reused = self.conn.sock is not None
        try:
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            # The server closed the idle keep-alive connection (keep_alive_s) as we sent: like any
            # pooling client, send again once on a new connection.
            self.conn.close()
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
        data = response.read()
        if response.getheader("Connection", "").lower() == "close":
            self.conn.close()  # http.client reconnects on the next request
        content_type = response.getheader("Content-Type", "")
        return response.status, (orjson.loads(data) if "json" in content_type else data.decode()), response

    def predict(self, rows: list[dict], **headers: str) -> tuple[int, Any]:
        status, body, _ = self.request("POST", "/predict", orjson.dumps({"rows": rows}), headers or None)
        return status, body

    def close(self) -> None:
        self.conn.close()


RESEND_PAUSE_S = 1.0  # between a chunk that failed and its resend


class Producer(threading.Thread):
    """Produces synthetic events continuously, in small chunks, until stopped.

    With `retries`, a chunk the broker did not acknowledge is sent again after a pause, as an upstream
    application riding out a broker failover would (each failure kept in `failures`). A chunk that failed
    may still have landed in part, so the topic can then hold an event id twice: tests that retry compare
    predictions with the records in the topic, not with `sent`."""

    def __init__(
        self, settings: KafkaSettings, spec: StreamSpec, rate: float, chunk: int = 50, retries: int = 0
    ) -> None:
        super().__init__(daemon=True)
        self.settings, self.spec, self.rate, self.chunk, self.retries = settings, spec, rate, chunk, retries
        self.sent: list[str] = []
        self.failures: list[str] = []
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        started = time.monotonic()
        try:
            while not self.halt.is_set():
                rows = synthetic_rows(self.chunk, start=len(self.sent), seed=11)
                pairs = [(eid.encode(), make_event(eid, f, None, time.time())) for eid, f, _ in rows]
                self._send(pairs)
                self.sent.extend(eid for eid, _, _ in rows)
                ahead = len(self.sent) / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    self.halt.wait(ahead)
        except BaseException as exc:
            self.error = exc

    def _send(self, pairs: list[tuple[bytes, bytes]]) -> None:
        for attempt in range(self.retries + 1):
            try:
                produce(self.settings, self.spec, pairs)
                return
            except Exception as exc:
                if attempt == self.retries:
                    raise
                self.failures.append(repr(exc))
                time.sleep(RESEND_PAUSE_S)

    def stop(self) -> list[str]:
        self.halt.set()
        self.join(timeout=30)
        assert self.error is None, self.error
        return self.sent


class Hammer(threading.Thread):
    """POSTs one row to /predict as fast as it can; every non-200 or exception is an error."""

    ROW = {"x0": 0.8, "x1": -0.4, "x2": 1.2, "x3": -1.5, "x4": 0.3}

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.halt = threading.Event()
        self.responses: list[tuple[str, list[float]]] = []
        self.latencies: list[float] = []
        self.errors: list[str] = []

    def run(self) -> None:
        client = Client(self.url)
        while not self.halt.is_set():
            started = time.perf_counter()
            try:
                status, body = client.predict([self.ROW])
            except Exception as exc:
                self.errors.append(repr(exc))
                client = Client(self.url)
                continue
            self.latencies.append(time.perf_counter() - started)
            if status != 200:
                self.errors.append(f"{status}: {body}")
            else:
                self.responses.append((body["model_version"], body["predictions"][0]["probabilities"]))
        client.close()

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=10)
