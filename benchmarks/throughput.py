"""Training throughput: Streamfit's real path vs a River consumer loop, the read floor and bare sklearn.

All four read or use the same rows: events [W, W + B) of a seeded synthetic topic (W warm-up rows
first, which every system has already learned, so each measures a steady-state batch).

- **streamfit**: what one training run does, stage by stage and timed, each stage calling the
  product functions its Dagster step calls: the Kafka range read (`kafka_io.read_range_columns`) and
  event parsing (`micro_batch.read_batch`, with the tail the sensor holds out, `spec_tail_split`; the
  two split by timing inside the read generator), the GX data-quality suite
  (`quality.validate_batch`), the model step's start (`training.start_from`: head, lineage, parent
  estimator, champion), `training.champion_metrics` + `learner.test_then_learn`, ONNX export +
  parity (`pipeline.export_checked`), the Dagster IO manager's pickling of the step outputs
  (emulated: the default fs IO manager writes each output once and reads it once per consuming
  step), `versioning.register_batch` into a fresh temporary `FilesystemRegistry`, the trainer
  group's Kafka offset commit, then the champion step (`promotion.decide_champion`: the gate
  scores the candidate and the champion on the tail). Its rate counts the rows a run learns (the
  batch less its tail, which the next batch learns). Imports are warm: the per-run import cost of
  a fresh Dagster run process is measured by the cost section.
- **river_loop**: the tutorial pattern with the same kafka-python client and consumer settings,
  `json.loads` per message, `learn_one` on `StandardScaler | LogisticRegression`, measured at the
  steady state of a consumer that keeps reading (`river_steady`): it starts `RIVER_LEAD_ROWS`
  before the range, polls kafka-python's default 500 records at a time and does not stop at the
  range's end; the clock runs from the end of the last poll before the range to the end of the
  poll that completes it, and every record handled in that window counts. The loop has no
  batches, so its range is the batch's or `RIVER_STEADY_ROWS` after the warm-up, whichever is
  longer (at most the topic): a short window inside rows one 4 MB fetch already holds would leave
  out the fetches a consumer that keeps reading waits for. A read that stops at
  the range's end would instead pay kafka-python's fetch and decode of up to 4 MB past it, so
  its rate would depend on how much of the topic lies beyond the range.
- **floor**: the same client's bare range read + `orjson.loads` of every message, nothing else.
  "The same client" is the one Streamfit reads ranges with (`clients.range_reader_client(settings)`:
  confluent-kafka when installed, with the same prefetch sizing, `clients.range_prefetch`);
  **floor_kafka_python** is the same floor through kafka-python, the River loop's client, so both
  comparisons are side by side.
- **sklearn_partial_fit**: `estimators.partial_fit` on the same rows already in memory, with the
  spec's passes over the batch (`model.passes`; SGD's default 8) as the training path makes.
"""

from __future__ import annotations

import copy
import json
import logging
import pickle
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from benchmarks.common import FullCollections, frozen_heap, progress, ratio, summary, unique_name
from benchmarks.context import BenchContext
from benchmarks.data import arrays, bench_spec, encode, event_ranges, events, produce_round_robin
from dagster_project.kafka import clients
from dagster_project.kafka.offsets import Ranges
from dagster_project.kafka.settings import KAFKA_PYTHON, KafkaSettings
from dagster_project.spec import StreamSpec

WARMUP_ROWS = 1_000
RIVER_LEAD_ROWS = WARMUP_ROWS  # read (and learned) before the River loop's timing window opens
# The River loop has no batches: its window covers at least this many rows (or the whole topic after
# the warm-up), so it spans several of kafka-python's fetches, not only rows one fetch already holds.
RIVER_STEADY_ROWS = 50_000
KAFKA_PYTHON_POLL_RECORDS = 500  # kafka-python's default max_poll_records: what a tutorial loop polls
SYSTEMS = ("floor", "floor_kafka_python", "river_loop", "streamfit", "sklearn_partial_fit")
STAGES = (
    "kafka read",
    "parse + validate events",
    "data quality (GX)",
    "load parent",
    "test-then-train",
    "ONNX export + parity",
    "IO manager pickling",
    "registry write",
    "kafka offset commit",
    "promotion gate",
)


