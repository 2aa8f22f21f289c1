"""The scorer's HTTP API: uvicorn with its fast path (today's server) and without it vs the standard library's server.

`python -m benchmarks.http_api [--full] [--pin]`. The servers run in this process, each in a thread
(as the scorer runs its API beside the Kafka loop), and serve the same trained champion through
the same `ChampionWatcher`, row validation (`serving.rows.validate_rows`), scoring context and
metrics; the baseline is `http.server.ThreadingHTTPServer` with a `/predict` handler doing exactly
that (the architecture the scorer had before it moved to uvicorn, without its body limits and
deadlines, so the baseline is if anything flattered). `uvicorn` is the scorer's server as it ships
(`fastpath.FastInference` answers `/predict` and scores the requests ready in one loop iteration in
one onnxruntime call, `coalesce.Coalescer`), `fastpath` the same without coalescing (one call per
request), `starlette` the same server with the fast path off (every request through Starlette), so
each layer's own gain is read in the same run; for `uvicorn` the run also prints how many requests a
scoring call answered on average. The load
comes from `wrk` (Debian package `wrk`; C, keep-alive connections, latency percentiles) in its own
process, POSTing a 1-row and a 100-row body from C concurrent connections for D seconds per cell; the
servers take turns per round (reversed every other round) so a noisy moment hits all. `ceiling` is
the same uvicorn configuration serving a bare ASGI app that reads the body and sends the scorer's
real answer back unchanged: what the HTTP server alone allows on this machine. wrk needs a
core of its own to saturate a server: `--pin` runs it on CPU 0 and this process (every server) on
CPU 1, the same for all servers. Reported per cell: requests/s, p50/p99 latency, non-2xx answers
and socket errors (must be 0), the garbage collector's full (oldest-generation) collections in the
process during the cell's rounds (each scans the whole heap: tens of ms here), the process's CPU time
per answered request (user + system, `getrusage`: only the server under load works then, and unlike
requests/s it hardly moves when other work shares the machine), and the ratios to the baseline.
"""

from __future__ import annotations

import gc
import http.server
import os
import re
import resource
import shutil
import subprocess
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from benchmarks.common import machine_info, progress
from dagster_project.dev.datasets import synthetic_events
from dagster_project.learning.estimators import build_model, partial_fit
from dagster_project.onnx.export import export_onnx
from dagster_project.registry.store import FilesystemRegistry
from dagster_project.serving.api import ScoringContext
from dagster_project.serving.champion import ChampionWatcher
from dagster_project.serving.health import ScorerHealth
from dagster_project.serving.http import ScorerHTTPServer
from dagster_project.serving.limits import BearerToken, HttpLimits, RequestError
from dagster_project.serving.metrics import ScorerMetrics
from dagster_project.serving.rows import validate_rows
from dagster_project.spec import load_spec

WRK_MISSING = "wrk is not installed: `apt-get install wrk` (Debian) or `brew install wrk`"
ROWS_PER_REQUEST = (1, 100)
_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def trained_watcher(root: Path) -> tuple[Any, ChampionWatcher, ScorerMetrics, list[dict]]:
    """The shipped synthetic stream's spec, a model trained on 5,000 of its rows as champion, and rows to send."""
    spec = load_spec(Path(__file__).resolve().parents[1] / "streams" / "synthetic.yaml")
    events = list(synthetic_events(rows=5_100, change_at=10**9, seed=3))
    X = np.array([[e.features[n] for n in spec.feature_names] for e in events], dtype=np.float64)
    y = np.array([int(e.label) for e in events])
    model = build_model(spec)
    partial_fit(model, X[:5_000], y[:5_000], np.arange(len(spec.label.classes)))
    registry = FilesystemRegistry(root)
    meta = {
        "task": spec.task,
        "features": spec.feature_names,
        "classes": spec.label.classes,
        "offsets": {"topic": spec.events_topic, "learned": {}},
        "rows_learned_total": 5_000,
    }
    version = registry.register(spec.name, None, export_onnx(model, len(spec.features)), model, meta)
    registry.set_champion(spec.name, version.name, reason="benchmark")
    metrics = ScorerMetrics(spec.name)
    watcher = ChampionWatcher(registry, spec, metrics)
    watcher.check()
    assert watcher.current is not None, "the benchmark's champion did not load"
    return spec, watcher, metrics, [e.features for e in events[5_000:]]


