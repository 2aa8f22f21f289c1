"""Part 17 through the daemon: `batch.early_cut` off against on, with the real sensors, scorer and label joiner.

`early_cut_product.py` stands in for the scorer and the label joiner and ticks the sensors once per
50-row step. Here everything is the product's own: `DaemonStreams` (a real dagster-daemon and code
server), `streamfit serve` (the scorer: consumes the events, writes the predictions topic) and
`streamfit labels join` (live_metrics.jsonl checkpoints) as child processes, and the demo's `Replay`
producing `dev.datasets.synthetic_events` (seed 7) at a steady rate, each label `LABEL_DELAY_S` after
its event. What is measured is what the scorer served: its predictions topic joined with the labels
by event id, per row of the stream.

Settings are fixed here, before any run (see benchmarks/README.md, Part 17, "Through the daemon"): a
batch lasts `BATCH_ROWS / RATE` = 25 s, five sensor ticks, and `max_wait_s` is well above it, so the
size trigger (not the age one) ends a batch and the early cut is evaluated at the ticks in between.

    python -m benchmarks.early_cut_daemon [--rows 35000] [--change 15000] [--no-change] [--bootstrap HOST:PORT]
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import orjson

RATE = 200.0  # events/s
BATCH_ROWS = 5000  # 25 s of events: five sensor ticks per batch
BATCH = {"rows": BATCH_ROWS, "max_rows": 2 * BATCH_ROWS, "max_wait_s": 60, "sensor_interval_s": 5}
DRIFT = {"interval_s": 5, "cooldown_s": 120}  # the demo's cadence
FLUSH_S = 1.0  # label-join checkpoints: rows / (4 * rate) = 6.25 s allows up to that; 1 s gives ~25 a batch
WINDOW = 200  # rows per served-accuracy window
TOLERANCE = 0.02  # "recovered": a window within 2 points of the pre-change level
RUN_TIMEOUT_S = 360.0
PROBE_S = 3.0  # how often the predictions topic's end is probed (each probe is a consumer on the broker)
DRAIN_TIMEOUT_S = 60.0
RESULTS = Path(__file__).resolve().parent / "results" / "early_cut_daemon"


# ---- pure helpers (tests/benchmarks/test_early_cut_daemon.py) ----


def served_outcome(predictions: dict[int, Any], labels: np.ndarray) -> np.ndarray:
    """Per row: 1.0 if the served prediction equals the label, 0.0 if not, NaN if nothing was served."""
    outcome = np.full(len(labels), np.nan)
    for row, predicted in predictions.items():
        if 0 <= row < len(labels):
            outcome[row] = float(int(predicted) == int(labels[row]))
    return outcome


def accuracy(outcome: np.ndarray, start: int, end: int) -> float | None:
    """Served accuracy over rows [start, end) that were served; None when none was."""
    part = outcome[max(0, start) : min(len(outcome), end)]
    served = part[~np.isnan(part)]
    return float(served.mean()) if len(served) else None


def rows_to_recover(
    outcome: np.ndarray, change: int, before: float, window: int = WINDOW, tolerance: float = TOLERANCE
) -> int | None:
    """Rows from `change` to the end of the first `window`-row window (aligned on the change) whose
    served accuracy is within `tolerance` of `before`; None if no window after the change gets there."""
    for start in range(change, len(outcome) - window + 1, window):
        value = accuracy(outcome, start, start + window)
        if value is not None and value >= before - tolerance:
            return start + window - change
    return None


def reason_kind(reason: str) -> str:
    """A skip reason without its numbers and version names, to count how often each kind occurred."""
    reason = re.sub(r"\brun [0-9a-f]{8}\b", "run R", reason)
    return re.sub(r"\bv\d+\b", "vN", re.sub(r"-?\d[\d,.]*(e-?\d+)?", "#", reason))


def summarize(outcome: np.ndarray, change: int | None, batch: int) -> dict[str, Any]:
    """Served accuracy overall, and around `change` (None: a stream without one)."""
    out: dict[str, Any] = {
        "served_rows": int((~np.isnan(outcome)).sum()),
        "accuracy": accuracy(outcome, 0, len(outcome)),
    }
    if change is None or change >= len(outcome):
        return out
    before = accuracy(outcome, change - batch, change)
    out |= {
        "before": before,
        "after_1_batch": accuracy(outcome, change, change + batch),
        "after_2_batches": accuracy(outcome, change, change + 2 * batch),
        "after_to_end": accuracy(outcome, change, len(outcome)),
        "rows_to_recover": rows_to_recover(outcome, change, before) if before is not None else None,
    }
    return out


# ---- the run ----


def stream_spec(name: str, early_cut: bool):
    """The shipped synthetic stream's shape on one partition, with this benchmark's batching."""
    from dagster_project.spec import get_spec

    raw = get_spec("synthetic").model_dump(mode="json")
    raw["name"] = name
    raw["partitions"] = 1
    raw["batch"] |= BATCH | {"early_cut": early_cut}
    raw["drift"] |= DRIFT
    raw["labels"] = (raw.get("labels") or {}) | {"flush_interval_s": FLUSH_S}
    from dagster_project.spec import StreamSpec

    return StreamSpec.model_validate(raw)


def read_predictions(settings, topic: str) -> dict[int, tuple[Any, str]]:
    """Row -> (prediction, model version) of every prediction record (the last one if an event was scored twice)."""
    from dagster_project.kafka.io import probe_partitions, read_range

    states = probe_partitions(settings, topic, {})
    ranges = {s.partition: (s.log_start, s.high_water) for s in states if s.high_water > s.log_start}
    out: dict[int, tuple[Any, str]] = {}
    for record in read_range(settings, topic, ranges):
        value = orjson.loads(record.value)
        out[int(str(value["id"]).rsplit("-", 1)[1])] = (value["prediction"], value["model_version"])
    return out


def sensor_ticks(instance, sensor_name: str) -> list[Any]:
    from dagster._core.definitions.run_request import InstigatorType

    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.name == sensor_name:
            return list(instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=10_000))
    return []


def failure_message(instance, run_id: str) -> str | None:
    """The first step or run failure's message of a failed run (why the daemon retried it)."""
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is not None and event.event_type.name in ("STEP_FAILURE", "RUN_FAILURE"):
            return (event.message or entry.user_message or "")[:600]
    return None