# ---------------------------------------------------------------------------------------------
# The baselines: the same client, the same consumer settings, the same range


def consume_range(settings: KafkaSettings, topic: str, ranges: Ranges, handle: Callable[[list], None]) -> int:
    """Read exactly `ranges` with a group-less kafka-python consumer; `handle` gets each record list."""
    from kafka import TopicPartition

    consumer = clients.range_reader(settings)
    seen = 0
    try:
        todo = {p: end for p, (start, end) in ranges.items() if end > start}
        tps = {p: TopicPartition(topic, p) for p in todo}
        consumer.assign(list(tps.values()))
        for p, (start, _) in ranges.items():
            if p in tps:
                consumer.seek(tps[p], start)
        deadline = time.monotonic() + 60
        while todo:
            for tp, records in consumer.poll(timeout_ms=200, max_records=50_000).items():
                end = todo.get(tp.partition)
                if end is None:
                    continue
                if records[-1].offset >= end:
                    records = [r for r in records if r.offset < end]
                handle(records)
                seen += len(records)
                if not records or records[-1].offset + 1 >= end:
                    del todo[tp.partition]
                    consumer.pause(tp)
            if time.monotonic() > deadline:
                raise RuntimeError(f"range read of {topic} {ranges} stalled; {todo} left")
    finally:
        consumer.close()
    return seen


def consume_range_confluent(settings: KafkaSettings, topic: str, ranges: Ranges, handle: Callable[[list], None]) -> int:
    """The same exact-range read with confluent-kafka (assign at the start offsets, no group join)."""
    from confluent_kafka import TopicPartition as ConfluentPartition

    consumer = clients.confluent_range_reader(settings, rows=sum(end - start for start, end in ranges.values()))
    seen = 0
    try:
        todo = {p: end for p, (start, end) in ranges.items() if end > start}
        consumer.assign([ConfluentPartition(topic, p, ranges[p][0]) for p in todo])
        seen_at: dict[int, int] = {}  # next offset per partition (asking for more than is left waits out the timeout)
        deadline = time.monotonic() + 60
        while todo:
            kept = []
            left = sum(end - seen_at.get(p, ranges[p][0]) for p, end in todo.items())
            for message in consumer.consume(num_messages=max(1, min(10_000, left)), timeout=0.2):
                if message.error() is not None:
                    raise RuntimeError(f"range read of {topic}: {message.error().str()}")
                end = todo.get(message.partition())
                if end is None:
                    continue
                if message.offset() < end:
                    kept.append(message)
                seen_at[message.partition()] = message.offset() + 1
                if message.offset() + 1 >= end:
                    del todo[message.partition()]
                    consumer.pause([ConfluentPartition(topic, message.partition())])
            handle(kept)
            seen += len(kept)
            if time.monotonic() > deadline:
                raise RuntimeError(f"range read of {topic} {ranges} stalled; {todo} left")
    finally:
        consumer.close()
    return seen


def floor_read(settings: KafkaSettings, topic: str, ranges: Ranges, client: str | None = None) -> int:
    """Bare read + decode with `client` (default: the client Streamfit's range reads use)."""
    from dagster_project.kafka.settings import CONFLUENT

    loads = orjson.loads
    client = client or clients.range_reader_client(settings)
    if client == CONFLUENT:

        def handle_confluent(messages: list) -> None:
            for m in messages:
                loads(m.value())

        return consume_range_confluent(settings, topic, ranges, handle_confluent)

    def handle(records: list) -> None:
        for r in records:
            loads(r.value)

    return consume_range(settings, topic, ranges, handle)


def river_model():
    from river import linear_model, preprocessing

    return preprocessing.StandardScaler() | linear_model.LogisticRegression()


def river_learner(model) -> Callable[[list], None]:
    """The River loop's work per kafka-python record list: `json.loads`, then `learn_one`."""
    loads = json.loads
    learn = model.learn_one

    def handle(records: list) -> None:
        for r in records:
            event = loads(r.value)
            learn(event["features"], event["label"])

    return handle


