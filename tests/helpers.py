"""Test helpers shared between test modules: most talk to the real broker."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import orjson
from prometheus_client import CollectorRegistry

from assets.training import batch_run_config
from dagster_project.dev.datasets import synthetic_events
from dagster_project.dev.producer import produce
from dagster_project.ingest.events import make_event
from dagster_project.ingest.micro_batch import MicroBatch
from dagster_project.kafka.io import committed_group_offsets, probe_partitions, read_range
from dagster_project.kafka.offsets import Ranges
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.labels import make_label
from dagster_project.registry.store import ModelRegistry
from dagster_project.resources import KafkaResource, RegistryResource
from dagster_project.spec import StreamSpec


def produce_synthetic(settings: KafkaSettings, spec: StreamSpec, rows: int, start: int = 0, seed: int = 7) -> int:
    """Send synthetic rows [start, start+rows) keyed round-robin over the spec's partitions."""
    events = list(synthetic_events(rows=start + rows, change_at=10**9, seed=seed))[start:]
    pairs = ((e.event_id.encode(), make_event(e.event_id, e.features, e.label, 0.0)) for e in events)
    return produce(settings, spec, pairs)


def run_batch(defs: dg.Definitions, spec: StreamSpec, ranges: Ranges, instance: dg.DagsterInstance, **kwargs):
    job = defs.resolve_job_def(f"{spec.name}_training")
    return job.execute_in_process(run_config=batch_run_config(spec, ranges), instance=instance, **kwargs)


def reconstructable_training_job(
    name: str, root: str, bootstrap: str, batch: str, spec: str | None = None
) -> dg.JobDefinition:
    """The synthetic stream's training job, rebuilt from plain arguments (re-execution needs a
    reconstructable job: `dg.build_reconstructable_job("tests.helpers", this, kwargs)`); `spec`, a
    whole spec as JSON, stands for a stream other than the synthetic one."""
    from dagster_project.registry.store import FilesystemRegistry
    from tests.conftest import synthetic_spec

    if spec is not None:
        spec = StreamSpec.model_validate(orjson.loads(spec))
    else:
        spec = synthetic_spec(name, batch=orjson.loads(batch))
    return defs_for(spec, bootstrap, FilesystemRegistry(root)).resolve_job_def(f"{name}_training")


def high_waters(settings: KafkaSettings, topic: str) -> dict[int, int]:
    """Each partition's high-water mark (the offset the next record gets)."""
    return {s.partition: s.high_water for s in probe_partitions(settings, topic, {})}


def defs_for(spec: StreamSpec, bootstrap: str, registry: ModelRegistry) -> dg.Definitions:
    """The stream's Dagster definitions bound to this broker and registry."""
    from dagster_project.factory import build_stream_definitions

    return dg.Definitions.merge(
        build_stream_definitions(spec),
        dg.Definitions(
            resources={
                "kafka": KafkaResource(bootstrap=bootstrap),
                "registry": RegistryResource.of(registry),
            }
        ),
    )


def kafka_sensor_tick(
    defs: dg.Definitions,
    spec: StreamSpec,
    instance: dg.DagsterInstance,
    kafka: KafkaResource,
    registry: ModelRegistry,
    cursor: str | None = None,
):
    """One evaluation of the stream's Kafka sensor: a SensorResult or a SkipReason."""
    sensor = defs.resolve_sensor_def(f"{spec.name}_kafka_sensor")
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"kafka": kafka, "registry": RegistryResource.of(registry)},
    )
    return sensor(context)


def full_retrain_tick(defs: dg.Definitions, spec: StreamSpec, instance: dg.DagsterInstance, registry: ModelRegistry):
    """One evaluation of the stream's full-retrain schedule: a RunRequest or a SkipReason."""
    from dagster_project import names

    schedule = defs.resolve_schedule_def(names.full_retrain_schedule(spec.name))
    # As a `with`: the context opens its own instance from the ref and, with it, sets Dagster's
    # current defs-state storage; left to the garbage collector, that setting is undone at any later
    # moment, restoring a storage whose instance is gone ("undefined DagsterInstance weakref").
    with dg.build_schedule_context(instance=instance, resources={"registry": RegistryResource.of(registry)}) as context:
        result = schedule.evaluate_tick(context)
    return result.run_requests[0] if result.run_requests else dg.SkipReason(result.skip_message)


STREAMFIT = str(Path(sys.executable).with_name("streamfit"))


