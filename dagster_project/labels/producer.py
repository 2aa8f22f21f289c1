"""A labels feed for demos and tests: a dataset's truth sent to `<stream>.labels` as label records.

Real deployments get their labels from elsewhere; this one lets `streamfit labels produce` replay
a source's labels in any order and at any rate, to exercise the join end to end.
"""

from __future__ import annotations

import itertools
import random
import time

from dagster_project.kafka import clients
from dagster_project.kafka.io import check_reachable, ensure_topics
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.labels.records import make_label
from dagster_project.spec import StreamSpec


def produce_labels(
    settings: KafkaSettings,
    spec: StreamSpec,
    source: str,
    *,
    start: int = 0,
    limit: int | None = None,
    rate: float | None = None,
    shuffle_seed: int | None = None,
) -> int:
    """Send the labels of a dataset (`synthetic` or `phishing`) to `<stream>.labels`, keyed by event id.

    `start`/`limit` select events [start, start + limit) of the source; `shuffle_seed` sends them in
    a shuffled order. Returns how many the broker acknowledged.
    """
    from dagster_project.dev.producer import SOURCES

    if source not in SOURCES:
        raise ValueError(f"unknown label source {source!r}: use one of {sorted(SOURCES)}")
    events = itertools.islice(SOURCES[source](), start, None if limit is None else start + limit)
    pairs = [(e.event_id.encode(), e.event_id, e.label) for e in events]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(pairs)
    check_reachable(settings)
    ensure_topics(settings, [spec.labels_topic], spec.partitions)
    producer = clients.producer(settings, acks="all")
    futures = []
    started = time.monotonic()
    try:
        for sent, (key, event_id, label) in enumerate(pairs, start=1):
            futures.append(producer.send(spec.labels_topic, key=key, value=make_label(event_id, label)))
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=10)
    failed = [f.exception for f in futures if not f.succeeded()]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(futures)} labels were not acknowledged: {failed[0]!r}")
    return len(futures)
