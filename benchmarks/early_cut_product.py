"""Part 17's product check: one stream with an abrupt change through the product's own sensors and jobs,
`batch.early_cut` on against off, on the embedded broker.

Rows are produced a step at a time; after each step the served champion (the registry's alias, its
fitted estimator) predicts the step's rows and their outcome is appended to live_metrics.jsonl as one
label-join checkpoint (labels at once: what the scorer and the joiner would write); then the Kafka
sensor and the drift sensor tick once each (`build_sensor_context` on a real instance) and every run
they request is executed in process. Wall-clock sensor ticks and training times are not modelled: a
step is one tick. What it shows is whether the wiring cuts and recovers sooner, not latency.

    python -m benchmarks.early_cut_product [--rows 4000] [--change 2000] [--batch 400] [--step 50]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import numpy as np
import orjson

from dagster_project import names
from dagster_project.dev.datasets import synthetic_events
from dagster_project.dev.producer import produce
from dagster_project.factory import build_stream_definitions
from dagster_project.ingest.events import make_event
from dagster_project.kafka.brokers.tansu import EmbeddedBroker
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.labels.store import live_metrics_path
from dagster_project.registry.store import FilesystemRegistry
from dagster_project.resources import KafkaResource, RegistryResource
from dagster_project.spec import StreamSpec


def stream_spec(early_cut: bool, batch: int) -> StreamSpec:
    """The shipped synthetic stream's shape, one partition, the product's defaults otherwise."""
    return StreamSpec.model_validate(
        {
            "name": f"cut{uuid.uuid4().hex[:8]}",
            "partitions": 1,
            "features": [{"name": f"x{i}"} for i in range(5)],
            "label": {"classes": [0, 1]},
            "batch": {"rows": batch, "max_wait_s": 3600, "early_cut": early_cut},
            "labels": {"flush_interval_s": 1},
        }
    )


def _checkpoint(registry: FilesystemRegistry, spec: StreamSpec, seq: int, version: str, correct: np.ndarray) -> None:
    line = {
        "seq": seq,
        "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "stream": spec.name,
        "task": spec.task,
        "versions": {version: {"rows": len(correct), "correct": int(correct.sum())}},
        "counters": {},
        "pending": {"predictions": 0, "labels": 0},
    }
    with open(live_metrics_path(registry.root, spec.name), "ab") as fh:
        fh.write(orjson.dumps(line) + b"\n")


def run(bootstrap: str, early_cut: bool, rows: int, change: int, batch: int, step: int, home: Path) -> dict:
    """Served outcome per row (1 correct, 0 wrong, NaN before the first champion), cuts and retrains."""
    spec = stream_spec(early_cut, batch)
    registry = FilesystemRegistry(home / spec.name / "registry")
    live_metrics_path(registry.root, spec.name).parent.mkdir(parents=True, exist_ok=True)
    resources = {"kafka": KafkaResource(bootstrap=bootstrap), "registry": RegistryResource(root=str(registry.root))}
    defs = dg.Definitions.merge(build_stream_definitions(spec), dg.Definitions(resources=resources))
    settings = KafkaSettings(bootstrap=bootstrap)
    events = list(synthetic_events(rows=rows, change_at=change, seed=7))
    X = np.array([[e.features[n] for n in spec.input_names] for e in events])
    y = np.array([e.label for e in events])
    outcome = np.full(rows, np.nan)
    cuts: list[str] = []
    retrains: list[dict] = []
    models: dict[str, object] = {}
    served: list[tuple[int, str]] = []  # (first row, champion) each time the served champion changed
    (home / spec.name / "dagster").mkdir(parents=True)
    with dg.instance_for_test(temp_dir=str(home / spec.name / "dagster")) as instance:
        for seq, start in enumerate(range(0, rows, step), start=1):
            end = min(rows, start + step)
            produce(
                settings,
                spec,
                ((e.event_id.encode(), make_event(e.event_id, e.features, e.label, 0.0)) for e in events[start:end]),
            )
            champion = registry.champion(spec.name)
            if champion and (not served or served[-1][1] != champion):
                served.append((start, champion))
            if champion:
                model = models.setdefault(champion, registry.load_estimator(spec.name, champion))
                outcome[start:end] = np.asarray(model.predict(X[start:end])) == y[start:end]
                time.sleep(0.002)  # the checkpoint comes after the rows were produced, as a joiner's does
                _checkpoint(registry, spec, seq, champion, outcome[start:end].astype(bool))
            _tick_and_run(defs, spec, instance, resources, "kafka_sensor", cuts)
            _tick_and_run(defs, spec, instance, resources, "drift_sensor", cuts)
        actions = [d for d in registry.decisions(spec.name) if d.get("kind") == "drift_action"]
        retrains = [
            {k: a.get(k) for k in ("to_version", "since", "after_cut", "second_cut", "cut_version")} for a in actions
        ]
    return {"early_cut": early_cut, "outcome": outcome, "cuts": cuts, "actions": retrains, "served": served}


def _tick_and_run(defs, spec, instance, resources, sensor: str, cuts: list[str]) -> None:
    context = dg.build_sensor_context(instance=instance, resources=resources)
    result = defs.resolve_sensor_def(f"{spec.name}_{sensor}")(context)
    requests = result.run_requests if isinstance(result, dg.SensorResult) else [result]
    for request in requests:
        if not isinstance(request, dg.RunRequest):
            continue
        if names.EARLY_CUT_TAG in request.tags:
            cuts.append(f"{request.tags[names.EARLY_CUT_TAG]} {request.tags[names.RANGES_TAG]}")
        job = defs.resolve_job_def(request.job_name or f"{spec.name}_training")
        job.execute_in_process(run_config=request.run_config, instance=instance, tags=request.tags)


def summary(result: dict, change: int, batch: int) -> str:
    o = result["outcome"]
    if change >= len(o):  # no change: only what it did (a cut or retrain here is a false one)
        return (
            f"early_cut {'on ' if result['early_cut'] else 'off'}: no change; served accuracy {np.nanmean(o):.4f}; "
            f"cuts {result['cuts']}; actions {result['actions']}"
        )
    spans = [(change, change + batch), (change, change + 2 * batch), (change, len(o))]
    accuracy = ", ".join(f"rows {s}-{e} {np.nanmean(o[s:e]):.4f}" for s, e in spans)
    before = np.nanmean(o[max(0, change - 2 * batch) : change])
    recovered = next(
        (i - change for i in range(change, len(o) - 100) if np.nanmean(o[i : i + 100]) >= before - 0.05), None
    )
    return (
        f"early_cut {'on ' if result['early_cut'] else 'off'}: served accuracy before the change {before:.4f}; after "
        f"it {accuracy}; rows until a 100-row window is within 0.05 of before: {recovered}; cuts {result['cuts']}; "
        f"actions {result['actions']}; served from row {result['served']}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--change", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=400)
    parser.add_argument("--step", type=int, default=50)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_path=Path(tmp) / "tansu.log") as broker:
        for on in (False, True):
            began = time.perf_counter()
            result = run(broker.bootstrap, on, args.rows, args.change, args.batch, args.step, Path(tmp))
            print(summary(result, args.change, args.batch) + f" ({time.perf_counter() - began:.0f} s)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