def sensor_lines(daemon_log: Path, stream: str) -> list[str]:
    """The daemon's log lines of the stream's Kafka sensor (timestamped skips and launches), minus its
    "Checking for new runs" lines."""
    if not daemon_log.exists():
        return []
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    lines = (ansi.sub("", line) for line in daemon_log.read_text(errors="replace").splitlines())
    return [line for line in lines if f"{stream}_kafka_sensor" in line and "Checking for new runs" not in line]


def sensor_story(instance, spec) -> dict[str, Any]:
    """What the Kafka sensor did: its skip reasons by kind (and the early-cut ones in full), the runs it
    launched with their ranges and cut tags."""
    from dagster_project import names

    ticks = sensor_ticks(instance, f"{spec.name}_kafka_sensor")
    skips = [t.skip_reason for t in ticks if t.skip_reason]
    no_cut = [s.split("no early cut: ", 1)[1] for s in skips if "no early cut: " in s]
    runs = []
    for run in instance.get_runs():
        tags = run.tags
        if tags.get(names.STREAM_TAG) != spec.name or names.RANGES_TAG not in tags:
            continue
        runs.append(
            {
                "job": run.job_name,
                "ranges": tags.get(names.RANGES_TAG),
                "early_cut": tags.get(names.EARLY_CUT_TAG),
                "cut_reason": tags.get(names.CUT_REASON_TAG),
                "status": run.status.value,
                "failure": failure_message(instance, run.run_id) if run.status.value == "FAILURE" else None,
            }
        )
    return {
        "ticks": len(ticks),
        "skip_kinds": Counter(reason_kind(s) for s in skips).most_common(12),
        "no_cut_kinds": Counter(reason_kind(s) for s in no_cut).most_common(12),
        "no_cut_last": no_cut[:8],  # newest first
        "runs": sorted(runs, key=lambda r: str(r["ranges"])),
    }


