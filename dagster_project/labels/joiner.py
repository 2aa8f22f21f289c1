"""The label joiner: consumes `<stream>.predictions` and `<stream>.labels` and checkpoints live quality.

It runs as `streamfit labels join <stream>` in its own consumer group, feeds every record to the
in-memory `JoinState` (invalid ones go to `<stream>.dlq`) and periodically checkpoints through the
`LiveStore`. Its checkpoints make the aggregation exactly-once across crashes and restarts; the
readers of what it writes are in `readers`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from dagster_project.dev.faults import crash_point
from dagster_project.ingest.dead_letters import DeadLetter, DeadLetterWriter
from dagster_project.kafka import clients, rejoin
from dagster_project.kafka.io import check_reachable, ensure_topics, read_isolation
from dagster_project.kafka.rejoin import (
    AssignmentWatch,
    PollWatch,
    RejoinWatch,
    close_bounded,
    heartbeat_answered_at,
    made_while_brokers_away,
    unblock,
)
from dagster_project.kafka.settings import GROUP_SESSION_TIMEOUT_MS, KafkaSettings
from dagster_project.labels.join_state import JoinState
from dagster_project.labels.readers import metric_families
from dagster_project.labels.records import InvalidRecord, RecordParser
from dagster_project.labels.store import LiveStore
from dagster_project.labels.summary import LiveSummary
from dagster_project.spec import StreamSpec

log = logging.getLogger(__name__)

COMMIT_TIMEOUT_MS = 10_000  # an offset commit (for lag tooling only) that takes longer fails and is tried next time


def labels_group(spec: StreamSpec) -> str:
    """The joiner's consumer group (its committed offsets show its lag in standard Kafka tooling)."""
    return f"streamfit-{spec.name}-labels"


class _JoinerCollector(Collector):
    """The joiner's own metrics, from its last in-memory snapshot (fresher than the checkpoints)."""

    def __init__(self, joiner: LabelJoiner) -> None:
        self.joiner = joiner

    def collect(self) -> Iterator[Metric]:
        yield from metric_families(self.joiner.spec.name, self.joiner.spec.task, self.joiner.snapshot)
        rejoins = CounterMetricFamily(
            "streamfit_label_joiner_consumer_rejoins",
            "Consumers the label joiner replaced as wedged while the brokers answered: its group silent, a poll "
            "stuck inside the client, or an assignment lacking partitions of its topics",
            labels=["stream"],
        )
        rejoins.add_metric([self.joiner.spec.name], self.joiner.rejoins)
        yield rejoins


