"""The scorer's HTTP API in N processes on one port vs the standard library's server.

`python -m benchmarks.http_processes [--full] [--processes N]`. One CPU-bound Python process caps
the API (uvicorn alone takes 22-24 us of CPU per request, `benchmarks.http_api`), so this measures
the layout uvicorn deployments use: one listening socket bound by a parent and shared by N server
processes, each with its own `ChampionWatcher` on the same registry, fast path and coalescing, and
metrics in prometheus_client's multiprocess mode: `serving.http_processes.HttpProcesses`, the code
`streamfit serve --http-processes N` runs. Cells, all against the same champion and body:
`stdlib pinned` (wrk on CPU 0, the baseline server on CPU 1, as `http_api --pin`), `stdlib`
unpinned, `uvicorn` (one process, the shipped server in a thread, unpinned) and `uvicorn xN`
(N child processes, unpinned). wrk is never pinned in the unpinned cells: it shares the machine's
cores with the servers it drives, as a client on the same host would. CPU per request is the serving
processes' user + system time (`getrusage` for this process, /proc/<pid>/stat for the children)
over the answered requests; wrk's own time is not in it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import machine_info, progress
from benchmarks.http_api import (
    ROWS_PER_REQUEST,
    SERVER_CPU,
    WRK_CPU,
    WRK_MISSING,
    StdlibScorerServer,
    _cpu_seconds,
    _median,
    run_wrk,
    trained_watcher,
)
from dagster_project.registry.store import FilesystemRegistry
from dagster_project.serving.http import ScorerHTTPServer, bind_http_socket, reserve_reuse_port
from dagster_project.serving.http_processes import HttpProcesses, WorkerPlan

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def start_processes(
    processes: int, spec: Any, registry_root: Path, workdir: Path, reuse_port: bool = True
) -> HttpProcesses:
    """`serve --http-processes N`'s HTTP layer as it ships: the socket bound here, N children sharing it."""
    metrics_dir = workdir / f"metrics-{'reuseport' if reuse_port else 'shared'}"
    metrics_dir.mkdir()
    plan = WorkerPlan(
        spec,
        FilesystemRegistry(registry_root),
        metrics_dir=str(metrics_dir),
        state_file=str(metrics_dir / "kafka-state.json"),
        watch_interval_s=0.25,
        reuse_port=reuse_port,
    )
    address = ("127.0.0.1", 0)
    sock = reserve_reuse_port(address) if reuse_port else bind_http_socket(address)
    return HttpProcesses(sock, processes, plan, kafka=None, delivery=None).start()


def _pin(cpus: set[int]) -> None:
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except ProcessLookupError:  # a short-lived thread (a worker for a large body) already ended
            pass


def run(quick: bool = True, connections: int = 8, processes: int = 2) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise RuntimeError(WRK_MISSING)
    if (os.cpu_count() or 1) < 2:
        raise RuntimeError("needs 2 CPUs (the pinned baseline puts wrk and the server on one each)")
    seconds, rounds = (3.0, 1) if quick else (10.0, 3)
    every = os.sched_getaffinity(0)
    multi = f"uvicorn x{processes}"
    names = ("stdlib pinned", "stdlib", "uvicorn", multi)
    with tempfile.TemporaryDirectory(prefix="streamfit-http-procs-") as tmp:
        workdir = Path(tmp)
        spec, watcher, metrics, rows = trained_watcher(workdir / "registry")
        stdlib = StdlibScorerServer(spec, watcher, metrics).start()
        single = ScorerHTTPServer(("127.0.0.1", 0), spec, watcher, metrics).start()
        group = start_processes(processes, spec, workdir / "registry", workdir)
        cells: dict[str, dict[str, list[dict[str, Any]]]] = {}
        try:
            for n in ROWS_PER_REQUEST:
                body = orjson.dumps({"rows": rows[:n]})
                cells[str(n)] = {name: [] for name in names}
                for r in range(rounds):
                    for name in names if r % 2 == 0 else reversed(names):
                        progress(f"http processes: {name}, {n}-row requests, {connections} connections, {seconds:g}s")
                        pinned = name == "stdlib pinned"
                        if pinned:
                            _pin({SERVER_CPU})
                        url = group.url if name == multi else (single.url if name == "uvicorn" else stdlib.url)
                        cpu = _group_cpu(group) if name == multi else _cpu_seconds()
                        try:
                            figures = run_wrk(url, body, connections, seconds, workdir, WRK_CPU if pinned else None)
                        finally:
                            if pinned:
                                _pin(every)
                        used = (_group_cpu(group) if name == multi else _cpu_seconds()) - cpu
                        figures["cpu_us"] = used * 1e6 / max(1, figures["requests"] or 0)
                        cells[str(n)][name].append(figures)
        finally:
            group.stop()
            single.stop()
            stdlib.stop()
            watcher.stop()
    result: dict[str, Any] = {
        "connections": connections,
        "seconds_per_cell": seconds,
        "rounds": rounds,
        "processes": processes,
        "cells": {},
    }
    for n, by_server in cells.items():
        med = {name: _median(runs) for name, runs in by_server.items()}
        result["cells"][n] = {
            **med,
            "ratios": {
                name: {
                    base: {
                        "rps": med[name]["requests_per_s"] / med[base]["requests_per_s"],
                        "p99": med[name]["p99"] / med[base]["p99"],
                        "cpu": med[name]["cpu_us"] / med[base]["cpu_us"],
                    }
                    for base in ("stdlib pinned", "stdlib")
                }
                for name in ("uvicorn", multi)
            },
        }
    result["machine"] = machine_info()
    return result


def _group_cpu(group: HttpProcesses) -> float:
    return sum(_proc_cpu_seconds(pid) for pid in group.pids)


def table(result: dict[str, Any]) -> list[str]:
    lines = [
        "| rows/request | server | requests/s | p50 ms | p99 ms | CPU us/request | errors "
        "| vs stdlib pinned: requests/s, p99, CPU | vs stdlib unpinned: requests/s, p99, CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, cell in result["cells"].items():
        for name in (k for k in cell if k != "ratios"):
            c = cell[name]
            ratios = cell["ratios"].get(name)
            tail = (
                " | ".join(
                    f"{ratios[b]['rps']:.2f}x, {ratios[b]['p99']:.2f}, {ratios[b]['cpu']:.2f}"
                    for b in ("stdlib pinned", "stdlib")
                )
                if ratios
                else " | "
            )
            lines.append(
                f"| {n} | {name} | {c['requests_per_s']:,.0f} | {c['p50']:.2f} | {c['p99']:.2f} "
                f"| {c['cpu_us']:.0f} | {c['errors']} | {tail} |"
            )
    return lines


if __name__ == "__main__":
    count = int(sys.argv[sys.argv.index("--processes") + 1]) if "--processes" in sys.argv else 2
    figures = run(quick="--full" not in sys.argv, processes=count)
    print(
        f"{figures['connections']} connections, {figures['seconds_per_cell']:g}s per cell, {figures['rounds']} rounds; "
        f"'stdlib pinned': wrk on CPU {WRK_CPU}, server on CPU {SERVER_CPU}; every other cell unpinned (wrk included)"
    )
    print("\n".join(table(figures)))
    print(f"machine load average: {figures['machine'].get('loadavg_at_start')}")
