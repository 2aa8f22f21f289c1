"""The scorer's group consumer on confluent-kafka: librdkafka fetches and decodes in C, cooperative rebalancing.

Rebalance callbacks and statistics are served inside `consume()`, i.e. on the scorer's own loop
between batches, so a partition is only ever revoked after its last batch was made final. Whether the
group coordinator answers comes from librdkafka's statistics (every second): the group's state is
`up` and its coordinator connection `UP`. The same statistics say which partitions cannot be fetched:
each partition's `leader` (-1: none) and the state of that broker's connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from dagster_project.kafka import clients
from dagster_project.serving.consumers.base import NO_LEADER, CommitFailed, PollBatch

log = logging.getLogger(__name__)

STATISTICS_INTERVAL_MS = 1000
_NO_OFFSET = -1001  # librdkafka's OFFSET_INVALID: no committed offset / no high-water mark yet


class ConfluentScorerConsumer:
    """`ScorerConsumer` on confluent-kafka's Consumer (subscribed at once)."""

    revokes_in_poll = True  # on_revoke runs inside consume(), on the loop thread
    unblock = None  # librdkafka bounds consume() by its timeout: no poll waits inside it for good

    def __init__(
        self,
        settings,
        group_id: str,
        topic: str,
        on_assigned: Callable[[Iterable[int]], None],
        on_revoked: Callable[[Iterable[int]], None],
        *,
        max_poll_records: int,  # kafka-python takes it here; consume() takes it per call
        read_committed: bool = False,
        on_poll_error: Callable[[Exception], None] | None = None,
        overrides: dict[str, Any] | None = None,
        watch: Any = None,  # kafka-python's metadata wait has no deadline; librdkafka bounds its own
    ) -> None:
        from confluent_kafka import TopicPartition

        del max_poll_records, watch
        self._tp = TopicPartition
        self.topic = topic
        self._on_poll_error = on_poll_error
        self._answered_at: float | None = None
        self._coordinator_known: bool | None = None
        self._blocked: dict[int, str] = {}  # partition -> why it cannot be fetched, from the last statistics
        config = {
            "auto.offset.reset": "earliest",  # a new group scores the whole retained stream: no event is skipped
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
            "statistics.interval.ms": STATISTICS_INTERVAL_MS,
            "stats_cb": self._stats,
            "error_cb": self._error,
        }
        self._consumer = clients.confluent_group_consumer(settings, group_id, **(config | (overrides or {})))
        self._consumer.subscribe(
            [topic],
            on_assign=lambda _c, tps: on_assigned([tp.partition for tp in tps]),
            on_revoke=lambda _c, tps: on_revoked([tp.partition for tp in tps]),
            on_lost=lambda _c, tps: on_revoked([tp.partition for tp in tps]),
        )

    def poll(self, timeout_s: float, max_records: int) -> PollBatch | None:
        from confluent_kafka import KafkaException

        try:
            messages = self._take(max_records, timeout_s)
        except KafkaException as exc:  # librdkafka retries a lost broker itself; this rides out what surfaces
            error = exc.args[0] if exc.args else None
            if error is None or error.fatal() or not error.retriable():
                raise
            if self._on_poll_error is not None:
                self._on_poll_error(exc)
            time.sleep(1.0)
            return None
        if not messages:
            return None
        batch = PollBatch(self.topic)
        partitions, offsets, keys = batch.partitions, batch.offsets, batch.keys
        values, timestamps = batch.values, batch.timestamps
        for m in messages:
            error = m.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                log.warning("consumer error on %s: %s", self.topic, error.str())
                continue
            if (headers := m.headers()) is not None:  # a dead letter carries them on
                batch.headers[len(offsets)] = headers
            partitions.append(m.partition())
            offsets.append(m.offset())
            keys.append(m.key())
            values.append(m.value())
            timestamps.append(m.timestamp()[1])
        return batch if offsets else None

    def _take(self, max_records: int, timeout_s: float) -> list:
        """Up to `max_records` messages as soon as any are there (kafka-python's poll does the same):
        `consume(n, timeout)` alone would wait for all n, up to the timeout, on a slow stream."""
        consume = self._consumer.consume
        messages = consume(max_records, 0)
        if messages or timeout_s <= 0:
            return messages
        messages = consume(1, timeout_s)
        if messages and max_records > 1:
            messages += consume(max_records - 1, 0)
        return messages

    def commit(self, offsets: dict[int, int]) -> None:
        from confluent_kafka import KafkaException

        try:
            self._consumer.commit(offsets=[self._tp(self.topic, p, o) for p, o in offsets.items()], asynchronous=False)
        except KafkaException as exc:
            raise CommitFailed(repr(exc)) from exc

    def seek(self, partition: int, offset: int) -> None:
        from confluent_kafka import KafkaException

        try:
            self._consumer.seek(self._tp(self.topic, partition, offset))
        except KafkaException:  # revoked meanwhile: its new owner starts from the commit
            pass

    def committed(self, partition: int, timeout_s: float) -> int | None:
        """Raises kafka-python's KafkaTimeoutError (retriable) when the broker did not answer in time, as the
        kafka-python consumer does, so the scorer's exactly-once recovery treats both clients alike."""
        from confluent_kafka import KafkaException
        from kafka.errors import KafkaError, KafkaTimeoutError

        try:
            (tp,) = self._consumer.committed([self._tp(self.topic, partition)], timeout=timeout_s)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            retriable = error is not None and (error.retriable() or error.code() < 0)  # < 0: librdkafka-local
            raise (KafkaTimeoutError if retriable else KafkaError)(f"committed offsets of {self.topic}: {exc}") from exc
        return tp.offset if tp.offset >= 0 else None

    def highwater(self, partition: int) -> int | None:
        try:
            _, high = self._consumer.get_watermark_offsets(self._tp(self.topic, partition), cached=True)
        except Exception:  # not fetched from yet
            return None
        return high if high is not None and high >= 0 else None

    def group_metadata(self) -> Any:
        return self._consumer.consumer_group_metadata()

    def heartbeat_answered_at(self) -> float | None:
        return self._answered_at

    def coordinator_known(self) -> bool | None:
        return self._coordinator_known

    def unfetchable(self, partitions: frozenset[int]) -> dict[int, str]:
        blocked = self._blocked
        return {p: why for p, why in blocked.items() if p in partitions}

    def close(self) -> None:
        self._consumer.close()  # leaves the group (nothing is auto-committed): the others take over at once

    def _stats(self, raw: str) -> None:
        stats = orjson.loads(raw)
        group = stats.get("cgrp") or {}
        state = group.get("state")
        self._coordinator_known = state not in ("init", "query-coord", "wait-coord", None)
        connected = any(
            name == "GroupCoordinator" and broker.get("state") == "UP"
            for name, broker in (stats.get("brokers") or {}).items()
        )
        if state == "up" and connected:
            self._answered_at = time.monotonic()
        self._blocked = _unfetchable(stats, self.topic)

    def _error(self, error: Any) -> None:
        log.warning("confluent-kafka consumer (%s): %s", self.topic, error.str())


def _unfetchable(stats: dict, topic: str) -> dict[int, str]:
    """Partitions of `topic` in librdkafka's statistics whose leader is unknown or not connected, with why."""
    # Real brokers only: librdkafka's logical GroupCoordinator entry can carry the coordinator's node id
    # and would stand in for that broker's own connection.
    brokers = {b.get("nodeid"): b for b in (stats.get("brokers") or {}).values() if b.get("source") != "logical"}
    partitions = ((stats.get("topics") or {}).get(topic) or {}).get("partitions") or {}
    blocked = {}
    for key, partition in partitions.items():
        number, leader = int(key), partition.get("leader", -1)
        if number < 0:  # librdkafka's unassigned-partition queue
            continue
        if leader is None or leader < 0:
            blocked[number] = NO_LEADER
        elif (broker := brokers.get(leader)) is None or broker.get("state") not in ("UP", "UPDATE"):
            state = "unknown" if broker is None else broker.get("state")
            where = f" ({broker['name'].rsplit('/', 1)[0]})" if broker is not None and broker.get("name") else ""
            blocked[number] = (
                f"its leader, broker {leader}{where}, is not connected (state {state}: down, or unreachable from here)"
            )
    return blocked
