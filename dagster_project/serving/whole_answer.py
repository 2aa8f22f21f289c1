"""A fast-path 200 answer written to the socket in one piece, where uvicorn writes its head and body apart.

uvicorn's httptools protocol writes the status line and headers at `http.response.start` and the
body at `http.response.body`. With uvloop each `transport.write` to an idle socket is its own `write`
syscall and, with TCP_NODELAY, its own TCP segment the kernel delivers to the client: py-spy
`--native` put `write` at a third of an HTTP process's samples under wrk. One write, and none of
uvicorn's per-message checks, cut CPU per 1-row request by 6-12 % in A/B runs of two HTTP processes
(benchmarks/README.md, "HTTP API"). The bytes are the ones uvicorn's `send` writes for these
headers (its default headers, then the answer's, then `connection: close` when the connection is
not kept alive), and the request cycle is left as its `send` leaves it.

This reads uvicorn's request cycle (`httptools_impl.RequestResponseCycle`), so it declines whatever
it does not know: another protocol implementation (h11), an access log to write, a paused or closed
transport, a response already started, a cycle missing an attribute (another uvicorn). Declined, the
caller sends the two ASGI messages as usual. Only fast-path 200s come here: their two headers
(content-length, content-type) are ours, so uvicorn's header-injection checks have nothing to find;
errors always take the ASGI way.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

Headers = list[tuple[bytes, bytes]]


def send_whole(send: Any, status: int, headers: Headers, body: bytes) -> bool:
    """Write the answer through `send`'s connection in one write; False (nothing done) when it cannot."""
    cycle = getattr(send, "__self__", None)
    if type(cycle) is not RequestResponseCycle:
        return False
    try:  # every read first: a missing attribute declines before anything changed
        if cycle.response_started or cycle.disconnected or cycle.access_log or cycle.flow.write_paused:
            return False
        transport = cycle.transport
        keep_alive: bool = cycle.keep_alive
        default_headers: Headers = cycle.default_headers
        on_response = cycle.on_response
        event = cycle.message_event
    except AttributeError:
        return False
    content = [STATUS_LINE[status]]
    for name, value in default_headers:
        content += (name, b": ", value, b"\r\n")
    for name, value in headers:
        content += (name, b": ", value, b"\r\n")
    if not keep_alive:
        content.append(b"connection: close\r\n")
    content += (b"\r\n", body)
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    transport.write(b"".join(content))
    cycle.response_complete = True
    event.set()
    if not keep_alive:
        transport.close()
    on_response()
    return True
