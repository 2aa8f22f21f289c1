"""Scale-out training as Dagster steps vs the single in-process step, end to end through real job runs.

- **End to end** (`end_to_end`): for each case (an estimator and its parameters), two streams
  read the same seeded synthetic rows (4 partitions, round-robin): *sequential* has
  `scale_out.workers: 1` (today's job: in-process executor, one `model` step), *fan-out* has
  `workers: 2` (read_plan -> one read step per partition group -> merge_reads, then split -> one fit
  step per partition group -> combine, on the multiprocess executor with
  a preloaded forkserver). Each stream first learns a warm-up batch (its run is reported apart: the
  fan-out's pays the forkserver's first start), then the same batches, in a rotating order. Every
  batch is a real `dagster.execute_job` run (`orchestration/jobs.run_training_job`): read, GX gate,
  learn, ONNX export + parity, register, Kafka commit; step start-up included. Times: the run's
  wall time, the read part (`micro_batch`: the one step, or read_plan's start to merge_reads' end)
  and the `model` part (the one step, or the first split start to the combine's end).
  Accuracy cost: both streams' registered versions scored on the same held-out rows after each batch.
- **Accuracy over many batches** (`prequential`, no broker): the same split -> fit_group -> combine
  in one process (`training.test_then_train_partitioned`) vs `training.test_then_train` from a fresh
  model over a sequence of batches; exact ROC AUC and accuracy over every row scored before it was
  learned. Cheap, so it covers small batches where averaging costs the most.

`python -m benchmarks.scale_out [--full] [--bootstrap HOST:PORT] [--out FILE]` runs it alone (an
embedded broker is started unless `--bootstrap` is given); `python -m benchmarks` includes it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from benchmarks.common import FULL, QUICK, progress, ratio, summary, unique_name
from benchmarks.context import BenchContext
from benchmarks.data import arrays, bench_spec, encode, events, write_spec

WORKERS = 2
PARTITIONS = 4
WAYS = ("sequential", "fan_out")
# Per case (an estimator and its parameters): the batch sizes learned one after another (after a
# warm-up batch), each `repeats` times. `mlp_wide` is the costly estimator: fitting, not start-up, dominates.
WIDE = {"hidden_layer_sizes": [256, 128]}
SIZES: dict[str, dict[str, Any]] = {
    "quick": {
        "end_to_end": {"mlp_classifier": ("mlp_classifier", {}, [8_000])},
        "repeats": 2,
        "warmup_rows": 1_000,
        "holdout_rows": 2_000,
        "prequential": {"batches": 10, "batch_rows": 2_000},
    },
    "full": {
        "end_to_end": {
            "mlp_classifier": ("mlp_classifier", {}, [100_000, 1_000_000]),
            "sgd_classifier": ("sgd_classifier", {}, [100_000, 1_000_000]),
            "mlp_wide": ("mlp_classifier", WIDE, [100_000, 1_000_000]),
        },
        "repeats": 1,
        "warmup_rows": 4_000,
        "holdout_rows": 20_000,
        "prequential": {"batches": 10, "batch_rows": 10_000},
    },
}
PREQUENTIAL_ESTIMATORS = ("sgd_classifier", "mlp_classifier")


def _spec(name: str, estimator: str, workers: int, max_rows: int, params: dict | None = None):
    return bench_spec(
        name,
        partitions=PARTITIONS,
        model={
            "estimator": estimator,
            "params": params or {},
            "scale_out": {"workers": workers, "min_rows_per_worker": 1},
        },
        batch={"rows": max_rows, "max_rows": max_rows, "max_wait_s": 3600},
        promotion={"tail_rows": 0},  # consecutive batches are planned here, back to back
    )


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for a block and put the previous values back after it."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _produce(bootstrap: str, topics: list[str], pairs: list[tuple[bytes, bytes]]) -> float:
    """The same records to every topic, event i on partition i % PARTITIONS (confluent-kafka: fast)."""
    from confluent_kafka import Producer

    from dagster_project.kafka.io import ensure_topics
    from dagster_project.kafka.settings import KafkaSettings

    ensure_topics(KafkaSettings.from_env(bootstrap), topics, PARTITIONS)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1_000_000, "acks": "all"})
    failed: list[Any] = []
    started = time.perf_counter()
    for topic in topics:
        for i, (key, value) in enumerate(pairs):
            while True:
                try:
                    producer.produce(
                        topic,
                        value=value,
                        key=key,
                        partition=i % PARTITIONS,
                        on_delivery=lambda err, _m: err and failed.append(err),
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.flush(120)
    if failed or len(producer):
        raise RuntimeError(f"{len(failed)} records failed, {len(producer)} unacknowledged: {failed[:1]}")
    return time.perf_counter() - started


def _timings(instance, run_id: str) -> dict[str, float]:
    """The run's wall time, its `micro_batch` part (read, parse, dead-letter, validate: the one step, or the
    read plan's start to the merge's end) and its `model` part, from the event log's timestamps."""
    from dagster import DagsterEventType

    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    run = [None, None]
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        kind = event.event_type
        if kind is DagsterEventType.RUN_START:
            run[0] = entry.timestamp
        elif kind in (DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE):
            run[1] = entry.timestamp
        elif kind is DagsterEventType.STEP_START:
            starts[entry.step_key] = entry.timestamp
        elif kind is DagsterEventType.STEP_SUCCESS:
            ends[entry.step_key] = entry.timestamp
    model = [k for k in starts if "__model" in k]
    read = [k for k in starts if "__micro_batch" in k]
    return {
        "run_s": run[1] - run[0],
        "read_s": max(ends[k] for k in read) - min(starts[k] for k in read),
        "read_steps": len(read),
        "model_s": max(ends[k] for k in model) - min(starts[k] for k in model),
        "model_steps": len(model),
    }