def river_steady(settings: KafkaSettings, topic: str, ranges: Ranges, model) -> tuple[int, float]:
    """The River loop as a consumer that keeps reading: (records handled, seconds) over the window
    of polls that covers `ranges`, in the steady state (see the module docstring)."""
    from kafka import TopicPartition

    handle = river_learner(model)
    consumer = clients.range_reader(settings)
    lead = RIVER_LEAD_ROWS // max(1, len(ranges))
    clock = time.perf_counter
    try:
        tps = {p: TopicPartition(topic, p) for p, (start, end) in ranges.items() if end > start}
        consumer.assign(list(tps.values()))
        for p, tp in tps.items():
            consumer.seek(tp, max(0, ranges[p][0] - lead))
        unfinished = set(tps)
        counted, window_start, last = 0, None, clock()
        deadline = time.monotonic() + 60
        while unfinished:
            polled = consumer.poll(timeout_ms=200, max_records=KAFKA_PYTHON_POLL_RECORDS)
            handled, in_range = 0, False
            for tp, records in polled.items():
                handle(records)
                handled += len(records)
                p = tp.partition
                if p in tps and records and records[-1].offset >= ranges[p][0]:
                    in_range = True
                if p in unfinished and records and records[-1].offset + 1 >= ranges[p][1]:
                    unfinished.discard(p)
            now = clock()
            if in_range:
                if window_start is None:
                    window_start = last
                counted += handled
            last = now
            if time.monotonic() > deadline:
                raise RuntimeError(f"River loop over {topic} {ranges} stalled; {sorted(unfinished)} unfinished")
    finally:
        consumer.close()
    return counted, last - (window_start if window_start is not None else last)


# ---------------------------------------------------------------------------------------------
# Streamfit's real path


class _ReadClock:
    """Wraps `batches.read_range_columns` to time the Kafka read apart from parsing, in the same pass
    (per poll's chunk: a clock per record would add its own cost to Streamfit's time)."""

    def __init__(self) -> None:
        import dagster_project.ingest.micro_batch as batches_module

        self.module = batches_module
        self.real = batches_module.read_range_columns
        self.seconds = 0.0

    def __enter__(self) -> _ReadClock:
        real = self.real

        def timed_read_range_columns(*args, **kwargs):
            clock = time.perf_counter
            generator = real(*args, **kwargs)
            while True:
                started = clock()
                try:
                    chunk = next(generator)
                except StopIteration:
                    self.seconds += clock() - started
                    return
                self.seconds += clock() - started
                yield chunk

        self.module.read_range_columns = timed_read_range_columns
        return self

    def __exit__(self, *exc: object) -> None:
        self.module.read_range_columns = self.real


def _pickle_round_trip(directory: Path, name: str, obj: Any, reads: int) -> None:
    """What Dagster's default fs IO manager does with a step output: write once, read per consumer,
    with its pickle protocol (4; this emulation used 5 until the seventh round of issue 18)."""
    from dagster._utils import PICKLE_PROTOCOL  # what `fs_io_manager` passes to pickle.dump

    path = directory / name
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=PICKLE_PROTOCOL)
    for _ in range(reads):
        with open(path, "rb") as fh:
            pickle.load(fh)


class _RunLog:
    """Stands in for a Dagster context where a product function only logs (`start_from`)."""

    log = logging.getLogger("benchmarks.throughput")


