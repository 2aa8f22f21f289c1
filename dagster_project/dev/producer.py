"""Write events to `<stream>.events` in the contract format, from a dataset or a JSONL file."""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
from kafka.errors import MessageSizeTooLargeError

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
    """(key, value) pairs for a named source or a JSONL path (a line keyed by `key`, default its `id`).

    The source is checked here, not on the first event: `produce` creates topics and shows progress
    before it reads one, and a typo must fail before it leaves an empty topic the sensor calls caught up.
    """
    if source in SOURCES:
        return _dataset_events(SOURCES[source])
    path = Path(source)
    if not path.exists() or path.is_dir():  # a pipe (/dev/stdin, <(zcat ...)) is a source too
        raise FileNotFoundError(_not_a_source(source, path))
    return _file_events(path, key or id_key)


def _dataset_events(events: Callable[[], Iterator[SourceEvent]]) -> Iterator[tuple[bytes | None, bytes]]:
    """A built-in dataset's events in the contract format, keyed by their key or id."""
    for event in events():
        ts = time.time() if event.ts is None else event.ts
        value = make_event(event.event_id, event.features, event.label, ts, **event.fields)
        yield (event.key or event.event_id).encode(), value


def _file_events(path: Path, key_of: Callable[[Any], bytes | None]) -> Iterator[tuple[bytes | None, bytes]]:
    """A JSONL file's lines as they are, each keyed by `key_of` its parsed event (None if it does not parse)."""
    for line in jsonl_events(path):
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            event = None
        yield key_of(event), line


def _not_a_source(source: str, path: Path) -> str:
    """Why `source` is neither: a path-like one is a file that is not there, a bare word an unknown name."""
    if path.is_dir():
        return f"not a file: {source} is a directory (pass a .jsonl file of events, one per line)"
    if path.suffix or path.name != source:
        return f"file not found: {source}"
    return f"unknown source {source!r}: use one of {sorted(SOURCES)} or a path to a .jsonl file"


def produce_command(stream: str) -> str:
    """The `streamfit produce` that fills a stream: a built-in source by its name, any other from a file."""
    if stream in SOURCES:
        return f"streamfit produce {stream}"
    return f"streamfit produce {stream} --source events.jsonl"


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
            try:
                future = producer.send(spec.events_topic, key=key, value=value)
            except MessageSizeTooLargeError:  # a raw traceback from `streamfit produce --source` before
                raise ProduceFailed(
                    f"event {sent + 1} is {len(value or b''):,} bytes, more than a Kafka message may be (about 1 MB "
                    f"by default, in producers and brokers): the {sent} before it were sent; shrink or split it, or "
                    "leave it out of the source"
                ) from None
            future.add_errback(failures.append)
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
