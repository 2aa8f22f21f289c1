"""The floor of the scorer's job: what the fastest client does with the same events and no scoring.

A confluent-kafka consumer in a fresh consumer group (cooperative rebalancing, no auto-commit, the
scorer's group settings) consumes poll batches of `max_poll_records`, decodes every event with orjson
and produces one small record per event (key = event id) with the scorer's producer settings
(acks=all). Two ways to finish a batch:

- `per_batch=False` (the floor): the batch's offsets are committed without waiting (asynchronously) and
  the producer is flushed once, at the end: nothing waits for the broker between batches;
- `per_batch=True` (the scorer's at-least-once cycle): flush, then commit synchronously, every batch.

Timed from the first batch (the group join excluded, as for the scorer) to the last acknowledgement.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from benchmarks.common import unique_name
from dagster_project.kafka import clients
from dagster_project.kafka.settings import KafkaSettings


def scorer_floor(
    settings: KafkaSettings, topic: str, out_topic: str, total: int, max_poll_records: int, per_batch: bool = False
) -> dict:
    """events/s of consume -> orjson decode -> produce one record each (-> flush -> commit), for `total` events."""
    from confluent_kafka import Producer, TopicPartition

    consumer = clients.confluent_group_consumer(
        settings, unique_name("bench_floor"), **{"auto.offset.reset": "earliest"}
    )
    producer = Producer(clients.confluent_producer_config(settings, acks="all") | {"delivery.report.only.error": True})
    failed: list[Any] = []
    loads = orjson.loads
    dumps = orjson.dumps
    produce = producer.produce

    def report(error, _message) -> None:
        failed.append(error)

    seen = 0
    started: float | None = None
    deadline = time.monotonic() + 120
    try:
        consumer.subscribe([topic])
        while seen < total:
            if time.monotonic() > deadline:
                raise RuntimeError(f"scorer floor: {seen} of {total} events in 120 s")
            # what is there, up to a batch, as soon as anything is (as the scorer's consumer polls)
            messages = consumer.consume(max_poll_records, 0) or consumer.consume(1, 0.2)
            if not messages:
                continue
            if started is None:
                started = time.perf_counter()
            nexts: dict[int, int] = {}
            for m in messages:
                if m.error() is not None:
                    raise RuntimeError(f"scorer floor: {m.error().str()}")
                event = loads(m.value())
                event_id = event["id"]
                value = dumps({"id": event_id})
                while True:
                    try:
                        produce(out_topic, key=m.key(), value=value, on_delivery=report)
                        break
                    except BufferError:  # the local queue is full: let the broker catch up
                        producer.poll(0.01)
                nexts[m.partition()] = m.offset() + 1
            if per_batch and producer.flush(30):
                raise RuntimeError("scorer floor: records not acknowledged within 30 s")
            offsets = [TopicPartition(topic, p, o) for p, o in nexts.items()]
            consumer.commit(offsets=offsets, asynchronous=not per_batch)
            seen += len(messages)
        if producer.flush(30):
            raise RuntimeError("scorer floor: records not acknowledged within 30 s")
        if failed:
            raise RuntimeError(f"scorer floor: {len(failed)} records failed: {failed[0]}")
        seconds = time.perf_counter() - started
    finally:
        consumer.close()
    return {"events": seen, "seconds": seconds, "events_per_s": seen / seconds}
