"""What an HTTP client may cost a scorer, and reading a request body within it.

The scorer shares its process (and two cores) with the Kafka loop, so no client may hold it:
bodies are capped in size and must arrive within a total deadline (a client trickling bytes gets
408 and its connection closed), requests are capped in rows, uvicorn caps concurrent connections
and idle keep-alive time. Errors are `RequestError`s, answered as `{"error": ...}`.
"""

from __future__ import annotations

import asyncio
import hmac
import weakref
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.types import Receive

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_ROWS = 10_000
DEFAULT_BODY_TIMEOUT_S = 10.0  # 1 MiB in 10 s is 100 KiB/s: only a broken or hostile client is slower
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_KEEP_ALIVE_S = 5
DEADLINE_TICK_S = 0.25  # a body past its deadline is cut within this much more (a quarter of it, if shorter)


class RequestError(Exception):
    """An HTTP error answer: status code, message and optional extra JSON fields.

    `close` ends the connection after the answer: the body was left unread (or arrived too slowly),
    so the connection's remaining bytes cannot be trusted to start the next request.
    """

    def __init__(
        self, status: int, message: str, headers: dict[str, str] | None = None, close: bool = False, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})
        if close:
            self.headers["Connection"] = "close"
        self.body = {"error": message, **extra}


class ClientGone(Exception):
    """The client disconnected before its request was read: nothing can be answered."""


@dataclass(frozen=True)
class HttpLimits:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_rows: int = DEFAULT_MAX_ROWS
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    keep_alive_s: int = DEFAULT_KEEP_ALIVE_S

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_rows", "body_timeout_s", "max_connections", "keep_alive_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


async def read_body(request: Request, limits: HttpLimits) -> bytes:
    """The whole body, which must declare its length, fit `max_body_bytes` and arrive within `body_timeout_s`."""
    loop = asyncio.get_running_loop()
    return await receive_body(
        request.receive, request.headers.get("content-length"), limits, loop, loop_deadlines(loop, limits)
    )


def declared_length(header: str | None, limits: HttpLimits) -> int:
    """The body length the request declares (`Content-Length`), within `max_body_bytes`."""
    if header is None:
        raise RequestError(411, "Content-Length is required (chunked bodies are not accepted)", close=True)
    try:
        length = int(header)
        if length < 0 or not header.strip().isdigit():
            raise ValueError
    except ValueError:
        raise RequestError(400, f"invalid Content-Length {header!r}", close=True) from None
    if length > limits.max_body_bytes:
        raise RequestError(
            413, f"body of {length} bytes exceeds the limit of {limits.max_body_bytes} bytes", close=True
        )
    return length


class BodyDeadlines:
    """The body deadlines of one event loop's reads, enforced by one timer that ticks while any read waits.

    A timer per request (`loop.call_at`, then cancelled) costs ~3.5 us on uvloop, about 5 % of what a
    1-row request costs an HTTP process; a read registered here costs a dict insert and delete (most
    bodies have arrived whole with their headers, so the read never waits). A body still incomplete
    past its deadline is cut at the next tick: after `body_timeout_s` and within `tick_s` more.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, tick_s: float) -> None:
        self.loop = loop
        self.tick_s = tick_s
        self._reads: dict[asyncio.Task[Any], float] = {}  # reading task -> its deadline (loop time)
        self.expired: set[asyncio.Task[Any]] = set()  # cancelled by a tick: their reads answer 408
        self._ticking = False

    def add(self, task: asyncio.Task[Any], deadline: float) -> None:
        self._reads[task] = deadline
        if not self._ticking:
            self._ticking = True
            self.loop.call_later(self.tick_s, self._tick)

    def remove(self, task: asyncio.Task[Any]) -> None:
        self._reads.pop(task, None)

    def _tick(self) -> None:
        now = self.loop.time()
        for task, deadline in list(self._reads.items()):
            if deadline <= now:
                del self._reads[task]
                self.expired.add(task)
                task.cancel()
        if self._reads:
            self.loop.call_later(self.tick_s, self._tick)
        else:
            self._ticking = False


_LOOP_DEADLINES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, BodyDeadlines] = weakref.WeakKeyDictionary()


def loop_deadlines(loop: asyncio.AbstractEventLoop, limits: HttpLimits) -> BodyDeadlines:
    """The loop's one `BodyDeadlines`, shared by every body read on it (Starlette routes and fast path).

    It ticks at `DEADLINE_TICK_S`, or a quarter of the shortest `body_timeout_s` read on the loop.
    """
    tick_s = min(DEADLINE_TICK_S, limits.body_timeout_s / 4)
    deadlines = _LOOP_DEADLINES.get(loop)
    if deadlines is None:
        deadlines = _LOOP_DEADLINES[loop] = BodyDeadlines(loop, tick_s)
    deadlines.tick_s = min(deadlines.tick_s, tick_s)
    return deadlines


async def receive_body(
    receive: Receive,
    content_length: str | None,
    limits: HttpLimits,
    loop: asyncio.AbstractEventLoop,
    deadlines: BodyDeadlines,
) -> bytes:
    """The body from ASGI `receive`, checked by `declared_length` and received within `body_timeout_s`.

    Shared by the Starlette routes and the raw ASGI fast path, so both keep the same limits and errors.
    The deadline is the loop's `BodyDeadlines` (`loop_deadlines`), which cancels this task when the body
    is late: not `asyncio.timeout` (6.6 us per request) nor a timer per request (~3.5 us on uvloop).
    `loop` is the running loop, passed in: on Python 3.11 every lookup of it is a `getpid` syscall
    (the fork check), which py-spy put at 2-3 % of a 1-row request per call.
    """
    length = declared_length(content_length, limits)
    chunks: list[bytes] = []
    received = 0
    task = asyncio.current_task(loop)
    assert task is not None  # ASGI apps run in a task
    deadlines.add(task, loop.time() + limits.body_timeout_s)
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone(f"disconnected after {received} of {length} body bytes")
            chunk = message.get("body", b"")
            chunks.append(chunk)
            received += len(chunk)
            if not message.get("more_body", False):
                break
    except asyncio.CancelledError:
        expired = task in deadlines.expired
        deadlines.expired.discard(task)
        if not expired or task.uncancel() > 0:  # cancelled by someone else too: theirs to handle
            raise
        raise RequestError(
            408,
            f"the body did not arrive within {limits.body_timeout_s:g} s ({received} of {length} bytes received)",
            close=True,
        ) from None
    finally:
        deadlines.remove(task)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class BearerToken:
    """The optional token guarding inference; compared in constant time so timing reveals nothing."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    @property
    def required(self) -> bool:
        return self._token is not None

    def check(self, request: Request) -> None:
        self.check_header(request.headers.get("authorization", ""))

    def check_header(self, authorization: str) -> None:
        """Refuse (401) unless `authorization` is `Bearer <token>`; anything goes without a token."""
        if self._token is None:
            return
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), self._token):
            raise RequestError(
                401,
                "missing or wrong bearer token (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": 'Bearer realm="streamfit"'},
                close=True,  # the body is left unread
            )
