"""Write events to `<stream>.events` in the contract format, from a dataset or a JSONL file."""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from dagster_project.dev.datasets import SourceEvent, census_events, phishing_events, sensor_events, synthetic_events
from dagster_project.ingest.events import make_event
from dagster_project.ingest.keys import id_key
from dagster_project.kafka import clients
from dagster_project.kafka.io import check_reachable, ensure_topics
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.spec import StreamSpec

SOURCES: dict[str, Callable[[], Iterator[SourceEvent]]] = {
    "census": census_events,
    "phishing": phishing_events,
    "sensors": sensor_events,
    "synthetic": synthetic_events,
}


def jsonl_events(path: Path) -> Iterator[bytes]:
    """Lines of a JSONL file, sent as they are (so malformed lines reach the DLQ, as in production)."""
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                yield line.rstrip(b"\n")


def encoded_events(
    source: str, key: Callable[[Any], bytes | None] | None = None
) -> Iterator[tuple[bytes | None, bytes]]:
    """(key, value) pairs for a named source or a JSONL path (a line keyed by `key`, default its `id`)."""
    if source in SOURCES:
        for event in SOURCES[source]():
            ts = time.time() if event.ts is None else event.ts
            value = make_event(event.event_id, event.features, event.label, ts, **event.fields)
            yield (event.key or event.event_id).encode(), value
        return
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"unknown source {source!r}: use one of {sorted(SOURCES)} or a path to a .jsonl file")
    key_of = key or id_key
    for line in jsonl_events(path):
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            event = None
        yield key_of(event), line


def produce(
    settings: KafkaSettings,
    spec: StreamSpec,
    events: Iterable[tuple[bytes | None, bytes]],
    rate: float | None = None,
    limit: int | None = None,
    progress: bool = False,
) -> int:
    """Send events to the stream's events topic; returns how many the broker acknowledged.

    Every send is checked once flushed: a record the broker did not acknowledge (with the default
    acks=all: not written to min.insync.replicas replicas) raises ProduceFailed naming how many.
    """
    check_reachable(settings)
    ensure_topics(
        settings, [spec.events_topic, spec.labels_topic, spec.dlq_topic, spec.predictions_topic], spec.partitions
    )
    producer = clients.producer(settings)
    events = itertools.islice(events, limit) if limit is not None else events
    bar = None
    if progress:
        from tqdm import tqdm

        # Without a terminal (compose logs, CI) a line every 30 s, not a redraw per tenth of a second.
        bar = tqdm(
            total=limit,
            unit="ev",
            desc=f"producing {spec.events_topic}",
            mininterval=0.1 if sys.stderr.isatty() else 30.0,
        )
    sent = 0
    failures: list[Exception] = []
    started = time.monotonic()
    try:
        for key, value in events:
            producer.send(spec.events_topic, key=key, value=value).add_errback(failures.append)
            sent += 1
            if bar is not None:
                bar.update(1)
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush()
    finally:
        producer.close()
        if bar is not None:
            bar.close()
    if failures:
        raise ProduceFailed(
            f"{len(failures)} of {sent} events were not acknowledged by {settings.bootstrap}: {failures[0]!r}"
        )
    return sent


class ProduceFailed(RuntimeError):
    """Some events were not acknowledged (their fate is unknown: resend them; consumers dedupe by id)."""