def streamfit_batch(
    settings: KafkaSettings, spec: StreamSpec, ranges: Ranges, registry_root: Path, io_dir: Path, tail: bool = True
) -> tuple[dict[str, float], Any]:
    """One training run's work on `ranges`, on top of the registry's head; returns stage seconds.

    Each stage calls the product functions its step calls, in the step's order (`assets/training.py`,
    `assets/promotion.py`): the batch keeps the tail the sensor plans (`spec_tail_split`), which the
    gate scores and the next batch learns (`tail=False`: the warm-up learns its whole range, so the
    timed batches start where it ends)."""
    from assets.promotion import decide_champion
    from assets.training import champion_metrics, start_from
    from dagster_project.ingest.micro_batch import read_batch
    from dagster_project.kafka.io import commit_group_offsets
    from dagster_project.learning.learner import rows_of, test_then_learn
    from dagster_project.learning.pipeline import TrainedModel, export_checked
    from dagster_project.learning.windowed import kafka_reader
    from dagster_project.quality.suite import validate_batch
    from dagster_project.registry.promotion import spec_tail_split, stream_metric
    from dagster_project.registry.store import FilesystemRegistry
    from dagster_project.registry.versioning import already_registered, register_batch

    stages: dict[str, float] = {}
    clock = time.perf_counter
    registry = FilesystemRegistry(registry_root)
    name = spec.name

    # micro_batch
    with _ReadClock() as read_clock:
        t = clock()
        batch = read_batch(settings, spec, ranges, learn_ends=spec_tail_split(spec, ranges) if tail else None)
        total = clock() - t
    stages["kafka read"] = read_clock.seconds
    stages["parse + validate events"] = total - read_clock.seconds

    t = clock()
    quality = validate_batch(batch, spec)
    stages["data quality (GX)"] = clock() - t
    if not quality.passed:
        raise RuntimeError(f"benchmark batch failed its quality checks: {quality.summary}")

    # model
    t = clock()
    start = start_from(_RunLog, registry, spec)
    stages["load parent"] = clock() - t

    labelled = batch.labelled
    t = clock()
    X, y = batch.X[labelled], batch.y[labelled]
    served_metrics = champion_metrics(start, spec, X, y)
    rows = rows_of(X, y, batch.partitions[labelled], batch.offsets[labelled])
    learned = test_then_learn(start.estimator, spec, rows, batch.learned_ranges, kafka_reader(settings, spec))
    stages["test-then-train"] = train_seconds = clock() - t
    served = (
        {"version": start.champion, "metrics": served_metrics or dict(learned.metrics.as_metadata())}
        if start.champion
        else None
    )
    model = TrainedModel(
        learned.model,
        start.parent,
        learned.metrics.as_metadata(),
        int(labelled.sum()),
        train_seconds,
        served,
        start.lineage,
    )

    # onnx_model
    t = clock()
    artifact = export_checked(spec, model.estimator, batch.X)
    stages["ONNX export + parity"] = clock() - t
    if not artifact.passed:
        raise RuntimeError(f"ONNX parity failed in the benchmark: {artifact.reason}")

    t = clock()
    _pickle_round_trip(io_dir, "micro_batch", batch, reads=4)  # model, onnx_model, model_version, champion
    _pickle_round_trip(io_dir, "model", model, reads=3)  # onnx_model, model_version, champion
    _pickle_round_trip(io_dir, "onnx_model", artifact, reads=1)  # model_version
    stages["IO manager pickling"] = clock() - t

    # model_version
    t = clock()
    version = already_registered(registry, name, model.parent, batch.ranges)
    if version is None:
        version = register_batch(registry, spec, batch, model, artifact.onnx_bytes, artifact.parity, "benchmark")
    stages["registry write"] = clock() - t

    t = clock()
    commit_group_offsets(settings, spec.trainer_group, spec.events_topic, version.learned)
    stages["kafka offset commit"] = clock() - t

    # champion
    t = clock()
    metric = stream_metric(spec)
    decide_champion(registry, spec, metric, batch, model)
    stages["promotion gate"] = clock() - t
    return stages, version


@dataclass
class _Batch:
    """What one batch size's repeats share."""

    settings: KafkaSettings
    spec: StreamSpec
    rows: int
    ranges: Ranges
    learned_rows: int
    X: np.ndarray
    y: np.ndarray
    classes: np.ndarray
    largest: int
    river_parent: Any
    parent_estimator: Any
    template: Path
    io_dir: Path
    work: Path
    stages: dict[str, list[float]]


