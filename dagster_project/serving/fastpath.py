"""Raw ASGI in front of the Starlette app for the two hot routes: `POST /predict` and `POST /v2/models/<stream>/infer`.

Starlette's request and response objects, its routing, exception middlewares and the counting
middleware cost more per request than checking and scoring a one-row body, so these two routes skip
them. They keep every rule of the Starlette routes by running the same code: the token check
(`BearerToken.check_header`), the body limits and deadline (`limits.receive_body`), the parse
(`api.parse_json`, in a worker thread past `api.INLINE_BODY_BYTES`), the answers
(`api.predict_answer`, `kserve.infer_answer`) and their errors, and they count
`streamfit_http_requests_total` under the route's template as the middleware does. Every other
request (other paths and methods, the versioned infer route) goes to the Starlette app unchanged.

Bodies small enough to parse on the loop (`api.INLINE_BODY_BYTES`) are parsed and checked by the
route's `Prepare` function and scored through `coalesce.Coalescer`, with every other request ready in
the same loop iteration, in one onnxruntime call; larger ones are answered in a worker thread as
by the Starlette routes. `coalesce=False` scores each request on its own (the benchmark's reference).
On both ways a plain `/predict` body is decoded straight into its checked matrix
(`typed_body.decode_rows`, the same matrix `validate_rows` gives); any other falls back to the
Starlette route's parse and check. A classifier's `/predict` answer is encoded straight from the
output arrays (`predict_json`), body deadlines share one timer per loop (`limits.BodyDeadlines`),
and the request counter is updated once per coalesced flush.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
from prometheus_client import Counter as PromCounter
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from dagster_project.serving.api import (
    CLIENT_GONE_STATUS,
    INLINE_BODY_BYTES,
    ScoringContext,
    error_response,
    internal_error_response,
    parse_json,
    predict_answer,
    predict_payload,
    predict_response,
)
from dagster_project.serving.coalesce import Coalescer, Scored
from dagster_project.serving.kserve import infer_answer, infer_path, infer_response, parse_infer_request
from dagster_project.serving.limits import BodyDeadlines, ClientGone, RequestError, loop_deadlines, receive_body
from dagster_project.serving.rows import validate_rows
from dagster_project.serving.typed_body import decode_rows

log = logging.getLogger(__name__)


# A body's bytes -> the route's answer, scored on its own (large bodies, or coalescing off)
Answer = Callable[[ScoringContext, bytes], Response]


class JsonOk:
    """A 200 JSON answer with exactly the headers `api.json_response` gives it, without building a
    Starlette `Response` (its header handling is a tenth of a coalesced 1-row request)."""

    __slots__ = ("body", "raw_headers")
    status_code = 200

    def __init__(self, payload: Any = None, body: bytes | None = None) -> None:
        self.body = orjson.dumps(payload) if body is None else body  # `body`: already encoded
        self.raw_headers = [(b"content-length", str(len(self.body)).encode()), _JSON_TYPE]


_JSON_TYPE = (b"content-type", b"application/json")
Answered = Response | JsonOk
# A body's bytes -> its checked rows, the raw rows when derived features need them, and the answer once scored
Prepare = Callable[[ScoringContext, bytes], tuple[np.ndarray, list[Any] | None, Callable[[Scored], Answered]]]


def prepare_predict(
    ctx: ScoringContext, raw: bytes
) -> tuple[np.ndarray, list[Any] | None, Callable[[Scored], Answered]]:
    """`/predict` as `predict_answer` does it, split around the scoring.

    The common body is decoded straight into its matrix (`typed_body`); any other, and every body
    when derived features need the rows' dicts, is parsed and checked as by the Starlette route.
    """
    X = decode_rows(ctx.spec, raw, ctx.limits.max_rows) if ctx.features is None else None
    rows = None
    if X is None:
        body = parse_json(raw)
        X = validate_rows(ctx.spec, body, ctx.limits.max_rows)
        rows = body["rows"] if ctx.features is not None else None

    def finish(scored: Scored) -> Answered:
        encoded = predict_json(scored)
        if encoded is not None:
            return JsonOk(body=encoded)
        return JsonOk(predict_payload(scored.served.version, *scored.lists()))

    return X, rows, finish


_CLASSES: tuple[Any, list[bytes]] = (None, [])  # the last served model's class values, JSON-encoded


def predict_json(scored: Scored) -> bytes | None:
    """A classifier's `/predict` answer encoded straight from its output arrays, or None (a regressor).

    The same bytes as `orjson.dumps(api.predict_payload(...))` (the equivalence tests compare them):
    orjson writes the float64 score matrix in one call with the digits it gives the same Python
    floats, and the rows are joined between fixed fragments. No list or dict per row: 1.4 against
    3.5 us at 1 row, 28 against 32 us at 100 rows (in-process).
    """
    global _CLASSES
    served, scores = scored.served, scored.scores
    if served.classes is None or scores is None or scores.ndim != 2 or not scores.shape[1]:
        return None
    owner, classes = _CLASSES
    if owner is not served:
        classes = [orjson.dumps(c) for c in served.classes]
        _CLASSES = (served, classes)
    matrix = orjson.dumps(scores.astype(np.float64), option=orjson.OPT_SERIALIZE_NUMPY)  # [[a,b],[c,d]]
    rows = matrix[2:-2].split(b"],[")
    labels = scored.labels.astype(np.int64).tolist()
    body = b"},{".join(
        [b'"prediction":%b,"probabilities":[%b]' % (classes[i], p) for i, p in zip(labels, rows, strict=True)]
    )
    return b'{"model_version":%b,"predictions":[{%b}]}' % (orjson.dumps(served.version), body)


def predict_from_bytes(ctx: ScoringContext, raw: bytes) -> Response:
    """`/predict` scored on its own: `api.predict_answer`, with the plain body decoded as `prepare_predict` does."""
    X = decode_rows(ctx.spec, raw, ctx.limits.max_rows) if ctx.features is None else None
    if X is None:
        return predict_answer(ctx, parse_json(raw))
    served = ctx.served()
    return predict_response(served.version, *ctx.score(served, X))


def infer_from_bytes(ctx: ScoringContext, raw: bytes) -> Response:
    return infer_answer(ctx, parse_json(raw))


def prepare_infer(ctx: ScoringContext, raw: bytes) -> tuple[np.ndarray, list[Any] | None, Callable[[Scored], Answered]]:
    """The unversioned V2 infer route as `kserve.infer_answer` does it, split around the scoring."""
    body = parse_json(raw)
    X, wanted = parse_infer_request(ctx.spec, body, ctx.limits.max_rows)

    def finish(scored: Scored) -> Answered:
        predictions, scores = scored.lists()
        answer = infer_response(ctx.spec, scored.served.version, predictions, scores, wanted, body.get("id"))
        return JsonOk(answer)

    return X, None, finish


class FastInference:
    """ASGI app: the hot inference routes answered directly, everything else passed to `app`."""

    def __init__(self, app: ASGIApp, ctx: ScoringContext, coalesce: bool = True) -> None:
        self.app = app
        self.ctx = ctx
        self.coalescer = Coalescer(ctx, self._count_answers) if coalesce else None
        # path -> (the route's template, as the counting middleware names it; the answer to the parsed
        # body; the same split around the scoring, for coalesced requests)
        self.routes: dict[str, tuple[str, Answer, Prepare]] = {
            "/predict": ("/predict", predict_from_bytes, prepare_predict),
            infer_path(ctx.spec): ("/v2/models/{name}/infer", infer_from_bytes, prepare_infer),
        }
        self._counters: dict[tuple[str, int], PromCounter] = {}
        self._loop: tuple[int, asyncio.AbstractEventLoop | None, BodyDeadlines | None] = (0, None, None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            route = self.routes.get(scope["path"])
            if route is not None:
                await self._serve(route, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _serve(self, route: tuple[str, Answer, Prepare], scope: Scope, receive: Receive, send: Send) -> None:
        template, answer, prepare = route
        ctx = self.ctx
        failure: Exception | None = None
        counted = False  # coalesced answers are counted by their flush, all at once
        response: Answered
        try:
            authorization, content_length = _request_headers(scope)
            ctx.token.check_header(authorization)
            loop, deadlines = self._running_loop()
            raw = await receive_body(receive, content_length, ctx.limits, loop, deadlines)
            if self.coalescer is not None and len(raw) <= INLINE_BODY_BYTES:
                X, rows, finish = prepare(ctx, raw)
                response = await self.coalescer.answer(X, rows, finish, template, loop)
                counted = True
            else:
                response = (
                    answer(ctx, raw) if len(raw) <= INLINE_BODY_BYTES else await run_in_threadpool(answer, ctx, raw)
                )
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
        if not counted:
            self._count(template, response.status_code)
        await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})
        if failure is not None:
            raise failure

    def _running_loop(self) -> tuple[asyncio.AbstractEventLoop, BodyDeadlines]:
        """The loop serving this thread and its body deadlines, looked up once: on Python 3.11 each lookup
        of the loop is a `getpid` syscall.

        Kept per thread, and looked up again once closed (a server that stops and starts runs a new loop).
        """
        thread, loop, deadlines = self._loop
        if loop is None or deadlines is None or thread != threading.get_ident() or loop.is_closed():
            loop = asyncio.get_running_loop()
            deadlines = loop_deadlines(loop, self.ctx.limits)
            self._loop = (threading.get_ident(), loop, deadlines)
        return loop, deadlines

    def _count(self, template: str, status: int, n: int = 1) -> None:
        counter = self._counters.get((template, status))
        if counter is None:
            counter = self.ctx.metrics.http_requests.labels(self.ctx.spec.name, template, str(status))
            self._counters[(template, status)] = counter
        counter.inc(n)

    def _count_answers(self, answers: list[tuple[str, Answered]]) -> None:
        """A flush's answers, one counter update per route and status: with several HTTP processes
        every update is a write to a shared file (prometheus_client's multiprocess mode)."""
        if len(answers) == 1:
            template, answer = answers[0]
            self._count(template, answer.status_code)
            return
        for (template, status), n in Counter((t, a.status_code) for t, a in answers).items():
            self._count(template, status, n)


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
