"""Sustained load: does Streamfit keep up with a stream produced at a fixed rate, and does River?

For each rate R of the mode's ladder, two phases run back to back on the session's broker, each
on its own fresh topic:

- **streamfit**: a stream with the shipped `synthetic` shape and the *default* `batch` settings
  (`BatchSpec()`: rows 1,000, max_rows, max_wait_s, sensor interval) under one real
  `dagster-daemon` with a scorer following its champion (`benchmarks.daemon_stream`, the
  machinery of the freshness section). A paced producer sends R events/s for the mode's seconds.
  Every 0.5 s the lag (events acknowledged - rows the head version learned) is sampled; afterwards
  the versions' metadata give the rows learned per second, the batch sizes the sensor planned, and
  the run event logs the split of each cycle into waiting, launch and compute.
- **river_loop**: the same producer at the same R into a topic read by River's tutorial loop in
  its own process (a subscribed kafka-python consumer, `json.loads`, `learn_one`: the River loop
  of `benchmarks.throughput`), which reports how many records it has learned every 0.25 s.

Both are judged alike. *learned rows/s* is the slope of rows learned between the last point
before the measured window (the second half of the producing time: the first half absorbs
start-up) and the last point inside it (a point: a version, or a River report); *lag mid / end*
are median lags over [D/4, D/2] and [3D/4, D]; *lag slope* is the least-squares trend of the lag
over the second half (rows/s; bounded lag ~ 0). A rate *holds* when the rows learned per second
reach 95 % of the rate really produced. Freshness samples are the producer's acknowledgement
checkpoints in [D/4, 3D/4] (steady state, with production going on after them): from a checkpoint
to the first moment a version covering it was served (Streamfit: `/healthz`; "covering" as in the
freshness section) or learned (River). Samples still not covered when observation stopped count
with the time waited so far (a lower bound) and are counted as `censored`.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from bisect import bisect_left
from typing import Any

import numpy as np

from benchmarks.common import percentiles, progress, ratio, summary, unique_name
from benchmarks.context import BenchContext
from benchmarks.daemon_stream import DaemonStreams, Observer, batch_rows, iso, reached, run_timeline
from benchmarks.data import bench_spec, events
from dagster_project.ingest.events import make_event
from dagster_project.kafka import clients
from dagster_project.kafka.io import ensure_topics
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.spec import BatchSpec, StreamSpec

SAMPLE_S = 0.5
FLUSH_S = 0.25
HOLD_FRACTION = 0.95
POOL = 20_000  # distinct feature rows, re-sent under fresh ids (the quality suite wants unique ids)
SYSTEMS = ("streamfit", "river_loop")


# ---------------------------------------------------------------------------------------------
# The paced producer


def payload_pool(rows: int = POOL) -> list[bytes]:
    """Event bodies after their id and ts: each event is `{"id":"<i>","ts":<t>,` + a pooled tail."""
    head = b'{"id":"x","ts":0.0,'
    pool = []
    for e in events(rows, seed=29):
        body = make_event("x", e.features, e.label, 0.0)
        if not body.startswith(head):
            raise RuntimeError(f"make_event's layout changed: {body[:40]!r}")
        pool.append(body[len(head) :])
    return pool


class PacedProducer(threading.Thread):
    """Sends `rate` events/s for `seconds` with the project's fast producer, event i to partition
    i % P (so a covered offset prefix is a covered event prefix); flushes every 0.25 s and records
    (acknowledged at, events acknowledged) checkpoints."""

    def __init__(
        self, settings: KafkaSettings, topic: str, partitions: int, rate: float, seconds: float, pool: list[bytes]
    ) -> None:
        super().__init__(name=f"producer-{topic}", daemon=True)
        self.settings, self.topic, self.partitions = settings, topic, partitions
        self.rate, self.seconds, self.pool = rate, seconds, pool
        self.checkpoints: list[tuple[float, int]] = []
        self.started_at = self.stopped_at = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._produce()
        except BaseException as exc:  # reported by the phase, not lost in the thread
            self.error = exc

    def _produce(self) -> None:
        producer = clients.fast_producer(self.settings, acks="all")
        pool, n_pool, parts, topic = self.pool, len(self.pool), self.partitions, self.topic
        sent = 0
        self.started_at = start = time.time()
        end = start + self.seconds
        try:
            while True:
                now = time.time()
                if now >= end:
                    break
                target = int((now - start) * self.rate)
                ts = b"%.3f" % now
                while sent < target:
                    value = b'{"id":"e%d","ts":%s,%s' % (sent, ts, pool[sent % n_pool])
                    producer.send(topic, value=value, partition=sent % parts)
                    sent += 1
                producer.flush(30)
                self.checkpoints.append((time.time(), sent))
                time.sleep(max(0.0, FLUSH_S - (time.time() - now)))
            producer.flush(30)
            self.checkpoints.append((time.time(), sent))
        finally:
            producer.close(30)
            self.stopped_at = time.time()

    @property
    def acknowledged(self) -> int:
        return self.checkpoints[-1][1] if self.checkpoints else 0


def covered_events(offsets: dict[int, int], partitions: int) -> int:
    """Events [0, n) wholly covered by per-partition offset ends, under round-robin partitioning."""
    return min(offsets.get(p, 0) * partitions + p for p in range(partitions))


# ---------------------------------------------------------------------------------------------
# Judging a phase: the same for both systems


def _window(points: list[tuple[float, float]], lo: float, hi: float) -> list[tuple[float, float]]:
    return [(t, v) for t, v in points if lo <= t <= hi]


def _slope(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 3:
        return None
    t, v = np.array(points, dtype=np.float64).T
    return float(np.polyfit(t - t[0], v, 1)[0])


def _rate_between_ends(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 2 or points[-1][0] <= points[0][0]:
        return None
    return (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])


def _anchored(points: list[tuple[float, float]], lo: float, hi: float) -> list[tuple[float, float]]:
    """The points in [lo, hi] and the last one before `lo`: a version every 30-40 s leaves a 60 s
    window with one point, and the rate since the previous version is still that cycle's rate."""
    before = [pt for pt in points if pt[0] < lo]
    return before[-1:] + _window(points, lo, hi)