class StdlibScorerServer:
    """The baseline: ThreadingHTTPServer, `POST /predict` -> validate rows -> score -> JSON."""

    def __init__(self, spec: Any, watcher: ChampionWatcher, metrics: ScorerMetrics) -> None:
        # The same per-request work as the uvicorn app: scoring through ScoringContext.score (latency
        # histogram, prediction and unseen-category counters) and the request counter.
        ctx = ScoringContext(spec, watcher, metrics, ScorerHealth(spec.name, watcher), BearerToken(None), HttpLimits())

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn
            disable_nagle_algorithm = True  # as the old server: headers and body are two writes (+40 ms without)

            def log_message(self, *args: Any) -> None:  # no line per request
                pass

            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    X = validate_rows(spec, orjson.loads(raw), ctx.limits.max_rows)
                    served = ctx.served()
                    predictions, scores = ctx.score(served, X)
                    out = [{"prediction": p, "probabilities": s} for p, s in zip(predictions, scores, strict=True)]
                    status, body = 200, orjson.dumps({"model_version": served.version, "predictions": out})
                except RequestError as exc:
                    status, body = exc.status, orjson.dumps(exc.body)
                metrics.http_requests.labels(spec.name, "/predict", str(status)).inc()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:  # wrk closing its connections
                pass

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> StdlibScorerServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class FixedAnswer:
    """The ceiling: a bare ASGI app that reads the body and sends a fixed answer, no checks, no scoring."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.headers = [(b"content-length", str(len(answer)).encode()), (b"content-type", b"application/json")]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body", False):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.answer})


def ceiling_server(spec: Any, watcher: ChampionWatcher, metrics: ScorerMetrics, answer: bytes) -> ScorerHTTPServer:
    """The scorer's server with its uvicorn configuration (httptools, uvloop, limits) but `FixedAnswer` as the app."""
    server = ScorerHTTPServer(("127.0.0.1", 0), spec, watcher, metrics)
    server._server.config.app = FixedAnswer(answer)  # loaded when uvicorn starts; everything else unchanged
    return server


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * _UNIT_MS[unit]


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/s, latency percentiles (ms) and error counts from `wrk --latency` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rps is None:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{output}")
    latency = {f"p{q}": _ms(v) for q, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", output, re.M)}
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    requests = re.search(r"(\d+) requests in", output)
    return {
        "requests_per_s": float(rps.group(1)),
        **latency,
        "requests": int(requests.group(1)) if requests else None,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(int(n) for n in socket_errors.groups()) if socket_errors else 0,
    }


def run_wrk(
    url: str, body: bytes, connections: int, seconds: float, workdir: Path, cpu: int | None = None
) -> dict[str, Any]:
    script = workdir / f"post_{len(body)}.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {orjson.dumps(body.decode()).decode()}\n"
    )
    pinned = ["taskset", "-c", str(cpu)] if cpu is not None else []
    command = [*pinned, "wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds:g}s", "--latency", "-s", str(script)]
    done = subprocess.run([*command, f"{url}/predict"], capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return parse_wrk(done.stdout)


SERVERS = ("stdlib", "starlette", "fastpath", "uvicorn", "ceiling")  # table order: the baseline first
WRK_CPU, SERVER_CPU = 0, 1


def pin_this_process(cpu: int) -> None:
    """Every thread of this process on `cpu`; threads started later inherit it from their creator."""
    if (os.cpu_count() or 1) < 2:
        raise RuntimeError("--pin needs 2 CPUs (one for wrk, one for the servers); run without it")
    for task in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(task), {cpu})


