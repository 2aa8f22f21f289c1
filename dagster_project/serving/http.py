"""The scorer's HTTP API on the standard library's ThreadingHTTPServer (no extra dependency).

- `POST /predict` with `{"rows": [{feature: value, ...}, ...]}` returns
  `{"model_version": "v3", "predictions": [{"prediction": ..., "probabilities": [...] | null}, ...]}`,
  scored by one snapshot of the champion (a swap never splits or fails a request).
  Errors are JSON `{"error": ...}`: 400 invalid JSON or Content-Length, 401 missing/wrong bearer
  token, 411 no Content-Length, 413 body over `max_body_bytes` (1 MiB) or more than `max_rows`
  (10,000) rows, 422 a body that is not `{"rows": [...]}` or rows with missing/unknown features or
  wrong types (each named, per row), 503 no champion loaded yet.
- `GET /healthz`: the detailed state (live, ready and why not, model, fallback, Kafka link); 200 while a
  model is loaded (HTTP predictions work), 503 before.
- `GET /livez`: 200 while the process answers HTTP. `GET /readyz`: 200 when a model is loaded and the
  Kafka consumer is in its group and heard from the broker recently; 503 with the reasons otherwise.
- `GET /metrics`: the scorer's Prometheus registry in the text format.

With a token configured, /predict needs `Authorization: Bearer <token>` (compared in constant time);
the probes and /metrics stay open for probes and scrapers.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import orjson
from prometheus_client import CONTENT_TYPE_LATEST

from dagster_project.ingest.events import (
    InvalidEvent,
    coerce_feature,  # the event contract's exact type rules
)
from dagster_project.serving.champion import ChampionWatcher
from dagster_project.serving.health import ScorerHealth
from dagster_project.serving.metrics import ScorerMetrics
from dagster_project.spec import StreamSpec

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_ROWS = 10_000
MAX_ROW_ERRORS = 20  # per response: enough to fix a client, bounded for a 10,000-row request


class RequestError(Exception):
    """An HTTP error answer: status code, message and optional extra JSON fields."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
        self.body = {"error": message, **extra}


def validate_rows(spec: StreamSpec, body: Any, max_rows: int) -> np.ndarray:
    """The request's rows as a float32 matrix in the spec's feature order, or a RequestError."""
    if not isinstance(body, dict) or "rows" not in body:
        raise RequestError(422, 'the body must be a JSON object {"rows": [{feature: value, ...}, ...]}')
    rows = body["rows"]
    if not isinstance(rows, list):
        raise RequestError(422, f"'rows' must be a list of objects, got {type(rows).__name__}")
    if not rows:
        raise RequestError(422, "'rows' is empty: send at least one row")
    if len(rows) > max_rows:
        raise RequestError(413, f"too many rows: {len(rows)} > {max_rows}; split the request")
    features = spec.features
    known = set(spec.feature_names)
    values = np.empty((len(rows), len(features)), dtype=np.float32)
    problems: list[dict[str, Any]] = []
    missing_all: set[str] = set()
    unknown_all: set[str] = set()
    bad_rows = 0
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            problem: dict[str, Any] = {"row": i, "errors": [f"row must be an object, got {type(row).__name__}"]}
        else:
            missing = [f.name for f in features if f.name not in row]
            unknown = sorted(set(row) - known)
            errors = []
            for j, feature in enumerate(features):
                if feature.name in row:
                    try:
                        values[i, j] = coerce_feature(feature, row[feature.name])
                    except InvalidEvent as exc:
                        errors.append(str(exc))
            if not (missing or unknown or errors):
                continue
            missing_all.update(missing)
            unknown_all.update(unknown)
            problem = {"row": i}
            if missing:
                problem["missing"] = missing
            if unknown:
                problem["unknown"] = unknown
            if errors:
                problem["errors"] = errors
        bad_rows += 1
        if len(problems) < MAX_ROW_ERRORS:
            problems.append(problem)
    if bad_rows:
        parts = []
        if missing_all:
            parts.append(f"missing feature(s) {sorted(missing_all)}")
        if unknown_all:
            parts.append(f"unknown feature(s) {sorted(unknown_all)}")
        if len(parts) < bad_rows and any("errors" in p for p in problems):
            parts.append("invalid values")
        raise RequestError(
            422,
            f"{bad_rows} of {len(rows)} rows are invalid: {'; '.join(parts)}; expected features {spec.feature_names}",
            missing=sorted(missing_all),
            unknown=sorted(unknown_all),
            rows=problems,
        )
    return values