def _first_covering(curve: list[tuple[float, int]], n: int) -> float | None:
    """First time at which the monotone (time, covered events) curve reaches `n`."""
    counts = [c for _, c in curve]
    i = bisect_left(counts, n)
    return curve[i][0] if i < len(curve) else None


def _monotone(points: list[tuple[float, int]]) -> list[tuple[float, int]]:
    out: list[tuple[float, int]] = []
    best = 0
    for t, n in sorted(points):
        best = max(best, n)
        out.append((t, best))
    return out


def freshness(producer: PacedProducer, curve: list[tuple[float, int]], until: float) -> dict[str, Any]:
    """Seconds from each acknowledgement checkpoint in the steady middle of the producing time
    ([D/4, 3D/4]: after start-up, and with production still going on after it, as in a stream
    that never stops) to the first time `curve` covers it."""
    curve = _monotone(curve)
    lo = producer.started_at + producer.seconds / 4
    hi = producer.started_at + 3 * producer.seconds / 4
    values, censored = [], 0
    for t, n in producer.checkpoints:
        if n == 0 or not lo <= t <= hi:
            continue
        seen = _first_covering(curve, n)
        if seen is None:
            censored += 1
            values.append(until - t)
        else:
            values.append(max(0.0, seen - t))
    return {
        **percentiles(values, (50, 95)),
        "max": max(values) if values else None,
        "n": len(values),
        "censored": censored,
    }


