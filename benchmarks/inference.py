"""Inference: onnxruntime vs scikit-learn vs River, and the scoring service end to end.

One model per library is trained on the same 10,000 synthetic rows; all three score the same
held-out rows. Single-row latency is one call per row through each library's own API
(`OnnxModel.predict` on one float32 row, `Pipeline.predict_proba` on one row,
`predict_proba_one` on a dict), interleaved in rounds so a noisy moment hits all three. Batch
throughput scores 1,000 rows per call (River: a loop of `predict_proba_one`, what a River scorer
does, and `predict_proba_many` on a DataFrame).

The scorer: `streamfit serve` in its own process (a fresh consumer group, so it scores the topic
from the start), 1 replica and optionally 2 in one group, on events already in the topic. Its
`/metrics` predictions counter is sampled every 50 ms; events/s is taken between the first and the
last change of the counter, so the consumer-group join (about 3 s on Tansu) is not counted. It runs
once per consumer client (`--client kafka-python`, `--client confluent`) in the same run. Beside it:
kafka-python's bare range read of the same events, and the floor of the scorer's job with the fastest
client (`scorer_floor.py`: confluent-kafka in a group, decode, one record produced per event, flush,
commit; no scoring), which the scorer's rate is compared with.
"""

from __future__ import annotations

import gc
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import PROJECT_ROOT, percentiles, progress, ratio, summary, unique_name
from benchmarks.context import BenchContext
from benchmarks.data import arrays, bench_spec, encode, event_ranges, events, produce_round_robin, write_spec
from benchmarks.scorer_floor import scorer_floor
from benchmarks.throughput import consume_range, floor_read, river_model
from dagster_project.kafka.brokers.tansu import free_port
from dagster_project.kafka.io import ensure_topics
from dagster_project.kafka.settings import BOOTSTRAP_ENV, KAFKA_PYTHON
from dagster_project.serving.consumers import CONFLUENT
from dagster_project.serving.scorer import DEFAULT_MAX_POLL_RECORDS

CLIENTS = {KAFKA_PYTHON: "", CONFLUENT: "_confluent"}  # scorer client -> suffix of its run keys

TRAIN_ROWS = 10_000
BATCH_ROWS = 1_000
_PREDICTIONS = re.compile(r'^streamfit_predictions_total\{[^}]*source="kafka"[^}]*\}\s+([0-9.e+]+)', re.MULTILINE)


def _train_models(spec):
    from dagster_project.learning.estimators import build_model, partial_fit
    from dagster_project.onnx.export import OnnxModel, export_onnx

    source = events(TRAIN_ROWS + 2_000, seed=11)
    X, y = arrays(source, spec.feature_names)
    sk = build_model(spec)
    classes = np.arange(len(spec.label.classes))
    for start in range(0, TRAIN_ROWS, 1_000):
        partial_fit(sk, X[start : start + 1_000], y[start : start + 1_000], classes)
    onnx_bytes = export_onnx(sk, len(spec.features))
    onnx = OnnxModel(onnx_bytes)
    rv = river_model()
    for e in source[:TRAIN_ROWS]:
        rv.learn_one(e.features, e.label)
    held_out = source[TRAIN_ROWS:]
    return sk, onnx, onnx_bytes, rv, X[TRAIN_ROWS:], [e.features for e in held_out]


# Libraries take turns in chunks (so a load change hits all three alike). The first calls after a
# switch run with caches the other library just evicted: with chunks of 100 those cold calls were
# the p99 itself (onnxruntime 115-150 us vs 42 us steady). Bigger chunks and a few untimed calls
# per switch measure each library's own tail.
CHUNK_CALLS = 1_000
SWITCH_WARMUP_CALLS = 20


