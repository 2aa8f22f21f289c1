"""The scorer's HTTP API as a Starlette app: `/predict`, the probes, `/metrics`, and the V2 routes.

- `POST /predict` with `{"rows": [{feature: value, ...}, ...]}` returns
  `{"model_version": "v3", "predictions": [{"prediction": ..., "probabilities": [...] | null}, ...]}`,
  scored by one snapshot of the champion (a swap never splits or fails a request).
  Errors are JSON `{"error": ...}`: 400 invalid JSON or Content-Length, 401 missing/wrong bearer
  token, 408 body not received within the deadline, 411 no Content-Length, 413 body over
  `max_body_bytes` or more than `max_rows` rows, 422 a body that is not `{"rows": [...]}` or rows
  with missing/unknown features or wrong types (each named, per row), 503 no model loaded yet.
- `GET /healthz`: the detailed state; 200 while a model is loaded (HTTP predictions work), else 503.
- `GET /livez`: 200 while the process answers. `GET /readyz`: 200 when a model is loaded and the
  Kafka consumer is in its group, heard from the broker recently and its loop polls (see `health`);
  503 with the reasons otherwise.
- `GET /metrics`: the scorer's Prometheus registry in the text format.
- `/v2/...`: the Open Inference Protocol (see `kserve`).

With a token configured, inference (`POST /predict`, `POST /v2/models/<stream>/infer`) needs
`Authorization: Bearer <token>`; probes, metadata and metrics stay open for orchestrators and scrapers.
Handlers run on uvicorn's event loop; parsing and scoring of large bodies move to a worker thread
so one 10,000-row request does not stall the probes. In the scorer, `fastpath.FastInference` answers
the two inference routes before Starlette with this module's functions (`predict_answer`,
`ScoringContext.answer_json`), so both paths give the same answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dagster_project.ingest.categories import unseen_code, unseen_counts
from dagster_project.ingest.events import not_a_json_number
from dagster_project.serving.champion import ChampionWatcher, ServedModel
from dagster_project.serving.features import ServingFeatures
from dagster_project.serving.health import ScorerHealth
from dagster_project.serving.limits import BearerToken, ClientGone, HttpLimits, RequestError, read_body
from dagster_project.serving.metrics import ScorerMetrics
from dagster_project.serving.rows import validate_rows
from dagster_project.serving.unscored import refuse_unscored
from dagster_project.spec import StreamSpec

log = logging.getLogger(__name__)

INLINE_BODY_BYTES = 16 * 1024  # smaller bodies parse and score in well under a millisecond: no thread hop
CLIENT_GONE_STATUS = 499  # never sent (nobody is listening); recorded in the request metrics


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, headers=headers, media_type="application/json")


def error_response(exc: RequestError) -> Response:
    return json_response(exc.status, exc.body, exc.headers)


class ScoringContext:
    """What every handler needs: the spec, the hot-swapped model, metrics, health, token and limits."""

    def __init__(
        self,
        spec: StreamSpec,
        watcher: ChampionWatcher,
        metrics: ScorerMetrics,
        health: ScorerHealth,
        token: BearerToken,
        limits: HttpLimits,
        features: ServingFeatures | None = None,
    ) -> None:
        self.features = features  # the scorer's live derived-feature state (None without derived features)
        self.spec = spec
        self.watcher = watcher
        self.metrics = metrics
        self.health = health
        self.token = token
        self.limits = limits
        # version -> its (latency histogram, predictions counter) children: `labels()` costs as much as a row's check
        self._per_version: dict[str, tuple[Any, Any]] = {}
        self._counts_unseen = any(unseen_code(f) is not None for f in spec.features if f.type == "category")

    def served(self) -> ServedModel:
        """The model for this request (one snapshot for all of it), or 503."""
        served = self.watcher.current
        if served is None:
            degraded = self.watcher.degraded
            message = f"no model loaded: {degraded}" if degraded else "no champion model loaded yet; retry later"
            raise RequestError(503, message, headers={"Retry-After": "1"})
        return served

    def score(self, served: ServedModel, X: np.ndarray) -> tuple[list[Any], list[list[float]] | None]:
        """One request's predictions and scores; 422 if a row gets no finite prediction (a null input)."""
        labels, scores = self.outputs(served, X)
        refuse_unscored(self.spec, X, labels, scores)
        return served.as_lists(labels, scores)

    def outputs(self, served: ServedModel, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """`served.outputs(X)`, counted in the inference metrics (one call, len(X) predictions)."""
        started = time.perf_counter()
        labels, scores = served.outputs(X)
        latency, counter = self._version_metrics(served.version)
        latency.observe(time.perf_counter() - started)
        counter.inc(len(X))
        if self._counts_unseen:
            self.metrics.count_unseen(unseen_counts(self.spec, X), "http")
        return labels, scores

    def _version_metrics(self, version: str) -> tuple[Any, Any]:
        found = self._per_version.get(version)
        if found is None:
            stream, metrics = self.spec.name, self.metrics
            found = (
                metrics.inference_latency.labels(stream, version, "http"),
                metrics.predictions.labels(stream, version, "http"),
            )
            self._per_version[version] = found
        return found

    async def read_json(self, request: Request, work: Callable[[Any], Response]) -> Response:
        """Read the body within the limits, parse it and hand it to `work` (in a thread when large)."""
        return await self.answer_json(await read_body(request, self.limits), work)

    async def answer_json(self, raw: bytes, work: Callable[[Any], Response]) -> Response:
        """Parse a body read within the limits and hand it to `work` (in a thread when large)."""

        def run() -> Response:
            return work(parse_json(raw))

        return run() if len(raw) <= INLINE_BODY_BYTES else await run_in_threadpool(run)


def parse_json(raw: bytes) -> Any:
    """A request body as JSON, or 400 naming where it is broken."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, f"invalid JSON: {not_a_json_number(raw, exc) or exc}") from None


def predict_answer(ctx: ScoringContext, body: Any) -> Response:
    """`POST /predict` once its body is parsed: the rows checked, scored by one snapshot of the champion."""
    X = validate_rows(ctx.spec, body, ctx.limits.max_rows)
    served = ctx.served()
    if ctx.features is not None:  # derived features from the live state, left unchanged
        X = ctx.features.append_to(served.version, body["rows"], X)
    predictions, scores = ctx.score(served, X)
    return predict_response(served.version, predictions, scores)


def predict_response(version: str, predictions: list[Any], scores: list[list[float]] | None) -> Response:
    """The `/predict` answer for rows scored by `version`."""
    return json_response(200, predict_payload(version, predictions, scores))


def predict_payload(version: str, predictions: list[Any], scores: list[list[float]] | None) -> dict[str, Any]:
    if scores is None:
        out = [{"prediction": p, "probabilities": None} for p in predictions]
    else:
        out = [{"prediction": p, "probabilities": s} for p, s in zip(predictions, scores, strict=True)]
    return {"model_version": version, "predictions": out}


Handler = Callable[[Request], Awaitable[Response]]


def answering_errors(handler: Handler) -> Handler:
    """Turn RequestError into its JSON answer and a vanished client into one log line, never a traceback."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except RequestError as exc:
            if exc.status == 408:
                log.info("%s %s from %s: %s", request.method, request.url.path, _client(request), exc)
            return error_response(exc)
        except ClientGone as exc:
            log.debug("%s %s from %s: %s", request.method, request.url.path, _client(request), exc)
            return Response(status_code=CLIENT_GONE_STATUS)

    return wrapped


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "?"


def core_routes(ctx: ScoringContext) -> list[Route]:
    """`/predict`, `/healthz`, `/livez`, `/readyz`, `/metrics`."""

    def work(body: Any) -> Response:
        return predict_answer(ctx, body)

    @answering_errors
    async def predict(request: Request) -> Response:
        ctx.token.check(request)
        return await ctx.read_json(request, work)

    async def healthz(request: Request) -> Response:
        report = ctx.health.report()
        return json_response(200 if report.detail["model_version"] else 503, report.detail)

    async def livez(request: Request) -> Response:
        return json_response(200, {"live": True})

    async def readyz(request: Request) -> Response:
        report = ctx.health.report()
        if report.ready:
            return json_response(200, {"ready": True})
        return json_response(503, {"ready": False, "error": "; ".join(report.reasons), "reasons": report.reasons})

    async def metrics(request: Request) -> Response:
        # Rendered off the event loop: series by version accumulate (4.5 s to render at 2,000 versions),
        # and /predict must not wait for a scrape.
        return Response(await run_in_threadpool(ctx.metrics.exposition), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/predict", predict, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/livez", livez, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    """404 and 405 from the router, as JSON like every other error."""
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if exc.status_code == 405:
        allowed = [m.strip() for m in (exc.headers or {}).get("Allow", "").split(",") if m.strip() != "HEAD"]
        message = f"use {' or '.join(allowed) or 'HEAD'} for {path}"
    elif exc.status_code == 404:
        message = f"no such path {path}; try POST /predict, GET /healthz, GET /readyz, GET /metrics or /v2"
    else:
        message = exc.detail
    return json_response(exc.status_code, {"error": message}, dict(exc.headers or {}))


def internal_error_response(exc: Exception) -> Response:
    """A bug, not the client's fault: JSON like every other error (uvicorn still logs the traceback)."""
    return json_response(500, {"error": f"internal error ({type(exc).__name__}); see the scorer's log"})


async def _internal_error(request: Request, exc: Exception) -> Response:
    return internal_error_response(exc)


class CountRequests:
    """ASGI middleware: `streamfit_http_requests_total{path, code}` with the route's template as path."""

    def __init__(self, app: ASGIApp, metrics: ScorerMetrics, stream: str) -> None:
        self.app = app
        self.metrics = metrics
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                path = getattr(route, "path", None) or "other"  # unmatched paths share one series
                self.metrics.http_requests.labels(self.stream, path, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


def build_app(ctx: ScoringContext, extra_routes: list[Route] | None = None) -> ASGIApp:
    app = Starlette(
        routes=core_routes(ctx) + list(extra_routes or []),
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    return CountRequests(app, ctx.metrics, ctx.spec.name)