class StreamfitProcess:
    """A `streamfit ...` command as a child process; a reader thread collects its output lines."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [STREAMFIT, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, text: str, timeout_s: float = 30.0, prefix: bool = False) -> str:
        """The first new output line containing (or, with `prefix`, starting with) `text`."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if line.startswith(text) if prefix else text in line:
                return line
        raise AssertionError(f"no line with {text!r} within {timeout_s}s; output: {self.seen}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --- delayed labels -----------------------------------------------------------------------------


def prediction(event_id: str | int, version: str, value: Any) -> tuple[bytes, bytes]:
    """(key, value) of a scorer's prediction record for `event_id`."""
    body = {"id": event_id, "prediction": value, "probabilities": None, "model_version": version}
    return str(event_id).encode(), orjson.dumps(body | {"latency_ms": 1.0, "ts": time.time()})


def label(event_id: str, value: Any) -> tuple[bytes, bytes]:
    """(key, value) of a label record for `event_id`."""
    return event_id.encode(), make_label(event_id, value)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    """The value of one sample of `registry`, or None when it has none (yet)."""
    return registry.get_sample_value(name, labels)


def read_topic(settings: KafkaSettings, topic: str, skip_unparsable: bool = False) -> list[dict[str, Any]]:
    """Every record of `topic` as JSON, with its `_partition` and `_offset`, in offset order per partition
    (with `skip_unparsable`, records that are not a JSON object are left out, e.g. junk sent on purpose)."""
    ends = {s.partition: (s.log_start, s.high_water) for s in probe_partitions(settings, topic, {})}
    out = []
    for record in read_range(settings, topic, ends):
        try:
            value = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            if skip_unparsable:
                continue
            raise
        if skip_unparsable and not isinstance(value, dict):
            continue
        value["_partition"], value["_offset"], value["_key"] = record.partition, record.offset, record.key
        out.append(value)
    return out


def read_committed(settings: KafkaSettings, topic: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Every committed record of `topic` as JSON, read as a downstream consumer with
    `isolation_level=read_committed` does: records of aborted or still-open transactions are never
    returned, and each partition is read up to its last stable offset."""
    from kafka import TopicPartition

    from dagster_project.kafka import clients

    consumer = clients.range_reader(settings, isolation_level="read_committed", auto_offset_reset="earliest")
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)  # with read_committed: the last stable offsets
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, f"reading {topic} committed: stuck before {ends}"
            for tp, records in consumer.poll(timeout_ms=200, max_records=50_000).items():
                for record in records:
                    if record.offset < ends[tp]:
                        value = orjson.loads(record.value)
                        value["_partition"], value["_offset"], value["_key"] = tp.partition, record.offset, record.key
                        out.append(value)
        return out
    finally:
        consumer.close()


# --- micro-batches built by hand ----------------------------------------------------------------


def hand_batch(spec: StreamSpec, rows: int, start: int = 0, seed: int = 0, partition: int = 0) -> MicroBatch:
    """A clean, fully labelled batch of `rows` rows at offsets [start, start+rows) of one partition,
    as `read_batch` would return it (a linear concept, so a model learns it)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, len(spec.features)))
    score = X @ np.linspace(1.5, -1.0, len(spec.features))
    y = (score > 0).astype(np.float64) if spec.task == "classification" else score
    return MicroBatch(
        stream=spec.name,
        ranges={partition: (start, start + rows)},
        X=X,
        y=y,
        ids=[f"{spec.name}-{partition}-{start + i}" for i in range(rows)],
        partitions=np.full(rows, partition, dtype=np.int32),
        offsets=np.arange(start, start + rows, dtype=np.int64),
    )


def assert_second_version_learned_in_two_workers(
    registry: ModelRegistry, spec: StreamSpec, second: Ranges, settings: KafkaSettings
) -> Any:
    """One version per batch: v2 follows v1, learned exactly `second` with 2 workers, and the trainer's
    committed offsets are what it learned (the scale-out tests' common end state)."""
    v1, v2 = registry.versions(spec.name)
    assert v2.parent == v1.name
    assert v2.learned == {p: end for p, (_, end) in second.items()}
    assert v2.meta["offsets"]["batch"] == {str(p): [s, e] for p, (s, e) in second.items()}
    assert v2.meta["metrics"]["scale_out_workers"] == 2 and v2.meta["metrics"]["accuracy"] > 0.85
    assert committed_group_offsets(settings, spec.trainer_group, spec.events_topic) == v2.learned
    return v2


@dg.op
def _one_step() -> int:
    print("a run's stdout: its compute log")
    return 7


@dg.job
def succeeding_job() -> None:
    """A one-step job that succeeds: a finished run with an event log, compute logs and an output."""
    _one_step()


@dg.op
def _fails() -> None:
    raise RuntimeError("a batch that fails")


@dg.job
def failing_job() -> None:
    """A one-step job whose run fails."""
    _fails()


class FakeClock:
    """Stands in for the `time` module a product module imported (monkeypatch `module.time`): its
    `monotonic()` moves only when the test calls `sleep`, so a pause of a loaded machine between two
    lines of a test cannot pass for a silence or a stall measured against a sub-second limit."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def break_drift_sensor_of(monkeypatch, stream: str) -> None:
    """Make `stream`'s Dagster definitions fail to build (its drift sensor raises), the others intact."""
    from dagster_project import factory

    build_drift_sensor = factory.build_drift_sensor

    def drift_sensor(spec, *jobs):
        if spec.name == stream:
            raise RuntimeError(f"{stream}'s drift sensor does not build")
        return build_drift_sensor(spec, *jobs)

    monkeypatch.setattr(factory, "build_drift_sensor", drift_sensor)


def share_drift_sensor_of(monkeypatch, *streams: str, name: str = "shared_drift_sensor") -> None:
    """Make `streams`' Dagster definitions collide: each builds its drift sensor under one `name`."""
    import dagster as dg

    from dagster_project import factory

    build_drift_sensor = factory.build_drift_sensor

    def drift_sensor(spec, rollback_job, retrain_job):
        if spec.name not in streams:
            return build_drift_sensor(spec, rollback_job, retrain_job)

        @dg.sensor(name=name, jobs=[rollback_job, retrain_job])
        def shared(context):
            return None

        return shared

    monkeypatch.setattr(factory, "build_drift_sensor", drift_sensor)
