"""The scorer's group consumer on kafka-python: records decoded in Python, eager rebalancing."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from kafka import ConsumerRebalanceListener, OffsetAndMetadata, TopicPartition
from kafka.errors import IllegalStateError, KafkaError

from dagster_project.kafka import clients
from dagster_project.kafka.rejoin import heartbeat_answered_at, unblock
from dagster_project.serving.consumers.base import NO_LEADER, CommitFailed, PollBatch

# An offset commit that takes longer fails (CommitFailed: committed with the next batch). Well below the scorer's
# watch on calls stuck inside the client (kafka/rejoin.STUCK_POLL_S, 30 s), so that a coordinator slow to answer is
# not taken for a wedged client; kafka-python's own bound is request_timeout_ms, which settings may raise.
COMMIT_TIMEOUT_MS = 10_000


class _Listener(ConsumerRebalanceListener):
    """Runs on kafka-python's IO loop: hands partition numbers to the scorer's bookkeeping."""

    def __init__(self, on_assigned: Callable[[Iterable[int]], None], on_revoked: Callable[[Iterable[int]], None]):
        self.on_assigned, self.on_revoked = on_assigned, on_revoked

    def on_partitions_revoked(self, revoked) -> None:
        self.on_revoked([tp.partition for tp in revoked])

    def on_partitions_assigned(self, assigned) -> None:
        self.on_assigned([tp.partition for tp in assigned])


class KafkaPythonScorerConsumer:
    """`ScorerConsumer` on kafka-python's KafkaConsumer (subscribed at once)."""

    revokes_in_poll = False  # its listener may not block or commit (see the scorer): one batch at a time

    def __init__(
        self,
        settings,
        group_id: str,
        topic: str,
        on_assigned: Callable[[Iterable[int]], None],
        on_revoked: Callable[[Iterable[int]], None],
        *,
        max_poll_records: int,
        read_committed: bool = False,
        on_poll_error: Callable[[Exception], None] | None = None,
        overrides: dict[str, Any] | None = None,
        watch: Callable[[Callable[[], None], Callable[[], Any]], Any] | None = None,
    ) -> None:
        """`watch(unblock, call)`, when given, runs the metadata waits before subscribing: kafka-python waits for
        that answer without a deadline (clients.subscribe), and the scorer's poll watch unblocks such a wait."""
        isolation = {"isolation_level": "read_committed"} if read_committed else {}
        self.topic = topic
        self._on_poll_error = on_poll_error
        self._consumer = clients.group_consumer(
            settings,
            group_id,
            auto_offset_reset="earliest",  # a new group scores the whole retained stream: no event is skipped
            max_poll_records=max_poll_records,
            **(isolation | (overrides or {})),
        )
        clients.subscribe(
            self._consumer,
            [topic],
            _Listener(on_assigned, on_revoked),
            watch=None if watch is None else partial(watch, self.unblock),
        )

    def poll(self, timeout_s: float, max_records: int) -> PollBatch | None:
        polled = clients.poll(self._consumer, int(timeout_s * 1000), max_records, self._on_poll_error)
        if not polled:
            return None
        batch = PollBatch(self.topic)
        for tp, records in polled.items():
            p = tp.partition
            batch.partitions.extend([p] * len(records))
            for record in records:
                if record.headers:  # a dead letter carries them on
                    batch.headers[len(batch.offsets)] = record.headers
                batch.offsets.append(record.offset)
                batch.keys.append(record.key)
                batch.values.append(record.value)
                batch.timestamps.append(record.timestamp)
        return batch

    def unblock(self) -> None:
        """kafka-python 3.0's poll, commit and committed wait on its network loop without a deadline: stop that loop
        (rejoin.unblock), which fails them all."""
        unblock(self._consumer, f"{self.topic}-scorer-consumer")

    def commit(self, offsets: dict[int, int]) -> None:
        try:
            self._consumer.commit(
                {TopicPartition(self.topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()},
                timeout_ms=COMMIT_TIMEOUT_MS,
            )
        except KafkaError as exc:
            raise CommitFailed(repr(exc)) from exc

    def seek(self, partition: int, offset: int) -> None:
        try:
            self._consumer.seek(TopicPartition(self.topic, partition), offset)
        except (IllegalStateError, ValueError):  # revoked meanwhile (3.0 raises ValueError)
            pass

    def committed(self, partition: int, timeout_s: float) -> int | None:
        return self._consumer.committed(TopicPartition(self.topic, partition), timeout_ms=int(timeout_s * 1000))

    def highwater(self, partition: int) -> int | None:
        return self._consumer.highwater(TopicPartition(self.topic, partition))

    def group_metadata(self) -> Any:
        return self._consumer.group_metadata()

    def heartbeat_answered_at(self) -> float | None:
        return heartbeat_answered_at(self._consumer)

    def coordinator_known(self) -> bool | None:
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is None or not hasattr(coordinator, "coordinator_id"):
            return None
        return coordinator.coordinator_id is not None

    def unfetchable(self, partitions: frozenset[int]) -> dict[int, str]:
        # The fetcher sends to a partition's leader only when one is known and connected (kafka-python's
        # Fetcher._create_fetch_requests): the same test, on its client's metadata and connections.
        client = getattr(self._consumer, "_client", None)
        cluster = getattr(client, "cluster", None)
        if cluster is None or not hasattr(client, "connected"):
            return {}
        blocked = {}
        for partition in partitions:
            leader = cluster.leader_for_partition(TopicPartition(self.topic, partition))
            if leader is None:
                blocked[partition] = "its leader is unknown (not in the client's metadata)"
            elif leader < 0:
                blocked[partition] = NO_LEADER
            elif not client.connected(leader):
                broker = cluster.broker_metadata(leader)
                where = f" ({broker.host}:{broker.port})" if broker is not None else ""
                blocked[partition] = (
                    f"its leader, broker {leader}{where}, is not connected (down, or unreachable from here)"
                )
        return blocked

    def close(self) -> None:
        self._consumer.close(autocommit=False)  # leaves the group: the others take over at once
