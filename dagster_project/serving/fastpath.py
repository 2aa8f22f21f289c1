"""Raw ASGI in front of the Starlette app for the two hot routes: `POST /predict` and `POST /v2/models/<stream>/infer`.

Starlette's request and response objects, its routing, exception middlewares and the counting
middleware cost more per request than checking and scoring a one-row body, so these two routes skip
them. They keep every rule of the Starlette routes by running the same code: the token check
(`BearerToken.check_header`), the body limits and deadline (`limits.receive_body`), the parse
(`ScoringContext.answer_json`), the answers (`api.predict_answer`, `kserve.infer_answer`) and their
errors, and they count `streamfit_http_requests_total` under the route's template as the middleware
does. Every other request (other paths and methods, the versioned infer route) goes to the Starlette
app unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from dagster_project.serving.api import (
    CLIENT_GONE_STATUS,
    ScoringContext,
    error_response,
    internal_error_response,
    predict_answer,
)
from dagster_project.serving.kserve import infer_answer, infer_path
from dagster_project.serving.limits import ClientGone, RequestError, receive_body

log = logging.getLogger(__name__)

Answer = Callable[[ScoringContext, Any], Response]


class FastInference:
    """ASGI app: the hot inference routes answered directly, everything else passed to `app`."""

    def __init__(self, app: ASGIApp, ctx: ScoringContext) -> None:
        self.app = app
        self.ctx = ctx
        # path -> (the route's template, as the counting middleware names it; the answer to the parsed body)
        self.routes: dict[str, tuple[str, Answer]] = {
            "/predict": ("/predict", predict_answer),
            infer_path(ctx.spec): ("/v2/models/{name}/infer", infer_answer),
        }
        self._counters: dict[tuple[str, int], Counter] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            route = self.routes.get(scope["path"])
            if route is not None:
                await self._serve(route, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _serve(self, route: tuple[str, Answer], scope: Scope, receive: Receive, send: Send) -> None:
        template, answer = route
        ctx = self.ctx
        failure: Exception | None = None
        try:
            authorization, content_length = _request_headers(scope)
            ctx.token.check_header(authorization)
            raw = await receive_body(receive, content_length, ctx.limits)
            response = await ctx.answer_json(raw, lambda body: answer(ctx, body))
        except RequestError as exc:
            if exc.status == 408:
                log.info("%s %s from %s: %s", scope["method"], scope["path"], _client(scope), exc)
            response = error_response(exc)
        except ClientGone as exc:
            log.debug("%s %s from %s: %s", scope["method"], scope["path"], _client(scope), exc)
            response = Response(status_code=CLIENT_GONE_STATUS)
        except Exception as exc:  # a bug: answered as JSON, then raised for uvicorn to log (as Starlette does)
            failure = exc
            response = internal_error_response(exc)
        self._count(template, response.status_code)
        await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})
        if failure is not None:
            raise failure

    def _count(self, template: str, status: int) -> None:
        counter = self._counters.get((template, status))
        if counter is None:
            counter = self.ctx.metrics.http_requests.labels(self.ctx.spec.name, template, str(status))
            self._counters[(template, status)] = counter
        counter.inc()


def _request_headers(scope: Scope) -> tuple[str, str | None]:
    """The first `Authorization` and `Content-Length` headers, as Starlette's `headers.get` finds them."""
    authorization: str | None = None
    content_length: str | None = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            if content_length is None:
                content_length = value.decode("latin-1")
        elif name == b"authorization" and authorization is None:
            authorization = value.decode("latin-1")
    return authorization or "", content_length


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "?"