def _measure(system: str, r: int, b: _Batch) -> tuple[int, float]:
    """One repeat of `system` on the batch: (rows handled, seconds)."""
    settings, spec, rows, ranges = b.settings, b.spec, b.rows, b.ranges
    if system == "floor":
        t = time.perf_counter()
        n = floor_read(settings, spec.events_topic, ranges)
        elapsed = time.perf_counter() - t
    elif system == "floor_kafka_python":
        t = time.perf_counter()
        n = floor_read(settings, spec.events_topic, ranges, client=KAFKA_PYTHON)
        elapsed = time.perf_counter() - t
    elif system == "river_loop":
        model = copy.deepcopy(b.river_parent)
        steady = event_ranges(spec, WARMUP_ROWS, min(b.largest, max(rows, RIVER_STEADY_ROWS)))
        handled, window = river_steady(settings, spec.events_topic, steady, model)
        if handled < rows:
            raise RuntimeError(f"the River loop's window held {handled} records, fewer than the {rows} asked")
        n, elapsed = rows, window * rows / handled  # the steady rate, handled / window, over `rows`
    elif system == "streamfit":
        registry_root = b.work / f"registry-{rows}-{r}"
        shutil.copytree(b.template, registry_root)
        t = time.perf_counter()
        stage_seconds, version = streamfit_batch(settings, spec, ranges, registry_root, b.io_dir)
        elapsed = time.perf_counter() - t
        learned = int(version.meta["rows"]["trained"])
        if learned != b.learned_rows:
            raise RuntimeError(f"streamfit learned {learned} rows, expected {b.learned_rows} (tail held out)")
        # A run learns the batch less its tail (the next batch learns it): the rate is
        # learned rows per second, stated as the time `rows` would take at that rate.
        n, elapsed = rows, elapsed * rows / learned
        for stage, s in stage_seconds.items():
            b.stages[stage].append(s)
        shutil.rmtree(registry_root, ignore_errors=True)
    else:
        from dagster_project.learning.estimators import partial_fit

        model = copy.deepcopy(b.parent_estimator)
        t = time.perf_counter()
        partial_fit(model, b.X, b.y, b.classes, spec.model.passes_per_batch)
        elapsed = time.perf_counter() - t
        n = len(b.X)
    return n, elapsed


# ---------------------------------------------------------------------------------------------
# The section