def run(quick: bool = True, connections: int = 8, pin: bool = False) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise RuntimeError(WRK_MISSING)
    if pin and shutil.which("taskset") is None:
        raise RuntimeError("--pin needs taskset (Debian package util-linux)")
    seconds, rounds = (3.0, 1) if quick else (10.0, 3)
    before = os.sched_getaffinity(0)
    with tempfile.TemporaryDirectory(prefix="streamfit-http-bench-") as tmp:
        workdir = Path(tmp)
        spec, watcher, metrics, rows = trained_watcher(workdir / "registry")
        servers = {
            "stdlib": StdlibScorerServer(spec, watcher, metrics).start(),
            "starlette": ScorerHTTPServer(("127.0.0.1", 0), spec, watcher, metrics, fast_path=False).start(),
            "fastpath": ScorerHTTPServer(("127.0.0.1", 0), spec, watcher, metrics, coalesce=False).start(),
            "uvicorn": ScorerHTTPServer(("127.0.0.1", 0), spec, watcher, metrics).start(),
        }
        answers = {n: _answer(servers["uvicorn"].url, orjson.dumps({"rows": rows[:n]})) for n in ROWS_PER_REQUEST}
        if pin:
            pin_this_process(SERVER_CPU)
        cells: dict[str, dict[str, list[dict[str, Any]]]] = {}
        coalescer = servers["uvicorn"].app.coalescer
        full_collections = [0]  # the garbage collector's oldest generation: each scans the whole heap

        def count_full(phase: str, info: dict[str, Any]) -> None:
            if phase == "stop" and info["generation"] == 2:
                full_collections[0] += 1

        gc.callbacks.append(count_full)
        try:
            for n in ROWS_PER_REQUEST:
                body = orjson.dumps({"rows": rows[:n]})
                servers["ceiling"] = ceiling_server(spec, watcher, metrics, answers[n]).start()  # pinned: inherits
                cells[str(n)] = {name: [] for name in servers}
                for r in range(rounds):
                    order = list(servers) if r % 2 == 0 else list(reversed(servers))
                    for name in order:
                        progress(f"http: {name}, {n}-row requests, {connections} connections, {seconds:g}s")
                        flushes, answered, full = coalescer.flushes, coalescer.requests, full_collections[0]
                        cpu = _cpu_seconds()
                        figures = run_wrk(
                            servers[name].url, body, connections, seconds, workdir, WRK_CPU if pin else None
                        )
                        figures["cpu_us"] = (_cpu_seconds() - cpu) * 1e6 / max(1, figures["requests"] or 0)
                        figures["full_gc"] = full_collections[0] - full
                        if name == "uvicorn":
                            figures["requests_per_call"] = (coalescer.requests - answered) / max(
                                1, coalescer.flushes - flushes
                            )
                        cells[str(n)][name].append(figures)
                servers.pop("ceiling").stop()
        finally:
            gc.callbacks.remove(count_full)
            for server in servers.values():
                server.stop()
            if pin:
                for task in os.listdir("/proc/self/task"):
                    os.sched_setaffinity(int(task), before)
    result: dict[str, Any] = {
        "connections": connections,
        "seconds_per_cell": seconds,
        "rounds": rounds,
        "pinned": pin,
        "cells": {},
    }
    for n, by_server in cells.items():
        med = {name: _median(runs) for name, runs in by_server.items()}
        base = med["stdlib"]
        result["cells"][n] = {
            **med,
            "ratios": {
                name: {
                    "rps": med[name]["requests_per_s"] / base["requests_per_s"],
                    "p99": med[name]["p99"] / base["p99"],
                    "cpu": med[name]["cpu_us"] / base["cpu_us"],
                }
                for name in SERVERS[1:]
            },
        }
    result["machine"] = machine_info()  # its load average is the one at the end of the run
    return result