def run(bootstrap: str, early_cut: bool, rows: int, change: int | None, home: Path) -> dict[str, Any]:
    """One stream under the daemon, a scorer and a joiner; what was served, cut and retrained."""
    from benchmarks.daemon_stream import DaemonStreams
    from dagster_project.dev.datasets import synthetic_events
    from dagster_project.dev.demo import Child, Replay, stop_all
    from dagster_project.kafka.brokers.tansu import free_port
    from dagster_project.kafka.io import probe_partitions

    # unique: a broker given with --bootstrap may hold an earlier run's topics
    name = f"cut{'on' if early_cut else 'off'}{'' if change is not None else 'flat'}{uuid.uuid4().hex[:6]}"
    spec = stream_spec(name, early_cut)
    change_at = change if change is not None else rows + 1
    labels = np.array([e.label for e in synthetic_events(rows=rows, change_at=change_at)])
    began = time.monotonic()

    def say(text: str) -> None:
        print(f"[{name} {time.monotonic() - began:5.0f}s] {text}", flush=True)

    with ExitStack() as stack:
        streams = stack.enter_context(DaemonStreams(home, bootstrap, [spec]))
        (home / "logs").mkdir(parents=True, exist_ok=True)
        children = [
            Child("scorer", ["serve", spec.name, "--port", str(free_port())], streams.env, home / "logs"),
            Child(
                "labels", ["labels", "join", spec.name, "--flush-interval", str(FLUSH_S)], streams.env, home / "logs"
            ),
        ]
        stack.callback(stop_all, children)
        say(f"daemon up; sensor ticked after {streams.wait_for_sensor(spec, timeout_s=120):.0f} s")
        replay = Replay(streams.settings, spec, RATE, rows, change_at)
        replay.start()
        stack.callback(replay.stop)
        last = 0.0
        drained_at = None
        while True:
            streams.services.check_alive()
            for child in children:
                child.check()
            if replay.failure:
                raise RuntimeError(f"producer failed: {replay.failure!r}")
            served = sum(s.high_water for s in probe_partitions(streams.settings, spec.predictions_topic, {}))
            elapsed = time.monotonic() - began
            if time.monotonic() - last >= 15:
                last = time.monotonic()
                versions = streams.registry.versions(spec.name)
                say(
                    f"sent {replay.sent:,}, labels {replay.labels:,}, predictions {served:,}, "
                    f"versions {len(versions)}, champion {streams.registry.champion(spec.name)}"
                )
            if replay.done and served >= rows:
                drained_at = drained_at or time.monotonic()
                if time.monotonic() - drained_at > 3 * FLUSH_S + 2:  # the joiner's last checkpoints
                    break
            if elapsed > RUN_TIMEOUT_S or (replay.done and drained_at is None and elapsed > RUN_TIMEOUT_S - 30):
                say(f"stopping at the {RUN_TIMEOUT_S:.0f} s bound ({served:,} of {rows:,} predictions)")
                break
            time.sleep(PROBE_S)
        predictions = read_predictions(streams.settings, spec.predictions_topic)
        story = sensor_story(streams.instance, spec)
        decisions = streams.registry.decisions(spec.name)
        versions = streams.registry.versions(spec.name)
        daemon_lines = sensor_lines(home / "logs" / "dagster-daemon.log", spec.name)
    outcome = served_outcome({row: p for row, (p, _) in predictions.items()}, labels)
    served_by: list[tuple[int, str]] = []
    for row in sorted(predictions):
        if not served_by or served_by[-1][1] != predictions[row][1]:
            served_by.append((row, predictions[row][1]))
    actions = [
        {k: d.get(k) for k in ("action", "to_version", "since", "after_cut", "second_cut", "cut_version")}
        | {"reasons": [r[:160] for r in d.get("reasons", [])][:3]}
        for d in decisions
        if d.get("kind") == "drift_action"
    ]
    return {
        "stream": spec.name,
        "early_cut": early_cut,
        "rows": rows,
        "change": change,
        "seconds": round(time.monotonic() - began, 1),
        "summary": summarize(outcome, change, BATCH_ROWS),
        "cuts": [r for r in story["runs"] if r["early_cut"]],
        "runs": story["runs"],
        "drift_actions": actions,
        "retrains": sum(1 for a in actions if a.get("action") != "rollback"),
        "versions": len(versions),
        "served_from": served_by,
        "sensor": {k: v for k, v in story.items() if k != "runs"},
        "sensor_log": daemon_lines,
        "window_accuracy": [accuracy(outcome, s, s + WINDOW) for s in range(0, rows, WINDOW)],
    }


