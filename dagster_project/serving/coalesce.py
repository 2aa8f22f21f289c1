"""Score the rows of every inference request ready in one event-loop iteration with one onnxruntime call.

uvicorn serves every connection on one asyncio loop. Under load several keep-alive connections
have a request ready in the same iteration; each is read, parsed and checked by its own task, then
hands its rows here and waits. The first one schedules `flush` with `loop.call_soon`, which runs
once every task already scheduled in this iteration has handed its rows in: there is no timer and
no added wait, so a lone request is scored at once (one extra trip round the loop), and a batch
grows only as fast as requests actually arrive together.

One flush takes the champion once (every answer names the version that scored it, and a hot swap
never splits a flush), adds derived features per request (a request whose rows cannot get them
fails alone), scores the concatenated rows in one call, updates the inference metrics once, and
hands each request its own slice. Limits, parsing and row errors stay per request because they
happen before a request gets here; only 503 (no model) and a scoring bug are shared by the flush.
Through `answer`, the flush also builds each request's answer (`finish`; one that fails fails alone)
and hands them all to one callback before any request resumes: the fast path counts them there,
one counter update per flush (a write to a shared file with several HTTP processes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from dagster_project.serving.api import ScoringContext
from dagster_project.serving.champion import ServedModel
from dagster_project.serving.limits import RequestError
from dagster_project.serving.unscored import refuse_unscored

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Scored:
    """One request's share of a flush: the model that scored it and views of its rows' outputs, in order.

    Views, not lists: the flush makes no Python objects per row, so nothing of one request outlives
    its own answer (objects that wait across a loop iteration get promoted by the garbage collector
    to its oldest generation, whose collections scan the whole heap: ~70 ms pauses at 100 rows).
    """

    served: ServedModel
    labels: np.ndarray
    scores: np.ndarray | None

    def lists(self) -> tuple[list[Any], list[list[float]] | None]:
        """Predictions (class values, or values) and score lists, as `ServedModel.score` gives them."""
        return self.served.as_lists(self.labels, self.scores)


@dataclass(slots=True)
class _Waiting:
    X: np.ndarray
    rows: list[dict[str, Any]] | None  # `/predict` rows when the spec has derived features, else None
    future: asyncio.Future[Any]  # its Scored, or `finish` of it
    finish: Callable[[Scored], Any] | None = None
    tag: str = ""


# Called once per flush with (tag, answer) of every request `finish` answered, before they resume
Answered = Callable[[list[tuple[str, Any]]], None]


class Coalescer:
    """Per server: requests' rows gathered during one loop iteration, scored together at its end."""

    def __init__(self, ctx: ScoringContext, answered: Answered | None = None) -> None:
        self.ctx = ctx
        self.answered = answered
        self._waiting: list[_Waiting] = []
        self.flushes = 0  # flushes that scored rows, and the requests they answered: the batching achieved
        self.requests = 0

    async def score(
        self, X: np.ndarray, rows: list[dict[str, Any]] | None = None, loop: asyncio.AbstractEventLoop | None = None
    ) -> Scored:
        """`X` (checked float32 rows) scored together with whatever else is ready in this iteration.

        `loop`: the running loop, when the caller knows it (see `limits.receive_body`).
        """
        loop = loop or asyncio.get_running_loop()
        return await self._enqueue(_Waiting(X, rows, loop.create_future()), loop)

    async def answer(
        self,
        X: np.ndarray,
        rows: list[dict[str, Any]] | None,
        finish: Callable[[Scored], T],
        tag: str,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> T:
        """`finish` of what `score` gives, called by the flush: the flush hands every answer it made
        to `answered` at once (the HTTP request counter: one update per flush, not per request)."""
        loop = loop or asyncio.get_running_loop()
        return await self._enqueue(_Waiting(X, rows, loop.create_future(), finish, tag), loop)

    def _enqueue(self, waiting: _Waiting, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
        if not self._waiting:
            loop.call_soon(self.flush)
        self._waiting.append(waiting)
        return waiting.future

    def flush(self) -> None:
        """Score everything waiting; every waiting request gets its result or its own exception."""
        waiting, self._waiting = self._waiting, []
        try:
            self._flush([w for w in waiting if not w.future.done()])  # done: cancelled while waiting
        except BaseException as exc:  # never leave a request hanging, whatever went wrong
            for w in waiting:
                if not w.future.done():
                    w.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    def _flush(self, waiting: list[_Waiting]) -> None:
        if not waiting:
            return
        ctx = self.ctx
        try:
            served = ctx.served()  # once per flush: every answer names the version that scored it
        except RequestError as exc:
            for w in waiting:
                w.future.set_exception(exc)
            return
        ready: list[_Waiting] = []
        blocks: list[np.ndarray] = []
        for w in waiting:
            X = w.X
            if w.rows is not None and ctx.features is not None:
                try:
                    X = ctx.features.append_to(served.version, w.rows, X)
                except Exception as exc:  # this request's rows only: a bad one must not fail the others
                    w.future.set_exception(exc)
                    continue
            ready.append(w)
            blocks.append(X)
        if not ready:
            return
        X = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        labels, scores = ctx.outputs(served, X)
        self.flushes += 1
        self.requests += len(ready)
        start = 0
        results: list[tuple[_Waiting, Any]] = []
        for w, block in zip(ready, blocks, strict=True):
            end = start + len(block)
            scored = Scored(served, labels[start:end], None if scores is None else scores[start:end])
            start = end
            try:
                refuse_unscored(ctx.spec, block, scored.labels, scored.scores)
            except RequestError as exc:  # a row of this request got no finite prediction (a null input)
                w.future.set_exception(exc)
                continue
            if w.finish is None:
                results.append((w, scored))
                continue
            try:
                results.append((w, w.finish(scored)))
            except Exception as exc:  # this request's answer only
                w.future.set_exception(exc)
        if self.answered is not None:
            self.answered([(w.tag, result) for w, result in results if w.finish is not None])
        for w, result in results:
            w.future.set_result(result)