def _scores(registry, spec, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, roc_auc_score

    model = registry.load_estimator(spec.name, registry.head(spec.name).name)
    return {
        "roc_auc": float(roc_auc_score(y, model.predict_proba(X)[:, 1])),
        "accuracy": float(accuracy_score(y, model.predict(X))),
    }


def end_to_end(ctx: BenchContext, size: dict[str, Any], cases: list[str] | None = None) -> dict[str, Any]:
    """Sequential vs fan-out jobs, real runs on the real broker, per case and batch size."""
    import dagster as dg

    from dagster_project.kafka.settings import BOOTSTRAP_ENV
    from dagster_project.orchestration.jobs import run_training_job
    from dagster_project.registry.store import FilesystemRegistry

    work = Path(tempfile.mkdtemp(prefix="scale_out_", dir=ctx.workdir))
    plan = {case: value for case, value in size["end_to_end"].items() if not cases or case in cases}
    repeats, warmup = size["repeats"], size["warmup_rows"]
    specs = {}
    for case, (estimator, params, batches) in plan.items():
        largest = max(batches)
        for way, workers in zip(WAYS, (1, WORKERS), strict=True):
            specs[case, way] = _spec(unique_name(f"bench_{way}"), estimator, workers, max(largest, warmup), params)
            write_spec(specs[case, way], work / "streams")
    # The code location the runs load (run_training_job passes it to every step), for this section only.
    location = {"STREAMFIT_STREAMS": str(work / "streams"), "STREAMFIT_HOME": str(work / "home")}
    registry = FilesystemRegistry(work / "home" / "registry")
    longest = max(warmup + sum(b) * repeats for _, _, b in plan.values())
    progress(f"scale_out: generating {longest + size['holdout_rows']:,} seeded synthetic rows")
    source = events(longest + size["holdout_rows"])
    X_hold, y_hold = arrays(source[longest:], [f"x{i}" for i in range(5)])
    pairs = encode(source[:longest])
    out: dict[str, Any] = {}
    (work / "dagster").mkdir()
    with (
        _environment(location | {BOOTSTRAP_ENV: ctx.bootstrap}),
        dg.DagsterInstance.local_temp(str(work / "dagster")) as instance,
    ):
        for case, (_, _, batches) in plan.items():
            rows = warmup + sum(batches) * repeats
            topics = [specs[case, way].events_topic for way in WAYS]
            progress(f"scale_out: producing {rows:,} rows to {len(topics)} topics ({PARTITIONS} partitions)")
            _produce(ctx.bootstrap, topics, pairs[:rows])
            offset = 0

            def learn(way: str, first: int, count: int) -> dict[str, float]:
                spec = specs[case, way]  # noqa: B023 (called inside this loop only)
                ranges = {p: (first // PARTITIONS, (first + count) // PARTITIONS) for p in range(PARTITIONS)}
                result = run_training_job(spec, ranges, instance)
                if not result.success:
                    raise RuntimeError(f"{way} run {result.run_id} failed")
                return _timings(instance, result.run_id)

            first_runs = {}
            for way in WAYS:
                progress(f"scale_out: {case}: warm-up batch of {warmup:,} rows, {way}")
                first_runs[way] = learn(way, offset, warmup)
            offset += warmup
            per_size: dict[str, Any] = {}
            for batch_rows in batches:
                times: dict[str, list[dict[str, float]]] = {w: [] for w in WAYS}
                accuracy: list[dict[str, Any]] = []
                for r in range(repeats):
                    order = WAYS if (r + len(per_size)) % 2 == 0 else WAYS[::-1]
                    for way in order:
                        progress(f"scale_out: {case}: batch of {batch_rows:,} rows, {way} (repeat {r + 1})")
                        times[way].append(learn(way, offset, batch_rows))
                        progress(
                            f"scale_out:   run {times[way][-1]['run_s']:.1f}s, read {times[way][-1]['read_s']:.1f}s, "
                            f"model {times[way][-1]['model_s']:.1f}s"
                        )
                    offset += batch_rows
                    accuracy.append({w: _scores(registry, specs[case, w], X_hold, y_hold) for w in WAYS})
                runs = {w: [t["run_s"] for t in times[w]] for w in WAYS}
                models = {w: [t["model_s"] for t in times[w]] for w in WAYS}
                reads = {w: [t["read_s"] for t in times[w]] for w in WAYS}
                last = accuracy[-1]
                per_size[str(batch_rows)] = {
                    "repeats": repeats,
                    "run_s": {w: summary(runs[w]) for w in WAYS},
                    "model_s": {w: summary(models[w]) for w in WAYS},
                    "read_s": {w: summary(reads[w]) for w in WAYS},
                    "speedup_read": summary(
                        [ratio(s, f) for s, f in zip(reads["sequential"], reads["fan_out"], strict=True)]
                    ),
                    "speedup_run": summary(
                        [ratio(s, f) for s, f in zip(runs["sequential"], runs["fan_out"], strict=True)]
                    ),
                    "speedup_model": summary(
                        [ratio(s, f) for s, f in zip(models["sequential"], models["fan_out"], strict=True)]
                    ),
                    "holdout": last,
                    "auc_difference": last["fan_out"]["roc_auc"] - last["sequential"]["roc_auc"],
                    "accuracy_difference": last["fan_out"]["accuracy"] - last["sequential"]["accuracy"],
                }
                s = per_size[str(batch_rows)]
                progress(
                    f"scale_out: {case} {batch_rows:,} rows: run {s['run_s']['sequential']['median']:.1f}s vs "
                    f"{s['run_s']['fan_out']['median']:.1f}s ({s['speedup_run']['median']:.2f}x), read "
                    f"{s['speedup_read']['median']:.2f}x, model "
                    f"{s['speedup_model']['median']:.2f}x, holdout AUC difference {s['auc_difference']:+.4f}"
                )
            out[case] = {"first_run": first_runs, "warmup_rows": warmup, "sizes": per_size}
    return out


def prequential(estimator: str, X: np.ndarray, y: np.ndarray, partitions: np.ndarray, batch: int) -> dict[str, Any]:
    """Prequential accuracy from a fresh model, one process: sequential vs split/fit_group/combine."""
    from sklearn.metrics import accuracy_score, roc_auc_score

    from dagster_project.learning.prequential import test_then_train, test_then_train_partitioned

    spec = _spec(f"bench_prequential_{estimator}", estimator, WORKERS, batch)
    out: dict[str, Any] = {}
    for way in WAYS:
        model, scores = None, []
        for start in range(0, len(X), batch):
            rows = slice(start, start + batch)
            if way == "sequential":
                model, _, s = test_then_train(model, spec, X[rows], y[rows])
            else:
                model, _, s, report = test_then_train_partitioned(model, spec, X[rows], y[rows], partitions[rows])
                if report.workers != WORKERS:
                    raise RuntimeError(f"scale-out used {report.workers} groups: {report.reason}")
            if s is not None:
                scores.append(np.asarray(s))
        s = np.concatenate(scores)
        truth = y[batch : batch + len(s)]
        out[way] = {"roc_auc": float(roc_auc_score(truth, s)), "accuracy": float(accuracy_score(truth, s > 0.5))}
    out["scored_rows"] = int(len(X) - batch)
    out["auc_difference"] = out["fan_out"]["roc_auc"] - out["sequential"]["roc_auc"]
    out["accuracy_difference"] = out["fan_out"]["accuracy"] - out["sequential"]["accuracy"]
    return out


def run(ctx: BenchContext, cases: list[str] | None = None) -> dict[str, Any]:
    size = SIZES["full" if ctx.mode.name == "full" else "quick"]  # smoke: the quick size
    p = size["prequential"]
    n = p["batches"] * p["batch_rows"]
    progress(f"scale_out: prequential accuracy, {p['batches']} batches of {p['batch_rows']:,} rows, in one process")
    X, y = arrays(events(n), [f"x{i}" for i in range(5)])
    partitions = np.arange(n) % PARTITIONS
    accuracy = {}
    for estimator in PREQUENTIAL_ESTIMATORS:
        accuracy[estimator] = prequential(estimator, X, y, partitions, p["batch_rows"]) | p
        progress(f"scale_out: {estimator}: prequential AUC difference {accuracy[estimator]['auc_difference']:+.4f}")
    return {
        "description": "the training job with workers: 1 (one in-process model step) vs workers: 2 (a step per "
        "partition group on the multiprocess executor), real runs end to end, same rows, rotating order",
        "workers": WORKERS,
        "partitions": PARTITIONS,
        "end_to_end": end_to_end(ctx, size, cases),
        "prequential": accuracy,
    }


def main(argv: list[str] | None = None) -> None:
    from benchmarks.report import scale_out_lines
    from dagster_project.kafka.brokers.tansu import EmbeddedBroker

    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale_out", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="1 M-row batches (several minutes); default: quick")
    parser.add_argument("--bootstrap", default=None, help="use this broker instead of starting an embedded one")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--cases", default=None, help="comma-separated subset of the mode's end-to-end cases")
    args = parser.parse_args(argv)
    mode = FULL if args.full else QUICK
    cases = args.cases.split(",") if args.cases else None
    with tempfile.TemporaryDirectory(prefix="bench_scale_out_") as tmp:
        load_before = os.getloadavg()[0]
        if args.bootstrap:
            results = run(BenchContext(mode=mode, bootstrap=args.bootstrap, workdir=Path(tmp)), cases)
        else:
            with EmbeddedBroker(log_path=Path(tmp) / "broker.log") as broker:
                results = run(BenchContext(mode=mode, bootstrap=broker.bootstrap, workdir=Path(tmp)), cases)
        results["load_1min"] = [load_before, os.getloadavg()[0]]
    print("\n".join(scale_out_lines(results)))
    if args.out:
        args.out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