def line(result: dict[str, Any]) -> str:
    s = result["summary"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    on = "on " if result["early_cut"] else "off"
    head = f"early_cut {on}: served {s['served_rows']:,} rows, accuracy {fmt(s['accuracy'])}"
    if result["change"] is not None:
        head += (
            f"; before {fmt(s['before'])}, after 1 batch {fmt(s['after_1_batch'])}, "
            f"2 batches {fmt(s['after_2_batches'])}, "
            f"to end {fmt(s['after_to_end'])}; rows to recover {s['rows_to_recover']}"
        )
    cuts = [f"{c['early_cut']} {c['ranges']}" for c in result["cuts"]]
    return (
        f"{head}; cuts {cuts}; retrains {result['retrains']}; versions {result['versions']} ({result['seconds']:.0f} s)"
    )


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def write(
    results: list[dict[str, Any]], change: int | None, rows: int, configurations: list[bool], tag: str = ""
) -> Path:
    """The results so far; `tag` ends the file's name, so a repeat does not overwrite an earlier run's."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    kind = "nochange" if change is None else f"change{change}"
    out = RESULTS / f"{kind}_rows{rows}_{'-'.join('on' if c else 'off' for c in configurations)}{tag}.json"
    out.write_bytes(orjson.dumps({"argv": sys.argv, "results": results}, option=orjson.OPT_INDENT_2))
    print(f"wrote {out}", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=35_000)
    parser.add_argument("--change", type=int, default=15_000)
    parser.add_argument("--no-change", action="store_true", help="a stream without a concept change")
    parser.add_argument("--only", choices=("off", "on"), help="run one configuration only")
    parser.add_argument("--bootstrap", help="an existing broker (default: the embedded Tansu broker)")
    parser.add_argument("--tag", default="", help="ends the result file's name (e.g. _waiting), keeping older files")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # a stop takes the KeyboardInterrupt path: children are stopped
    from dagster_project.kafka.brokers.tansu import EmbeddedBroker

    change = None if args.no_change else args.change
    configurations = [c == "on" for c in ([args.only] if args.only else ["off", "on"])]
    results = []
    for on in configurations:
        # a fresh embedded broker per configuration: the second must not read a broker holding the first's topics
        with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
            bootstrap = args.bootstrap
            if not bootstrap:
                bootstrap = stack.enter_context(EmbeddedBroker(log_path=Path(tmp) / "tansu.log")).bootstrap
            result = run(bootstrap, on, args.rows, change, Path(tmp) / ("on" if on else "off"))
            print(line(result), flush=True)
            print(f"  sensor: {orjson.dumps(result['sensor']).decode()}", flush=True)
            print(f"  drift actions: {orjson.dumps(result['drift_actions']).decode()}", flush=True)
            results.append(result)
            write(results, change, args.rows, configurations, args.tag)  # after each configuration
    if len(results) == 2 and change is not None:
        off, on = (r["summary"] for r in results)
        for key in ("after_1_batch", "after_2_batches", "after_to_end", "rows_to_recover"):
            if off.get(key) and on.get(key) is not None:
                print(f"on/off {key}: {on[key] / off[key]:.3f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