def _cpu_seconds() -> float:
    """This process's CPU time so far (every server's threads; wrk is a child, not counted)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _answer(url: str, body: bytes) -> bytes:
    """The scorer's real answer to `body`, for the ceiling to send back (same bytes on the wire)."""
    request = urllib.request.Request(f"{url}/predict", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("requests_per_s", "p50", "p99", "cpu_us")
    out = {k: float(np.median([r[k] for r in runs])) for k in keys}
    out["errors"] = sum(r["non_2xx"] + r["socket_errors"] for r in runs)
    if "full_gc" in runs[0]:  # counted where the servers run in this process (not `http_processes`' children)
        out["full_gc"] = sum(r["full_gc"] for r in runs)
    if "requests_per_call" in runs[0]:
        out["requests_per_call"] = float(np.median([r["requests_per_call"] for r in runs]))
    return out


def table(result: dict[str, Any]) -> list[str]:
    lines = [
        "| rows/request | server | requests/s | p50 ms | p99 ms | CPU us/request | errors | full GCs "
        "| requests/s vs stdlib | p99 vs stdlib | CPU/request vs stdlib |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, cell in result["cells"].items():
        for name in SERVERS:
            c = cell[name]
            ratio = cell["ratios"].get(name)
            tail = f"{ratio['rps']:.2f}x | {ratio['p99']:.2f} | {ratio['cpu']:.2f}" if ratio else "| | "
            figures = (
                f"{c['requests_per_s']:,.0f} | {c['p50']:.2f} | {c['p99']:.2f} | {c['cpu_us']:.0f} "
                f"| {c['errors']} | {c['full_gc']}"
            )
            lines.append(f"| {n} | {name} | {figures} | {tail} |")
    for n, cell in result["cells"].items():
        lines.append(f"{n}-row: uvicorn answered {cell['uvicorn']['requests_per_call']:.2f} requests per scoring call")
    return lines


def bounds(result: dict[str, Any]) -> list[str]:
    """Per cell, what the ceiling says: us per request in uvicorn itself and in the rest (the scorer's work
    and the fast path), and the most any server could reach vs stdlib if its HTTP layer cost nothing
    (stdlib's us per request / the rest's). Requests/s read as time per request: exact only when the
    server saturates its core (`--pin`). The same from CPU time per request, with what a 3x target leaves
    for the scorer's own work once the HTTP server's is paid."""
    lines = []
    for n, cell in result["cells"].items():
        us = {name: 1e6 / cell[name]["requests_per_s"] for name in SERVERS}
        rest = us["uvicorn"] - us["ceiling"]
        best = us["stdlib"] / rest if rest > 0 else float("inf")
        cpu = {name: cell[name]["cpu_us"] for name in SERVERS}
        lines.append(
            f"{n}-row: stdlib {us['stdlib']:.0f} us/request, uvicorn {us['uvicorn']:.0f} = HTTP server "
            f"{us['ceiling']:.0f} (ceiling) + the rest {rest:.0f}; with a free HTTP layer at most {best:.2f}x stdlib. "
            f"CPU per request: stdlib {cpu['stdlib']:.0f} us, uvicorn {cpu['uvicorn']:.0f} = "
            f"{cpu['ceiling']:.0f} (ceiling) + {cpu['uvicorn'] - cpu['ceiling']:.0f}; 3x stdlib leaves "
            f"{cpu['stdlib'] / 3 - cpu['ceiling']:.0f} us for everything but the HTTP server"
        )
    return lines


if __name__ == "__main__":
    import sys

    figures = run(quick="--full" not in sys.argv, pin="--pin" in sys.argv)
    load = figures["machine"].get("loadavg_at_start")
    where = f"wrk on CPU {WRK_CPU}, servers on CPU {SERVER_CPU}" if figures["pinned"] else "not pinned"
    print(
        f"{figures['connections']} connections, {figures['seconds_per_cell']:g}s per cell, {figures['rounds']} rounds, "
        f"{where}"
    )
    print("\n".join(table(figures)))
    print("\n".join(bounds(figures)))
    print(f"machine load average: {load}")
