"""The benchmark data: seeded events of the shipped `synthetic` stream's shape, in a real topic.

Events are sent round-robin over the partitions (event i to partition i % P), so event i sits at
offset i // P and any run of events [a, a + B) with P | a and P | B is the exact offset range
{p: (a / P, (a + B) / P)} on every partition. Every system under test reads the same range.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.common import PROJECT_ROOT
from dagster_project.dev.datasets import SourceEvent, synthetic_events
from dagster_project.ingest.events import make_event
from dagster_project.kafka import clients
from dagster_project.kafka.io import ensure_topics
from dagster_project.kafka.offsets import Ranges
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.spec import StreamSpec, load_spec

SHIPPED_STREAMS = PROJECT_ROOT / "streams"
NO_CHANGE = 10**9  # change_at beyond the data: a stationary concept


def shipped_spec(stream: str) -> StreamSpec:
    return load_spec(SHIPPED_STREAMS / f"{stream}.yaml")


def bench_spec(name: str, base: str = "synthetic", **overrides) -> StreamSpec:
    """The shipped `base` spec (defaults included) under another name, with optional overrides."""
    raw = shipped_spec(base).model_dump(mode="json")
    raw.update(name=name, **overrides)
    return StreamSpec.model_validate(raw)


def write_spec(spec: StreamSpec, directory: Path) -> Path:
    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{spec.name}.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    return path


def events(rows: int, start: int = 0, change_at: int = NO_CHANGE, seed: int = 7) -> list[SourceEvent]:
    """Rows [start, start + rows) of the seeded synthetic stream (the generator is sequential)."""
    out = []
    for i, event in enumerate(synthetic_events(rows=start + rows, change_at=change_at, seed=seed)):
        if i >= start:
            out.append(event)
    return out


def encode(source: list[SourceEvent], ts: float | None = None) -> list[tuple[bytes, bytes]]:
    ts = time.time() if ts is None else ts
    return [(e.event_id.encode(), make_event(e.event_id, e.features, e.label, ts)) for e in source]


def produce_round_robin(settings: KafkaSettings, spec: StreamSpec, pairs: list[tuple[bytes, bytes]]) -> float:
    """Send `pairs` with event i on partition i % P; returns the seconds until all were acknowledged."""
    ensure_topics(settings, [spec.events_topic, spec.dlq_topic, spec.predictions_topic], spec.partitions)
    producer = clients.producer(settings)
    started = time.perf_counter()
    try:
        futures = [
            producer.send(spec.events_topic, key=key, value=value, partition=i % spec.partitions)
            for i, (key, value) in enumerate(pairs)
        ]
        producer.flush()
        failed = [f for f in futures if not f.succeeded()]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(futures)} events were not acknowledged: {failed[0].exception!r}")
    finally:
        producer.close()
    return time.perf_counter() - started


def event_ranges(spec: StreamSpec, first: int, rows: int) -> Ranges:
    """The offset range of events [first, first + rows) under round-robin partitioning."""
    p = spec.partitions
    if first % p or rows % p:
        raise ValueError(f"first ({first}) and rows ({rows}) must be multiples of the partition count {p}")
    return {partition: (first // p, (first + rows) // p) for partition in range(p)}


def arrays(source: list[SourceEvent], feature_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Features in spec order and the class index (labels are 0/1 in the synthetic stream)."""
    X = np.array([[e.features[n] for n in feature_names] for e in source], dtype=np.float64)
    y = np.array([float(e.label) for e in source], dtype=np.float64)
    return X, y