def judge(
    rate: float,
    seconds: float,
    producer: PacedProducer,
    lag: list[tuple[float, float]],
    learned: list[tuple[float, float]],
) -> dict[str, Any]:
    """Lag trend, rows learned per second and whether the rate holds, over the second half."""
    t0 = producer.started_at
    mid, end = t0 + seconds / 2, t0 + seconds
    produced = _window([(t, float(n)) for t, n in producer.checkpoints], mid, end)
    produced_rate = _rate_between_ends(produced)
    learned_rate = _rate_between_ends(_anchored(learned, mid, end))

    def median_lag(lo: float, hi: float) -> float | None:
        values = [v for _, v in _window(lag, t0 + lo * seconds, t0 + hi * seconds)]
        return float(np.median(values)) if values else None

    keeps_up = ratio(learned_rate, produced_rate)
    return {
        "rate": rate,
        "produced_events": producer.acknowledged,
        "produced_per_s": produced_rate,
        "learned_rows_per_s": learned_rate,
        "learned_vs_produced": keeps_up,
        "lag_mid": median_lag(0.25, 0.5),
        "lag_end": median_lag(0.75, 1.0),
        "lag_slope_rows_per_s": _slope(_window(lag, mid, end)),
        "holds": keeps_up is not None and keeps_up >= HOLD_FRACTION,
        "lag_samples": lag,
        "learned_points": learned,
    }


def _sample_lag(producer: PacedProducer, learned_now, label: str) -> list[tuple[float, float]]:
    """(time, events acknowledged - rows learned) every 0.5 s while the producer runs; a progress
    line every 10 s; the producer's failure, if any, raised here."""
    lag: list[tuple[float, float]] = []
    last_report = time.monotonic()
    while producer.is_alive():
        lag.append((time.time(), producer.acknowledged - learned_now()))
        if time.monotonic() - last_report >= 10:
            last_report = time.monotonic()
            progress(f"sustained: {label}: lag {lag[-1][1]:,.0f} rows")
        time.sleep(SAMPLE_S)
    if producer.error:
        raise RuntimeError(f"the paced producer failed: {producer.error!r}") from producer.error
    return lag


# ---------------------------------------------------------------------------------------------
# Streamfit under the daemon


def _learned_points(observer: Observer) -> list[tuple[float, float]]:
    return [(observer.head_seen[v], float(sum(meta["offsets"]["learned"].values()))) for v, meta in observer.versions()]


def _cycles(streams: DaemonStreams, observer: Observer, t0: float, lo: float, hi: float) -> dict[str, Any]:
    """Where a version's time goes: sensor wait (previous run's end -> enqueued), Dagster launch
    (enqueued -> RUN_START), compute (RUN_START -> version written); medians over [lo, hi], and
    every run (times from `t0`) for the analysis."""
    parts: dict[str, list[float]] = {"waiting_s": [], "launch_s": [], "compute_s": [], "cycle_s": []}
    sizes, runs, previous_end = [], [], None
    for name, meta in observer.versions():
        timeline = run_timeline(streams.instance, meta["run_id"])
        ev = timeline["events"]
        enqueued = ev.get("RUN_ENQUEUED") or ev.get("RUN_STARTING")
        started, created = ev.get("RUN_START"), iso(meta["created_at"])
        ended = ev.get("RUN_SUCCESS") or created
        run = {
            "version": name,
            "batch_rows": batch_rows(meta),
            "seen_at_s": observer.head_seen[name] - t0,
            "waiting_s": enqueued - previous_end if previous_end and enqueued else None,
            "launch_s": started - enqueued if enqueued and started else None,
            "compute_s": created - started if started else None,
            "cycle_s": ended - previous_end if previous_end else None,
            "steps_s": timeline["step_s"],
        }
        runs.append(run)
        if lo <= observer.head_seen[name] <= hi:
            sizes.append(run["batch_rows"])
            for key, values in parts.items():
                if run[key] is not None:
                    values.append(run[key])
        previous_end = ended
    return {"batch_rows": summary(sizes), **{key: summary(values) for key, values in parts.items()}, "runs": runs}