def _latencies(ctx: BenchContext, sk, onnx, rv, X: np.ndarray, dicts: list[dict]) -> dict[str, Any]:
    calls = ctx.mode.single_row_calls
    rows64 = [X[i : i + 1] for i in range(len(X))]
    rows32 = [r.astype(np.float32) for r in rows64]
    n = len(rows64)
    clock = time.perf_counter_ns
    fns = {
        "onnxruntime": lambda i: onnx.predict(rows32[i]),
        "sklearn": lambda i: sk.predict_proba(rows64[i]),
        "river": lambda i: rv.predict_proba_one(dicts[i]),
    }
    for fn in fns.values():  # warm-up
        for i in range(50):
            fn(i % n)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    done = 0
    while done < calls:
        chunk = min(CHUNK_CALLS, calls - done)
        for name, fn in fns.items():
            out = samples[name]
            gc.collect()  # untimed: each library's calls pay only for the garbage they make themselves
            for j in range(done, done + SWITCH_WARMUP_CALLS):  # untimed: caches are cold after a switch
                fn(j % n)
            for j in range(done, done + chunk):
                i = j % n
                t = clock()
                fn(i)
                out.append((clock() - t) / 1000.0)  # microseconds
        done += chunk
    result = {}
    for name, values in samples.items():
        result[name] = {**percentiles(values, (50, 90, 99)), "mean": float(np.mean(values)), "calls": len(values)}
    result["ratios"] = {
        "sklearn_p99_over_onnx_p99": ratio(result["sklearn"]["p99"], result["onnxruntime"]["p99"]),
        "sklearn_p50_over_onnx_p50": ratio(result["sklearn"]["p50"], result["onnxruntime"]["p50"]),
        "river_p99_over_onnx_p99": ratio(result["river"]["p99"], result["onnxruntime"]["p99"]),
    }
    return result