def run(ctx: BenchContext) -> dict[str, Any]:
    from dagster_project.registry.promotion import spec_tail_split

    mode = ctx.mode
    settings = ctx.settings
    spec = bench_spec(unique_name("bench_train"))
    largest = max(mode.train_sizes)
    total = WARMUP_ROWS + largest
    progress(f"training: generating {total:,} seeded synthetic events and producing them to {spec.events_topic}")
    source = events(total)
    produce_seconds = produce_round_robin(settings, spec, encode(source))
    progress(f"training: produced {total:,} events in {produce_seconds:.1f}s ({total / produce_seconds:,.0f}/s)")
    ctx.shared["train_topic"] = {"spec": spec.model_dump(mode="json"), "warmup": WARMUP_ROWS, "rows": largest}
    X_all, y_all = arrays(source, spec.feature_names)
    classes = np.arange(len(spec.label.classes))

    # Warm-up: the real path on the warm-up rows makes the parent version every batch builds on,
    # and pays the one-off imports (GX, skl2onnx) and suite build outside the timings.
    work = ctx.workdir / "training"
    template = work / "template"
    io_dir = work / "io"
    io_dir.mkdir(parents=True, exist_ok=True)
    progress("training: warm-up run of the real path (imports GX and skl2onnx, builds the suite)")
    started = time.perf_counter()
    warm_ranges = event_ranges(spec, 0, WARMUP_ROWS)
    streamfit_batch(settings, spec, warm_ranges, template, io_dir, tail=False)
    cold_first_batch_s = time.perf_counter() - started
    ctx.shared["train_registry_template"] = template
    from dagster_project.registry.store import FilesystemRegistry

    parent_estimator = FilesystemRegistry(template).load_estimator(spec.name, "v1")
    river_parent = river_model()
    for e in source[:WARMUP_ROWS]:
        river_parent.learn_one(e.features, e.label)

    sizes: dict[str, Any] = {}
    for rows in mode.train_sizes:
        repeats = mode.train_repeats[rows]
        ranges = event_ranges(spec, WARMUP_ROWS, rows)
        learned_rows = sum(end - ranges[p][0] for p, end in spec_tail_split(spec, ranges).items())
        X, y = X_all[WARMUP_ROWS : WARMUP_ROWS + rows], y_all[WARMUP_ROWS : WARMUP_ROWS + rows]
        seconds: dict[str, list[float]] = defaultdict(list)
        stages: dict[str, list[float]] = defaultdict(list)
        full_collections: dict[str, list[int]] = defaultdict(list)
        full_collections_ms: dict[str, list[float]] = defaultdict(list)
        progress(f"training: batch {rows:,} rows x {repeats} repeats ({', '.join(SYSTEMS)})")
        batch = _Batch(
            settings,
            spec,
            rows,
            ranges,
            learned_rows,
            X,
            y,
            classes,
            largest,
            river_parent,
            parent_estimator,
            template,
            io_dir,
            work,
            stages,
        )
        with frozen_heap():  # each system collects its own objects, not set-up's
            for r in range(repeats):
                order = SYSTEMS[r % len(SYSTEMS) :] + SYSTEMS[: r % len(SYSTEMS)]  # rotate: no system always first
                for system in order:
                    with FullCollections() as full:
                        n, elapsed = _measure(system, r, batch)
                    full_collections[system].append(full.count)
                    full_collections_ms[system].append(full.ms)
                    if n != rows:
                        raise RuntimeError(f"{system} handled {n} rows, expected {rows}")
                    seconds[system].append(elapsed)
        rates = {s: [rows / x for x in seconds[s]] for s in SYSTEMS}
        ratios = {
            "streamfit_vs_river_loop": [
                ratio(a, b) for a, b in zip(rates["streamfit"], rates["river_loop"], strict=True)
            ],
            "streamfit_vs_floor": [ratio(a, b) for a, b in zip(rates["streamfit"], rates["floor"], strict=True)],
            "river_loop_vs_floor": [ratio(a, b) for a, b in zip(rates["river_loop"], rates["floor"], strict=True)],
            "streamfit_vs_floor_kafka_python": [
                ratio(a, b) for a, b in zip(rates["streamfit"], rates["floor_kafka_python"], strict=True)
            ],
            "floor_vs_floor_kafka_python": [
                ratio(a, b) for a, b in zip(rates["floor"], rates["floor_kafka_python"], strict=True)
            ],
            "streamfit_vs_sklearn_partial_fit": [
                ratio(a, b) for a, b in zip(rates["streamfit"], rates["sklearn_partial_fit"], strict=True)
            ],
        }
        sizes[str(rows)] = {
            "rows": rows,
            "streamfit_learned_rows": learned_rows,
            "repeats": repeats,
            "rows_per_s": {s: summary(rates[s]) for s in SYSTEMS},
            "seconds": {s: summary(seconds[s]) for s in SYSTEMS},
            "stages_s": {stage: summary(stages[stage]) for stage in STAGES},
            # full GC collections inside each system's repeats (set-up's heap frozen: see `frozen_heap`)
            "full_collections": {s: sum(full_collections[s]) for s in SYSTEMS},
            "full_collections_ms": {s: sum(full_collections_ms[s]) for s in SYSTEMS},
            "ratios": {k: summary(v) for k, v in ratios.items()},
        }
        med = sizes[str(rows)]["rows_per_s"]
        progress(
            "training: "
            + ", ".join(f"{s} {med[s]['median']:,.0f} rows/s" for s in SYSTEMS)
            + f"; Streamfit/River {sizes[str(rows)]['ratios']['streamfit_vs_river_loop']['median']:.2f}x"
            + "; full GC collections "
            + ", ".join(f"{s} {sizes[str(rows)]['full_collections'][s]}" for s in SYSTEMS)
        )
    return {
        "description": "rows/s per system on the same offset range; ratios per repeat (side by side), then median",
        "stream": spec.name,
        "partitions": spec.partitions,
        "range_reader_client": clients.range_reader_client(settings),
        "warmup_rows": WARMUP_ROWS,
        "produce_rows_per_s": total / produce_seconds,
        "cold_first_batch_s": cold_first_batch_s,
        "sizes": sizes,
    }