def streamfit_phase(
    streams: DaemonStreams, spec: StreamSpec, rate: int, seconds: float, drain_s: float, pool: list[bytes]
) -> dict[str, Any]:
    observer = streams.watch(spec)
    producer = PacedProducer(streams.settings, spec.events_topic, spec.partitions, rate, seconds, pool)
    producer.start()

    def learned_now() -> float:
        streams.services.check_alive()
        points = _learned_points(observer)
        return points[-1][1] if points else 0.0

    lag = _sample_lag(producer, learned_now, f"streamfit @ {rate:,}/s")
    total = producer.acknowledged
    deadline = time.time() + drain_s
    while time.time() < deadline:  # let the last events reach the served champion, within the drain time
        served = [reached(observer.meta[v]) for v in list(observer.served_seen) if v in observer.meta]
        if served and max(covered_events(o, spec.partitions) for o in served) >= total:
            break
        time.sleep(SAMPLE_S)
    until = time.time()
    streams.registry.set_halt(  # this stream is done: its backlog must not compete with the next phase
        spec.name, {"kind": "benchmark", "run_id": "sustained", "summary": "sustained-load phase over"}
    )
    _wait_idle(streams, spec)
    learned = _learned_points(observer)
    head_curve = [(observer.head_seen[v], covered_events(reached(m), spec.partitions)) for v, m in observer.versions()]
    served_curve = [
        (t, covered_events(reached(observer.meta[v]), spec.partitions))
        for v, t in list(observer.served_seen.items())
        if v in observer.meta
    ]
    out = judge(rate, seconds, producer, lag, learned)
    out["freshness_served_s"] = freshness(producer, served_curve, until)
    out["freshness_head_s"] = freshness(producer, head_curve, until)
    out["versions"] = len(observer.meta)
    t0 = producer.started_at
    out["cycles"] = _cycles(streams, observer, t0, t0 + seconds / 2, t0 + seconds)
    return out


def _wait_idle(streams: DaemonStreams, spec: StreamSpec, timeout_s: float = 180) -> None:
    """Until no run of `spec`'s stream is queued or running (the halt stops new ones), at most
    `timeout_s`: a huge last batch on a loaded machine may still be running, and is said so."""
    import dagster as dg

    from dagster_project import names

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = streams.instance.get_runs(
            dg.RunsFilter(tags={names.STREAM_TAG: spec.name}, statuses=names.in_flight_statuses()), limit=1
        )
        if not runs:
            return
        time.sleep(0.5)
    progress(f"sustained: a run of {spec.name} is still in flight {timeout_s:g}s after its phase; going on")


# ---------------------------------------------------------------------------------------------
# The River loop in its own process


def river_consumer(bootstrap: str, topic: str, group: str, ready, stop, out) -> None:
    """River's tutorial loop, subscribed in a group; puts (time, records learned) every 0.25 s."""
    from benchmarks.throughput import river_learner, river_model

    settings = KafkaSettings.from_env(bootstrap)
    consumer = clients.group_consumer(settings, group, auto_offset_reset="earliest")
    learned = 0
    handle = river_learner(river_model())
    try:
        clients.subscribe(consumer, [topic])
        while not consumer.assignment():
            consumer.poll(timeout_ms=200)
        ready.set()
        last = 0.0
        while not stop.is_set():
            for records in consumer.poll(timeout_ms=200, max_records=50_000).values():
                handle(records)
                learned += len(records)
            now = time.time()
            if now - last >= FLUSH_S:
                out.put((now, learned))
                last = now
        out.put((time.time(), learned))
    finally:
        consumer.close()


def river_phase(ctx: BenchContext, rate: int, seconds: float, drain_s: float, pool: list[bytes]) -> dict[str, Any]:
    settings = ctx.settings
    topic, partitions = f"{unique_name('bench_river')}.events", 2
    ensure_topics(settings, [topic], partitions)
    mp = multiprocessing.get_context("spawn")
    ready, stop, out = mp.Event(), mp.Event(), mp.Queue()
    child = mp.Process(target=river_consumer, args=(ctx.bootstrap, topic, unique_name("river"), ready, stop, out))
    child.start()
    learned: list[tuple[float, float]] = []

    def drain_queue() -> None:
        while not out.empty():
            t, n = out.get_nowait()
            learned.append((t, float(n)))

    try:
        if not ready.wait(60):
            raise RuntimeError("the River consumer did not get its partitions within 60 s")
        producer = PacedProducer(settings, topic, partitions, rate, seconds, pool)
        producer.start()

        def learned_now() -> float:
            drain_queue()
            return learned[-1][1] if learned else 0.0

        lag = _sample_lag(producer, learned_now, f"river_loop @ {rate:,}/s")
        deadline = time.time() + drain_s
        while time.time() < deadline and (not learned or learned[-1][1] < producer.acknowledged):
            time.sleep(FLUSH_S)
            drain_queue()
        until = time.time()
    finally:
        stop.set()
        child.join(30)
        if child.is_alive():
            child.kill()
            child.join(5)
    drain_queue()
    out_ = judge(rate, seconds, producer, lag, learned)
    curve = [(t, int(n)) for t, n in learned]  # records learned in arrival order, close to event order
    out_["freshness_learned_s"] = freshness(producer, curve, until)
    return out_