def _batch_throughput(ctx: BenchContext, sk, onnx, rv, X: np.ndarray, dicts: list[dict]) -> dict[str, Any]:
    import pandas as pd

    Xb = X[:BATCH_ROWS]
    Xb32 = Xb.astype(np.float32)
    db = dicts[:BATCH_ROWS]
    frame = pd.DataFrame(db)
    fns = {
        "onnxruntime": lambda: onnx.predict(Xb32),
        "sklearn": lambda: sk.predict_proba(Xb),
        "river_loop": lambda: [rv.predict_proba_one(d) for d in db],
        "river_many": lambda: rv.predict_proba_many(frame),
    }
    for fn in fns.values():
        fn()
    rates: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(ctx.mode.batch_repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            rates[name].append(BATCH_ROWS / (time.perf_counter() - t))
    out: dict[str, Any] = {name: summary(v) for name, v in rates.items()}
    out["batch_rows"] = BATCH_ROWS
    out["ratios"] = {
        "onnx_over_sklearn": summary(
            [ratio(a, b) for a, b in zip(rates["onnxruntime"], rates["sklearn"], strict=True)]
        ),
        "onnx_over_river_loop": summary(
            [ratio(a, b) for a, b in zip(rates["onnxruntime"], rates["river_loop"], strict=True)]
        ),
    }
    return out


# ---------------------------------------------------------------------------------------------
# The scoring service


def _get(url: str, timeout: float = 1.0) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except OSError:
        return None


def _vm_hwm_mib(pid: int) -> float | None:
    """Peak resident set size of a running process (what getrusage's ru_maxrss reports)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class _ScorerProcess:
    def __init__(
        self, stream: str, env: dict[str, str], group: str, log: Path, max_poll_records: int | None, client: str
    ) -> None:
        self.port = free_port()
        args = [
            sys.executable,
            "-m",
            "dagster_project.cli",
            "serve",
            stream,
            "--port",
            str(self.port),
            "--group",
            group,
            "--client",
            client,
        ]
        if max_poll_records:
            args += ["--max-poll-records", str(max_poll_records)]
        self.log = open(log, "ab")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            args, cwd=PROJECT_ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self.healthy_after: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def predictions(self) -> int | None:
        body = _get(f"{self.url}/metrics")
        if body is None:
            return None
        return int(sum(float(m) for m in _PREDICTIONS.findall(body.decode())))

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"scorer exited with {self.process.returncode}; see {self.log.name}")
            if _get(f"{self.url}/healthz") is not None:
                self.healthy_after = time.monotonic() - self.started
                return
            time.sleep(0.05)
        raise RuntimeError(f"scorer not healthy within {timeout_s}s; see {self.log.name}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def _score_run(
    stream: str,
    env: dict[str, str],
    total: int,
    replicas: int,
    logs: Path,
    max_poll_records: int | None = None,
    client: str = KAFKA_PYTHON,
) -> dict[str, Any]:
    group = unique_name("bench_scorers")
    procs = [
        _ScorerProcess(stream, env, group, logs / f"{group}-{i}.log", max_poll_records, client) for i in range(replicas)
    ]
    try:
        for p in procs:
            p.wait_healthy()
        samples: list[tuple[float, list[int]]] = []
        cpu: list[tuple[tuple[int, int], float]] = []  # (machine busy/total jiffies, scorers' CPU seconds)
        deadline = time.monotonic() + 120 + total / 1_000
        while True:
            counts = [p.predictions() or 0 for p in procs]
            now = time.monotonic()
            samples.append((now, counts))
            cpu.append((_machine_jiffies(), sum(_process_cpu_s(p.process.pid) for p in procs)))
            if sum(counts) >= total:
                break
            if now > deadline:
                raise RuntimeError(f"scorers scored {sum(counts)} of {total} events in time; see {logs}")
            for p in procs:
                if p.process.poll() is not None:
                    raise RuntimeError(f"a scorer exited with {p.process.returncode}; see {p.log.name}")
            time.sleep(0.05)
        rss = [_vm_hwm_mib(p.process.pid) for p in procs]
    finally:
        for p in procs:
            p.stop()
    totals = [(t, sum(c)) for t, c in samples]
    first_change = next(i for i, (_, c) in enumerate(totals) if c > 0)
    # The counter moves once per poll batch: rate between the last sample at 0 and the one that reached total.
    start = max(first_change - 1, 0)
    t0, c0 = totals[start]
    t1, c1 = totals[-1]
    rate = (c1 - c0) / (t1 - t0) if t1 > t0 else None
    (busy0, all0), scorer0 = cpu[start]
    (busy1, all1), scorer1 = cpu[-1]
    return {
        "client": client,
        "replicas": replicas,
        "events": total,
        "events_per_s": rate,
        "scoring_seconds": t1 - t0,
        "per_replica_events": samples[-1][1],
        "start_to_healthy_s": [p.healthy_after for p in procs],
        "peak_rss_mib": rss,
        # While scoring: how busy the whole machine was (all cores = 1.0), and how many cores the scorers used.
        "machine_busy_fraction": (busy1 - busy0) / (all1 - all0) if all1 > all0 else None,
        "scorer_cores": (scorer1 - scorer0) / (t1 - t0) if t1 > t0 else None,
    }


def _summary_of(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return summary(x[key] for x in runs if x.get(key) is not None)


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat (Linux)."""
    try:
        values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0, 0
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process used so far (/proc/<pid>/stat fields 14 and 15)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scorer_section(ctx: BenchContext) -> dict[str, Any]:
    from dagster_project.registry.store import FilesystemRegistry

    mode = ctx.mode
    settings = ctx.settings
    spec = bench_spec(unique_name("bench_score"))
    home = ctx.workdir / "scoring"
    streams = home / "streams"
    write_spec(spec, streams)
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    sk, _, onnx_bytes, _, _, _ = _train_models(spec)
    registry = FilesystemRegistry(home / "registry")
    registry.register(spec.name, None, onnx_bytes, sk, {"offsets": {"learned": {}}, "note": "benchmark champion"})
    registry.set_champion(spec.name, "v1", reason="benchmark")

    total = mode.scorer_events
    progress(f"inference: producing {total:,} events to {spec.events_topic} for the scorer")
    produce_round_robin(settings, spec, encode(events(total, seed=13)))
    ranges = event_ranges(spec, 0, total)
    bare: list[float] = []
    bare_decode: list[float] = []
    for _ in range(max(2, mode.scorer_repeats)):
        t = time.perf_counter()
        consume_range(settings, spec.events_topic, ranges, lambda records: None)
        bare.append(total / (time.perf_counter() - t))
        t = time.perf_counter()
        floor_read(settings, spec.events_topic, ranges, client=KAFKA_PYTHON)  # the scorer's consumer client
        bare_decode.append(total / (time.perf_counter() - t))

    floor_topic = f"{spec.name}.floor"
    ensure_topics(settings, [floor_topic], spec.partitions)
    floor: list[float] = []
    floor_per_batch: list[float] = []
    for r in range(max(2, mode.scorer_repeats)):
        progress(f"inference: scorer floor (confluent-kafka group, decode, produce, commit), repeat {r + 1}")
        for per_batch, out in ((False, floor), (True, floor_per_batch)):
            out.append(
                scorer_floor(settings, spec.events_topic, floor_topic, total, DEFAULT_MAX_POLL_RECORDS, per_batch)[
                    "events_per_s"
                ]
            )

    env = os.environ | {
        BOOTSTRAP_ENV: ctx.bootstrap,
        "STREAMFIT_HOME": str(home),
        "STREAMFIT_STREAMS": str(streams),
    }
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {f"1_replica{suffix}": [] for suffix in CLIENTS.values()}
    for r in range(mode.scorer_repeats):
        for client, suffix in CLIENTS.items():  # interleaved, so a noisy moment hits both clients
            progress(
                f"inference: scorer ({client}), 1 replica, {total:,} events (repeat {r + 1}/{mode.scorer_repeats})"
            )
            runs[f"1_replica{suffix}"].append(_score_run(spec.name, env, total, 1, logs, client=client))
    if not mode.quick:
        progress("inference: scorer, 1 replica with --max-poll-records 5000 (what the poll batch size costs)")
        for client, suffix in CLIENTS.items():
            runs[f"1_replica_poll_5000{suffix}"] = [
                _score_run(spec.name, env, total, 1, logs, max_poll_records=5000, client=client)
            ]
    if mode.scorer_two_replicas:
        for suffix in CLIENTS.values():
            runs[f"2_replicas{suffix}"] = []
        for r in range(2):
            for client, suffix in CLIENTS.items():
                progress(f"inference: scorer ({client}), 2 replicas in one group, {total:,} events (repeat {r + 1}/2)")
                runs[f"2_replicas{suffix}"].append(_score_run(spec.name, env, total, 2, logs, client=client))
    load_after = os.getloadavg()

    def rates(key: str) -> list[float]:
        return [x["events_per_s"] for x in runs.get(key, []) if x["events_per_s"]]

    one = summary(rates("1_replica"))
    floor_median = summary(floor)["median"]
    out: dict[str, Any] = {
        "stream": spec.name,
        "partitions": spec.partitions,
        "events": total,
        "bare_read_events_per_s": summary(bare),
        "bare_read_decode_events_per_s": summary(bare_decode),
        "floor_events_per_s": summary(floor),
        "floor_flush_per_batch_events_per_s": summary(floor_per_batch),
        "runs": runs,
        "events_per_s": {key: summary(rates(key)) for key in runs},
        "per_replica_vs_bare_read": ratio(one["median"], summary(bare)["median"]),
        "per_replica_vs_floor": {
            client: ratio(summary(rates(f"1_replica{suffix}"))["median"], floor_median)
            for client, suffix in CLIENTS.items()
        },
        "peak_rss_mib": summary([m for x in runs["1_replica"] for m in x["peak_rss_mib"] if m]),
        "start_to_healthy_s": summary([s for x in runs["1_replica"] for s in x["start_to_healthy_s"] if s]),
        "load_average_1m": {"before": load_before[0], "after": load_after[0]},
        "machine_busy_fraction": {key: _summary_of(r, "machine_busy_fraction") for key, r in runs.items()},
        "scorer_cores": {key: _summary_of(r, "scorer_cores") for key, r in runs.items()},
        "cores": os.cpu_count(),
    }
    if "2_replicas" in runs:
        out["two_vs_one_replica"] = ratio(summary(rates("2_replicas"))["median"], one["median"])
        out["two_vs_one_replica_by_client"] = {
            client: ratio(
                summary(rates(f"2_replicas{suffix}"))["median"], summary(rates(f"1_replica{suffix}"))["median"]
            )
            for client, suffix in CLIENTS.items()
        }
    progress(
        "inference: scorer per replica "
        + ", ".join(f"{c} {summary(rates(f'1_replica{x}'))['median']:,.0f}" for c, x in CLIENTS.items())
        + f" events/s vs floor {floor_median:,.0f}/s and bare read {out['bare_read_events_per_s']['median']:,.0f}/s"
    )
    return out


def run(ctx: BenchContext) -> dict[str, Any]:
    spec = bench_spec(unique_name("bench_infer"))
    progress("inference: training one model per library on the same 10,000 rows")
    sk, onnx, _, rv, X, dicts = _train_models(spec)
    progress(f"inference: single-row latency, {ctx.mode.single_row_calls:,} calls per library (interleaved)")
    single = _latencies(ctx, sk, onnx, rv, X, dicts)
    progress(
        "inference: p50/p99 us: "
        + ", ".join(f"{k} {single[k]['p50']:.1f}/{single[k]['p99']:.1f}" for k in ("onnxruntime", "sklearn", "river"))
    )
    progress(f"inference: batch throughput, {BATCH_ROWS:,} rows per call x {ctx.mode.batch_repeats}")
    batch = _batch_throughput(ctx, sk, onnx, rv, X, dicts)
    scorer = scorer_section(ctx)
    return {
        "description": "latency in microseconds per call; throughput in rows/s; scorer in events/s",
        "onnx_intra_op_threads": 1,
        "single_row_us": single,
        "batch_rows_per_s": batch,
        "scorer": scorer,
    }
