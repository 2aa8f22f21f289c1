"""Freshness: from an event produced to a model that has learned it, with the real Dagster daemon.

A stream with the shipped `synthetic` spec's defaults (batch.rows 1,000, max_wait_s 10, sensor
interval 5 s) runs under a real `dagster-daemon` (`DagsterServices`, the instance from
`instance.write_instance_config`, as `tests/test_end_to_end.py` does), with a scorer's champion
watcher and HTTP API (`ScoringService.start()`, no Kafka loop) following the registry.

Batch k: 1,000 events are produced at once (t0 = all acknowledged); the benchmark then watches,
every 50 ms, the registry's versions and champion alias and the scorer's `/healthz`. The next
batch is produced only when batch k's run has ended, so each sample starts from an idle system.

- **produced → served** (the headline): from t0 to the first moment the scorer's `/healthz`
  reports a version trained on batch k. The promotion gate decides in the run that trains the
  version (on the batch's unseen tail, which the next version learns), so this is the head's
  latency plus the gate and the scorer's swap (its 0.25 s watch interval); split into
  *head learned*, *promotion* (version visible to champion alias) and *scorer swap*. The first
  version of a stream is champion at once, so batch 0 is not a served sample.
- **head learned it**: the first registry version trained on batch k (its batch reaches k's end;
  it learned everything but the batch's tail). Split into
  *waiting* (t0 to the run being enqueued by the sensor tick), *run launch* (queue, then the run
  worker's spawn, then its code load until RUN_START, from the run's Dagster event log), *compute*
  (RUN_START to the version's `created_at`: the steps, with their in-step imports) and *swap*
  (until the version directory is visible).
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.common import percentiles, progress, summary, unique_name
from benchmarks.context import BenchContext
from benchmarks.daemon_stream import POLL_S, DaemonStreams, iso, run_timeline
from benchmarks.data import bench_spec, encode, event_ranges, events, produce_round_robin

BATCH_TIMEOUT_S = 180


def run(ctx: BenchContext) -> dict[str, Any]:
    mode = ctx.mode
    settings = ctx.settings
    spec = bench_spec(unique_name("bench_fresh"))
    rows = spec.batch.rows
    measured = mode.freshness_batches
    total_batches = measured if mode.quick else measured + 1  # full: one more so the last batch is promoted too
    home = ctx.workdir / "freshness"
    produced: list[dict[str, float]] = []
    head_version: list[str] = []
    progress(f"freshness: starting dagster-daemon on stream {spec.name} (batch.rows {rows}, defaults)")
    with DaemonStreams(home, ctx.bootstrap, [spec]) as streams:
        observer = streams.watch(spec)
        inst = streams.instance
        daemon_ready_s = streams.wait_for_sensor(spec)
        progress(f"freshness: daemon ticked the sensor after {daemon_ready_s:.1f}s; {total_batches} batches follow")
        for k in range(total_batches):
            pairs = encode(events(rows, start=k * rows, seed=17), ts=time.time())
            t_start = time.time()
            produce_round_robin(settings, spec, pairs)
            t0 = time.time()
            produced.append({"start": t_start, "acked": t0})
            ends = {p: e for p, (_, e) in event_ranges(spec, k * rows, rows).items()}
            deadline = time.monotonic() + BATCH_TIMEOUT_S
            while not observer.covering(ends):
                streams.services.check_alive()
                if time.monotonic() > deadline:
                    log = streams.daemon_log_tail()
                    raise RuntimeError(f"batch {k} not learned within {BATCH_TIMEOUT_S}s; daemon log:\n{log}")
                time.sleep(POLL_S)
            version = observer.covering(ends)[0]
            head_version.append(version)
            lag = observer.head_seen[version] - t0
            run_id = observer.meta[version]["run_id"]
            while True:  # the next batch starts from an idle stream
                record = inst.get_run_record_by_id(run_id)
                if record is not None and record.end_time is not None:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"run {run_id} of batch {k} did not end within {BATCH_TIMEOUT_S}s")
                time.sleep(0.2)
            progress(f"freshness: batch {k + 1}/{total_batches}: {version} learned it {lag:.1f}s after produce")
        time.sleep(1.0)  # the last swap
        timelines = {v: run_timeline(inst, observer.meta[v]["run_id"]) for v in set(head_version)}
        progress("freshness: stopping the daemon")

    return _analyse(spec, rows, measured, produced, head_version, observer, streams.registry, timelines, daemon_ready_s)


def _analyse(spec, rows, measured, produced, head_version, observer, registry, timelines, daemon_ready_s):
    history = {h["version"]: iso(h["at"]) for h in registry.champion_history(spec.name)}
    samples = []
    for k in range(measured):
        version = head_version[k]
        meta = observer.meta[version]
        t0 = produced[k]["acked"]
        timeline = timelines[version]
        ev = timeline["events"]
        created = iso(meta["created_at"])
        enqueued = ev.get("RUN_ENQUEUED") or ev.get("RUN_STARTING")
        launched = ev.get("RUN_DEQUEUED") or ev.get("RUN_STARTING") or enqueued
        worker = timeline["worker_started"]
        started = ev.get("RUN_START")
        sample: dict[str, Any] = {
            "batch": k,
            "version": version,
            "run_id": meta["run_id"],
            "produce_s": t0 - produced[k]["start"],
            "head_s": observer.head_seen[version] - t0,
            "waiting_s": enqueued - t0 if enqueued else None,
            "queue_s": launched - enqueued if enqueued and launched else None,
            "process_start_s": worker - launched if worker and launched else None,
            "code_load_s": started - worker if started and worker else None,
            "compute_s": created - started if started else None,
            "head_swap_s": observer.head_seen[version] - created,
            "run_tail_s": (ev.get("RUN_SUCCESS") or created) - created,
            "steps_s": timeline["step_s"],
            "run_events_after_produce_s": {kind: ts - t0 for kind, ts in sorted(ev.items(), key=lambda kv: kv[1])},
        }
        sample["launch_s"] = started - enqueued if started and enqueued else None
        ends = {p: e for p, (_, e) in event_ranges(spec, k * rows, rows).items()}
        covering = set(observer.covering(ends))
        served = [t for v, t in observer.served_seen.items() if v in covering]
        promoted = [history[v] for v in covering if v in history]
        if k > 0 and served:
            served_at = min(served)
            promoted_at = min(promoted) if promoted else None
            sample["champion_s"] = served_at - t0
            sample["champion_parts_s"] = {
                "head_learned": sample["head_s"],
                "promotion": (promoted_at - observer.head_seen[version]) if promoted_at else None,
                "scorer_swap": (served_at - promoted_at) if promoted_at else None,
            }
        samples.append(sample)

    def dist(key: str, rows_: list[dict] = samples) -> dict[str, Any]:
        values = [s[key] for s in rows_ if s.get(key) is not None]
        return {**summary(values), **percentiles(values, (50, 95))}

    champion_samples = [s for s in samples if "champion_s" in s]
    step_names = sorted({step for s in samples for step in s["steps_s"]})
    steps = {step: summary([s["steps_s"][step] for s in samples if step in s["steps_s"]]) for step in step_names}
    result = {
        "stream": spec.name,
        "batch_rows": rows,
        "sensor_interval_s": spec.batch.sensor_interval_s,
        "max_wait_s": spec.batch.max_wait_s,
        "batches": measured,
        "daemon_ready_s": daemon_ready_s,
        "head_learned_s": dist("head_s"),
        "head_breakdown_s": {
            key: dist(key)
            for key in (
                "waiting_s",
                "launch_s",
                "queue_s",
                "process_start_s",
                "code_load_s",
                "compute_s",
                "head_swap_s",
                "run_tail_s",
            )
        },
        "steps_s": steps,
        "champion_served_s": dist("champion_s", champion_samples),
        "champion_breakdown_s": {
            part: {
                **summary(
                    [s["champion_parts_s"][part] for s in champion_samples if s["champion_parts_s"][part] is not None]
                ),
            }
            for part in ("head_learned", "promotion", "scorer_swap")
        },
        "champion_samples": len(champion_samples),
        "samples": samples,
    }
    served = result["champion_served_s"]
    progress(
        "freshness: "
        + (
            f"produced -> served p50 {served['p50']:.1f}s p95 {served['p95']:.1f}s; "
            if champion_samples
            else "produced -> served: no sample; "
        )
        + f"head learned p50 {result['head_learned_s']['p50']:.1f}s p95 {result['head_learned_s']['p95']:.1f}s"
    )
    return result