class LabelJoiner:
    """Consumes predictions and labels in `streamfit-<stream>-labels` and checkpoints live quality.

    `run()` blocks until `stop()` (then flushes, commits and leaves the group, its close bounded by
    `rejoin.CLOSE_TIMEOUT_S`). `on_flush(record)` is called after every checkpoint (the CLI prints progress from it).

    A checkpoint (every `flush_interval_s` while something changed, and on a clean stop) goes:
    dead letters acknowledged, state file written, live_metrics.jsonl line appended (the commit
    point), offsets committed (for lag tooling only), older state files removed. A restart resumes
    from the last line's state and seeks to the offsets stored in it, so a crash at any step neither
    loses nor double-counts a joined pair; only a dead letter sent after a checkpoint may be sent
    twice. One joiner per stream: the store's lock refuses a second one on the same STREAMFIT_HOME.

    Eviction follows event time, not the wall clock, so catching up on a backlog does not evict
    what has not been read yet (see `_clock_ms`). A wedged consumer is replaced by a new member, which
    resumes from the positions in the state (kafka/rejoin.py): one whose group stops answering while the
    brokers do, one whose poll has not returned for `rejoin.STUCK_POLL_S` (a watcher thread unblocks it), and
    one assigned fewer partitions than its topics have for `rejoin.REJOIN_AFTER_S` (alone in its group, it
    should own them all).
    """

    def __init__(
        self,
        spec: StreamSpec,
        settings: KafkaSettings,
        registry_root: str | Path | None = None,
        *,
        window_s: float | None = None,
        max_pending: int | None = None,
        flush_interval_s: float | None = None,
        max_poll_records: int = 2000,
        poll_timeout_ms: int = 200,
        group_id: str | None = None,
        consumer_overrides: dict[str, Any] | None = None,
        on_flush: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if registry_root is None:
            from dagster_project.settings import registry_root as default_root

            registry_root = default_root()
        self.spec = spec
        self.settings = settings
        self.registry_root = Path(registry_root)
        self.window_s = window_s if window_s is not None else spec.labels.join_window_s
        self.max_pending = max_pending if max_pending is not None else spec.labels.max_pending
        self.flush_interval_s = flush_interval_s if flush_interval_s is not None else spec.labels.flush_interval_s
        if self.window_s <= 0 or self.max_pending < 1 or self.flush_interval_s <= 0:
            raise ValueError("window_s and flush_interval_s must be > 0 and max_pending >= 1")
        self.max_poll_records = max_poll_records
        self.poll_timeout_ms = poll_timeout_ms
        self.group_id = group_id or labels_group(spec)
        self.consumer_overrides = consumer_overrides or {}
        self.on_flush = on_flush
        self.store = LiveStore(self.registry_root, spec.name)
        self.parser = RecordParser(spec)
        self.state = JoinState(spec.task, self.window_s, self.max_pending)
        self.snapshot = self.state.summary()
        self.assigned = threading.Event()
        self.checkpoints = 0  # written by this process
        self.rejoins = 0  # wedged consumers replaced (kafka/rejoin.py)
        self.metrics_registry = CollectorRegistry()
        self.metrics_registry.register(_JoinerCollector(self))
        self.isolation_level: str | None = None  # decided against the broker in run()
        self._stop = threading.Event()
        self._consumer = None
        self._producer = None
        self._dead_letters: DeadLetterWriter | None = None  # with the producer, on the first dead letter
        self._last_ts: dict[Any, float] = {}
        self._rejoin = RejoinWatch(settings, self._last_contact)
        self._assignment = AssignmentWatch(settings)  # one member per group: it should own every partition
        self._received_at: float | None = None  # monotonic time of the last non-empty poll
        self._member_assigned = False  # the current consumer has had an assignment (only such is replaced)
        self._generation = 0  # bumped per consumer: a replaced one's rebalance callbacks change nothing
        # held while the generation changes and while a listener checks it and acts: a listener that found its
        # consumer current stays current until it is done (it runs on that consumer's network-loop thread)
        self._generation_lock = threading.Lock()
        self._polls = PollWatch(f"{spec.name}-label-joiner", self._stop)  # unblocks a poll stuck inside the client
        self._commit_owed = False  # the state's positions are not all committed to the group (lag tooling only)

    @property
    def topics(self) -> list[str]:
        return [self.spec.predictions_topic, self.spec.labels_topic]

    def stop(self) -> None:
        self._stop.set()

    def serve_metrics(self, port: int, addr: str = "127.0.0.1"):
        """Serve this joiner's metrics on `port` (0: a free one); returns (server, thread)."""
        from prometheus_client import start_http_server

        return start_http_server(port, addr=addr, registry=self.metrics_registry)

    def run(self) -> None:
        check_reachable(self.settings)
        with self.store.locked():
            recovered = self.store.recover()
            if recovered is not None:
                self.state = JoinState.from_json(recovered[1], self.spec.task, self.window_s, self.max_pending)
                log.info("%s: resuming label join from checkpoint %d", self.spec.name, self.state.seq)
            self.snapshot = self.state.summary()
            ensure_topics(self.settings, [*self.topics, self.spec.dlq_topic], self.spec.partitions)
            # read_committed where transactions work: an exactly-once scorer's aborted attempts and open
            # transactions are never joined. Not on Tansu, which leaks aborted records to read_committed
            # readers anyway and where scorers never write in transactions (see kafka.io.read_isolation).
            self.isolation_level = read_isolation(self.settings)
            clean = False
            try:
                with self._polls.watching():  # from the first consumer's subscribe: its metadata wait is watched too
                    consumer = self._open_consumer()
                    if consumer is not None:
                        self._loop(consumer)
                clean = True
            finally:
                try:
                    if self._producer is not None:
                        self._producer.close(timeout=10)
                finally:
                    if (last := self._consumer) is not None:
                        # bounded: kafka-python's close waits on its network loop without a deadline (the leave
                        # and close-prepare steps), so a client wedged at stop time would keep the process alive
                        close_bounded(lambda: last.close(autocommit=False), f"{self.spec.name}-label-joiner")
                    self._consumer = None
                log.info("%s: label joiner stopped (%s)", self.spec.name, "clean" if clean else "crashed")

    def _open_consumer(self):
        """A new member of the joiner's group, subscribed; its assignment seeks to the state's positions.

        Retried while no broker answers (kafka-python's consumer cannot be made without one: a stuck client can be
        replaced in an outage); None if stopped meanwhile."""
        consumer = made_while_brokers_away(
            lambda: clients.group_consumer(
                self.settings,
                self.group_id,
                auto_offset_reset="earliest",  # a first start joins everything the broker retains
                max_poll_records=self.max_poll_records,
                **({"isolation_level": self.isolation_level} | self.consumer_overrides),
            ),
            self._stop,
            f"{self.spec.name}-label-joiner",
        )
        if consumer is None:
            return None
        with self._generation_lock:
            self._generation += 1
            self._member_assigned = False
            self._consumer = consumer
        self._rejoin.restart()
        self._assignment.restart()
        # The metadata wait before subscribing has no deadline in kafka-python: watched like a poll. If it is
        # unblocked, the consumer joins no group and the loop replaces it after its next poll (skipped).
        clients.subscribe(
            consumer,
            self.topics,
            _Listener(self, consumer, self._generation),
            watch=lambda call: self._watched(consumer, call, None),
        )
        return consumer

    def _last_contact(self) -> float | None:
        """When the group last answered: records received, or the coordinator's heartbeat answer."""
        stamps = [t for t in (self._received_at, heartbeat_answered_at(self._consumer)) if t is not None]
        return max(stamps) if stamps else None

    def _poll(self, consumer) -> dict:
        """One poll, watched; {} when the watch unblocked it or an earlier call (the consumer is replaced next)."""
        return self._watched(
            consumer, lambda: clients.poll(consumer, self.poll_timeout_ms, self.max_poll_records, self._poll_failed), {}
        )

    def _watched(self, consumer, call: Callable[[], Any], nothing: Any) -> Any:
        """`call()` on `consumer`, unblocked by the poll watch if stuck (then `nothing`): the consumer is replaced
        after the next poll. Every call that waits on kafka-python's network loop goes through here: a wedged loop
        blocks a commit or a position lookup without a deadline just as it blocks a poll."""
        # an abandoned consumer's loop is stopped: replaced after the next poll (skipped too), unused till then
        return self._polls.call(self._generation, lambda: unblock(consumer, self._polls.what), call, nothing)

    def _rejoined_if_wedged(self, consumer, polled: bool):
        """`consumer`, or a new member in its place: when the watcher unblocked its stuck poll, when its assignment
        has lacked partitions of its topics, or when the group stopped answering while the brokers did not.

        Nothing is lost or counted twice: every record handled is in the state (checkpointed or not), and the new
        member's assignment seeks to the state's positions, so it reads on from the next record. Never while
        stopping: the loop ends at its next check, and a new member would only join to leave."""
        if self._stop.is_set():
            return consumer
        if self._polls.abandoned(self._generation):
            reason = f"a call into it (poll, commit or position) was stuck for over {rejoin.STUCK_POLL_S:.0f} s"
        elif not self._member_assigned:
            return consumer  # a member leaving while it still joins can wedge the group (kafka/rejoin.py)
        # Checked on every poll, records or not: the partitions it has may well be delivering.
        elif (reason := self._assignment.short(consumer, self.topics)) is None:
            if polled or (reason := self._rejoin.wedged()) is None:
                return consumer
        log.warning("%s: %s; a new consumer joins the group in place of the old one", self.spec.name, reason)
        self.rejoins += 1
        with self._generation_lock:
            self._generation += 1  # the old member's callbacks during its close change nothing
        close_bounded(lambda: consumer.close(autocommit=False), f"{self.spec.name}-label-joiner")
        self._consumer = None
        return self._open_consumer()

    def _loop(self, consumer) -> None:
        last_flush = time.monotonic()
        give_up_at: float | None = None
        while True:
            if self._stop.is_set():
                if self._member_assigned or self._polls.abandoned(self._generation):  # the latter is past helping
                    break
                # Leaving a Tansu group before the first assignment can wedge it (see the scorer). Giving up still
                # checkpoints below: a replacement still joining follows a member whose records are in the state.
                give_up_at = give_up_at or time.monotonic() + 2 * GROUP_SESSION_TIMEOUT_MS / 1000
                if time.monotonic() > give_up_at:
                    break
            batch = self._poll(consumer)
            if batch:
                self._received_at = time.monotonic()
            for tp, records in batch.items():
                for record in records:
                    self._handle(tp, record)
            consumer = self._rejoined_if_wedged(consumer, polled=bool(batch))
            if consumer is None:  # stopped while no broker answered: the state is checkpointed below
                break
            clock = self._clock_ms(consumer)
            if clock is not None:
                self.state.evict(clock)
            if batch or self.state.dirty:
                self.snapshot = self.state.summary()
            if time.monotonic() - last_flush >= self.flush_interval_s:
                if self.state.dirty:
                    self._checkpoint(consumer)
                elif self._commit_owed:  # the last checkpoint's commit failed, or fell to a replaced consumer
                    self._commit(consumer)
                last_flush = time.monotonic()
        if self.state.dirty:
            self._checkpoint(consumer)

    def _poll_failed(self, exc: Exception) -> None:
        log.warning("%s: poll failed (%r); polling again", self.spec.name, exc)

    def _handle(self, tp, record) -> None:
        # A record stamped in the future (a producer clock ahead) counts from its arrival: its stamp
        # would keep it at the head of the eviction queue, and nothing behind it would ever expire.
        now = time.time() * 1000.0
        ts = min(float(record.timestamp), now) if record.timestamp and record.timestamp > 0 else now
        self._last_ts[tp] = ts
        side = "predictions" if tp.topic == self.spec.predictions_topic else "labels"
        try:
            if side == "predictions":
                event_id, version, prediction, event_ms = self.parser.timed_prediction(record.value)
                self.state.add_prediction(event_id, version, prediction, ts, event_ms)
            else:
                event_id, label = self.parser.label(record.value)
                self.state.add_label(event_id, label, ts)
        except InvalidRecord as exc:
            self.state.invalid(side)
            self._dead_letter(str(exc), tp, record)
        except Exception as exc:  # a parser bug must not make the record a poison pill either
            self.state.invalid(side)
            self._dead_letter(f"unexpected error while joining: {exc!r}", tp, record)
        self.state.advance(tp.topic, tp.partition, record.offset)

    def _dead_letter(self, reason: str, tp, record) -> None:
        if self._dead_letters is None:
            self._producer = clients.producer(self.settings, acks="all")
            self._dead_letters = DeadLetterWriter(self._producer, self.spec.dlq_topic, "label-joiner")
        headers = getattr(record, "headers", None) or None  # a dead letter carries them on
        self._dead_letters.send(
            DeadLetter(reason, tp.topic, tp.partition, record.offset, record.key, record.value, headers)
        )

    def _clock_ms(self, consumer) -> float | None:
        """Event time: the slowest assigned partition's last record timestamp; caught-up ones count as now."""
        assigned = consumer.assignment()
        if not assigned:
            return None
        now = time.time() * 1000.0
        clock = now
        for tp in assigned:
            high_water = consumer.highwater(tp)
            if high_water is None:
                return None  # not fetched yet: its backlog is unknown
            position = self.state.positions.get(tp.topic, {}).get(tp.partition)
            if position is None:
                position = self._watched(consumer, lambda tp=tp: consumer.position(tp, timeout_ms=100), None)
            if position is not None and position >= high_water:
                continue
            last = self._last_ts.get(tp)
            if last is None:
                return None
            clock = min(clock, last)
        return clock

    def _checkpoint(self, consumer) -> None:
        # The offsets stored below move past the records these dead letters stand for, so the
        # letters must be durable first: check() raises DeadLetterError if any was not acknowledged.
        if self._dead_letters is not None and self._dead_letters.pending:
            self._producer.flush(timeout=30)
            self._dead_letters.check()
        seq, at = self.state.seq + 1, time.time()
        record = self.state.record(seq, self.spec.name, at)
        self.store.write_state(seq, self.state.to_json(seq, at))
        crash_point("labels_before_record")  # tests: state written, its line not yet
        self.store.append(record)  # the commit point
        crash_point("labels_after_record")  # tests: line written, offsets not committed
        self.state.checkpointed(seq, at)
        self.checkpoints += 1
        self.snapshot = self.state.summary()
        self._commit(consumer)
        self.store.prune(seq)
        if self.on_flush is not None:
            self.on_flush(record)

    def _commit(self, consumer) -> None:
        """The state's positions to the group, for lag tooling; owed again (`_commit_owed`) until all are committed,
        so that a commit lost to a failure or a replaced consumer is made up without waiting for new records."""
        assigned = (consumer.assignment() if consumer is not None else None) or set()
        positions = [
            (TopicPartition(t, p), o)
            for t, by_partition in self.state.positions.items()
            for p, o in by_partition.items()
        ]
        offsets = {tp: OffsetAndMetadata(o, "", -1) for tp, o in positions if tp in assigned}
        self._commit_owed = len(offsets) < len(positions)
        if not offsets:
            return
        try:
            # bounded well below the poll watch's limit, so that a commit the coordinator is slow to answer is not
            # taken for a stuck client (kafka-python's own bound is request_timeout_ms, 30 s, the watch's limit too)
            if self._watched(consumer, lambda: consumer.commit(offsets, timeout_ms=COMMIT_TIMEOUT_MS), False) is False:
                self._commit_owed = True  # unblocked: its consumer is replaced, the next one commits
        except KafkaError as exc:  # the checkpoint holds the truth; the commit only feeds lag tooling
            self._commit_owed = True
            log.warning("%s: offset commit failed (%r); committing again later", self.spec.name, exc)

    # Rebalance callbacks run on kafka-python's network-loop thread while this one waits inside poll(): seek to the
    # state's positions (every record handled).
    def _on_assigned(self, consumer, assigned, generation: int) -> None:
        """`consumer` (the one whose listener fired, of `generation`) assigned `assigned`: seek it, if still current.

        Only that consumer is sought: a replacement may be under way, and the old member's listener must neither
        seek the new consumer nor mark it assigned (the lock keeps a replacement from starting meanwhile)."""
        with self._generation_lock:
            if generation != self._generation:
                return  # a replaced consumer's callback
            for tp in assigned:
                position = self.state.positions.get(tp.topic, {}).get(tp.partition)
                if position is not None:
                    consumer.seek(tp, position)
            self._member_assigned = True
        self.assigned.set()
        log.info("%s: label joiner assigned %s", self.spec.name, sorted((tp.topic, tp.partition) for tp in assigned))


class _Listener(ConsumerRebalanceListener):
    """One consumer's rebalance listener: it acts on that consumer only, and only while it is the joiner's current
    one (`generation`)."""

    def __init__(self, joiner: LabelJoiner, consumer: Any, generation: int) -> None:
        self.joiner = joiner
        self.consumer = consumer
        self.generation = generation

    def on_partitions_revoked(self, revoked) -> None:
        pass  # the state stays: positions in it are where a re-assigned partition resumes

    def on_partitions_assigned(self, assigned) -> None:
        self.joiner._on_assigned(self.consumer, assigned, self.generation)


def progress_line(stream: str, record: dict[str, Any], summary: LiveSummary) -> str:
    """One line per checkpoint for `streamfit labels join`."""
    c = record["counters"]
    pending = record["pending"]
    parts = [
        f"{stream}: joined {c['joined']}",
        f"pending {pending['predictions']} predictions / {pending['labels']} labels",
        f"evicted {c['evicted_predictions']} / {c['evicted_labels']}",
    ]
    if c["duplicate_predictions"] or c["duplicate_labels"]:
        parts.append(f"duplicates {c['duplicate_predictions']} / {c['duplicate_labels']}")
    if c["invalid_predictions"] or c["invalid_labels"]:
        parts.append(f"invalid {c['invalid_predictions']} / {c['invalid_labels']}")
    quality = []
    for version, q in summary.quality().items():
        if "accuracy" in q:
            quality.append(f"{version} accuracy {q['accuracy']:.4f} ({q['rows']})")
        else:
            quality.append(f"{version} mae {q['mae']:.4f} rmse {q['rmse']:.4f} ({q['rows']})")
    return ", ".join(parts) + (" | " + ", ".join(quality) if quality else "")