# ---------------------------------------------------------------------------------------------
# The section


def sustained_spec(rate: int) -> StreamSpec:
    """The shipped `synthetic` shape with the default batch settings (not the demo's small cap)."""
    return bench_spec(unique_name(f"bench_load{rate}"), batch=BatchSpec().model_dump(mode="json"))


def _line(system: str, rate: int, r: dict[str, Any], fresh_key: str) -> str:
    fresh = r[fresh_key]
    p95 = f"{fresh['p95']:.1f}s" if fresh["p95"] is not None else "-"
    return (
        f"sustained: {system} @ {rate:,}/s: learned {r['learned_rows_per_s'] or 0:,.0f} rows/s of "
        f"{r['produced_per_s'] or 0:,.0f} produced, lag mid {r['lag_mid'] or 0:,.0f} -> end {r['lag_end'] or 0:,.0f}, "
        f"freshness p95 {p95} ({fresh['censored']} censored): {'holds' if r['holds'] else 'falls behind'}"
    )


def _rate(ctx: BenchContext, streams: DaemonStreams, spec: StreamSpec, rate: int, pool: list[bytes]) -> dict[str, Any]:
    """Both systems at one rate, Streamfit first."""
    mode = ctx.mode
    seconds, drain_s = mode.sustained_seconds, mode.sustained_drain_s
    progress(f"sustained: {rate:,} events/s for {seconds:g}s: streamfit (load {os.getloadavg()[0]:.1f})")
    sf = streamfit_phase(streams, spec, rate, seconds, drain_s, pool)
    progress(_line("streamfit", rate, sf, "freshness_served_s"))
    progress(f"sustained: {rate:,} events/s for {seconds:g}s: River loop")
    river = river_phase(ctx, rate, seconds, drain_s, pool)
    progress(_line("river_loop", rate, river, "freshness_learned_s"))
    return {
        "streamfit": sf,
        "river_loop": river,
        "streamfit_vs_river_learned": ratio(sf["learned_rows_per_s"], river["learned_rows_per_s"]),
        "loadavg_1min_after": os.getloadavg()[0],
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    mode = ctx.mode
    rates, seconds, drain_s = mode.sustained_rates, mode.sustained_seconds, mode.sustained_drain_s
    specs = {rate: sustained_spec(rate) for rate in rates}
    pool = payload_pool()
    results: dict[str, Any] = {
        "seconds_per_phase": seconds,
        "drain_s": drain_s,
        "batch": BatchSpec().model_dump(mode="json"),
        "hold_fraction": HOLD_FRACTION,
        "rates": {},
    }
    progress(f"sustained: rates {', '.join(f'{r:,}' for r in rates)}/s, {seconds:g}s each; starting dagster-daemon")
    with DaemonStreams(ctx.workdir / "sustained", ctx.bootstrap, list(specs.values())) as streams:
        results["daemon_ready_s"] = streams.wait_for_sensor(specs[rates[0]])
        for rate in rates:
            try:
                results["rates"][str(rate)] = _rate(ctx, streams, specs[rate], rate, pool)
            except Exception as exc:  # a failed rate must not lose the rates measured before it
                results.setdefault("errors", {})[str(rate)] = repr(exc)
                progress(f"sustained: {rate:,} events/s FAILED: {exc!r}")
    if not results["rates"]:
        raise RuntimeError(f"every rate failed: {results.get('errors')}")
    results["highest_holding_rate"] = {
        system: max((int(r) for r, v in results["rates"].items() if v[system]["holds"]), default=None)
        for system in SYSTEMS
    }
    progress(f"sustained: highest rate that holds: {results['highest_holding_rate']}")
    return results