class ScorerHTTPServer(ThreadingHTTPServer):
    """The HTTP API of one stream's scorer; `start()` serves in a daemon thread, `stop()` ends it."""

    daemon_threads = True
    allow_reuse_address = True

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
    ) -> None:
        super().__init__(address, _Handler)
        self.spec = spec
        self.watcher = watcher
        self.metrics = metrics
        self.health = health or ScorerHealth(spec.name, watcher)
        self.token = token.encode() if token else None
        self.max_body_bytes = max_body_bytes
        self.max_rows = max_rows
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ScorerHTTPServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self.serve_forever, kwargs={"poll_interval": 0.1}, name="scorer-http", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()

    def authorized(self, header: str | None) -> bool:
        if self.token is None:
            return True
        scheme, _, presented = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(presented.strip().encode(), self.token)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse one connection
    disable_nagle_algorithm = True  # headers and body are two writes: without this, +40 ms (delayed ACK)
    server: ScorerHTTPServer
    timeout = 30  # a client that stops sending mid-body does not hold a thread forever
    server_version = "streamfit-scorer"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - " + format, self.address_string(), *args)

    def _route(self) -> str:
        return self.path.split("?", 1)[0]

    def _send(self, status: int, body: bytes, content_type: str = "application/json", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        route = self._route()
        path = route if route in ("/predict", "/healthz", "/livez", "/readyz", "/metrics") else "other"
        self.server.metrics.http_requests.labels(self.server.spec.name, path, str(status)).inc()

    def _json(self, status: int, payload: Any, **headers: str) -> None:
        self._send(status, orjson.dumps(payload), **headers)

    def do_GET(self) -> None:
        route = self._route()
        if route == "/healthz":
            report = self.server.health.report()
            self._json(200 if report.detail["model_version"] else 503, report.detail)
        elif route == "/livez":
            self._json(200, {"live": True})
        elif route == "/readyz":
            report = self.server.health.report()
            if report.ready:
                self._json(200, {"ready": True})
            else:
                self._json(503, {"ready": False, "error": "; ".join(report.reasons), "reasons": report.reasons})
        elif route == "/metrics":
            self._send(200, self.server.metrics.exposition(), content_type=CONTENT_TYPE_LATEST)
        elif route == "/predict":
            self._json(405, {"error": "use POST for /predict"}, Allow="POST")
        else:
            self._json(404, {"error": f"no such path {route}; try POST /predict, GET /healthz, GET /metrics"})

    def do_POST(self) -> None:
        route = self._route()
        if route != "/predict":
            if route in ("/healthz", "/livez", "/readyz", "/metrics"):
                self._json(405, {"error": f"use GET for {route}"}, Allow="GET")
            else:
                self._json(404, {"error": f"no such path {route}; try POST /predict"})
            return
        try:
            self._predict()
        except RequestError as exc:
            self._json(exc.status, exc.body, **exc.headers)

    def _predict(self) -> None:
        server = self.server
        if not server.authorized(self.headers.get("Authorization")):
            self.close_connection = True  # the body is left unread
            raise RequestError(
                401,
                "missing or wrong bearer token (Authorization: Bearer <token>)",
                headers={"WWW_Authenticate": 'Bearer realm="streamfit"'},
            )
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            self.close_connection = True
            raise RequestError(411, "Content-Length is required (chunked bodies are not accepted)")
        try:
            length = int(length_header)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise RequestError(400, f"invalid Content-Length {length_header!r}") from None
        if length > server.max_body_bytes:
            self.close_connection = True
            raise RequestError(413, f"body of {length} bytes exceeds the limit of {server.max_body_bytes} bytes")
        raw = self.rfile.read(length)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise RequestError(400, f"invalid JSON: {exc}") from None
        X = validate_rows(server.spec, body, server.max_rows)
        served = server.watcher.current  # one snapshot for the whole request
        if served is None:
            raise RequestError(503, "no champion model loaded yet; retry later", headers={"Retry_After": "1"})
        started = time.perf_counter()
        predictions, scores = served.score(X)
        stream, version = server.spec.name, served.version
        server.metrics.inference_latency.labels(stream, version, "http").observe(time.perf_counter() - started)
        server.metrics.predictions.labels(stream, version, "http").inc(len(predictions))
        if scores is None:
            out = [{"prediction": p, "probabilities": None} for p in predictions]
        else:
            out = [{"prediction": p, "probabilities": s} for p, s in zip(predictions, scores, strict=True)]
        self._json(200, {"model_version": version, "predictions": out})
