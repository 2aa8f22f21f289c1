"""The Kafka scoring loop, and the service that runs it with the champion watcher and HTTP API.

For each poll batch the loop parses every event (malformed ones go to `<stream>.dlq`), scores the
valid ones with one snapshot of the champion and sends one record per event to
`<stream>.predictions`. How the batch is then made final depends on the delivery mode
(`delivery.py`):

- at-least-once: wait until the broker acknowledged every record of the batch (flush, then each
  future checked), and only then commit the batch's offsets. A crash at any point loses no
  prediction, and what it repeats is at most the one batch in flight, with the same event ids.
- exactly-once: the batch is one Kafka transaction (the consumer client's own transactional producer,
  one transactional id per replica): begin, send predictions and dead letters, add the group's next
  offsets (`send_offsets_to_transaction`), commit, each step bounded in time. After any error a new
  producer with the same transactional id settles the transaction (its `init_transactions` aborts
  it, or completes a commit already under way) and the consumer rewinds to the group's committed
  offsets, so the batch is scored again only if it did not commit: nothing is skipped or repeated
  for read_committed readers. A replica fenced by another producer with its transactional id
  (`ProducerFencedError`) stops with `ScorerFenced` instead.

Prediction records (JSON, key = event id)::

    {"id", "prediction", "probabilities", "model_version", "latency_ms", "ts"}

`prediction` is the spec's class value (classification) or the predicted value (regression);
`probabilities` the class probabilities, or decision scores for models without predict_proba,
and null for regression; `latency_ms` is the time from the event's Kafka record timestamp to its
prediction (queueing included), `ts` the epoch seconds at which the prediction was made.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from kafka import OffsetAndMetadata, TopicPartition
from kafka.errors import (
    InvalidProducerEpochError,
    KafkaError,
    KafkaTimeoutError,
    ProducerFencedError,
    TransactionalIdAuthorizationFailedError,
)

from dagster_project.dev.faults import crash_point
from dagster_project.ingest.dead_letters import DeadLetterError
from dagster_project.kafka import clients, rejoin
from dagster_project.kafka.io import check_reachable, ensure_topics, read_isolation
from dagster_project.kafka.rejoin import PollWatch, RejoinWatch, close_bounded, made_while_brokers_away
from dagster_project.kafka.settings import GROUP_SESSION_TIMEOUT_MS, KafkaSettings
from dagster_project.registry.store import ModelRegistry
from dagster_project.serving.champion import ChampionWatcher
from dagster_project.serving.consumers import (
    KAFKA_PYTHON,
    CommitFailed,
    PollBatch,
    ScorerConsumer,
    open_consumer,
    requested_client,
)
from dagster_project.serving.delivery import (
    Delivery,
    replica_id_or_default,
    requested_delivery,
    resolve_delivery,
    transactional_id,
)
from dagster_project.serving.features import ServingFeatures
from dagster_project.serving.health import KafkaLink, ScorerHealth
from dagster_project.serving.http import ScorerHTTPServer, bind_http_socket, reserve_reuse_port
from dagster_project.serving.http_processes import HttpProcesses, WorkerPlan
from dagster_project.serving.limits import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_KEEP_ALIVE_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_ROWS,
)
from dagster_project.serving.metrics import ScorerMetrics, multiprocess_dir
from dagster_project.serving.scoring import BatchOutcome, BatchScorer, PredictionsNotAcknowledged, Sending
from dagster_project.spec import StreamSpec

log = logging.getLogger(__name__)

DEFAULT_MAX_POLL_RECORDS = 500
FETCH_CHECK_INTERVAL_S = 1.0  # how often the Kafka loop asks its consumer which partitions it cannot fetch
TOKEN_ENV = "STREAMFIT_SCORER_TOKEN"
_UNBLOCKED: Any = object()  # what a watched call returns when the poll watch unblocked it (or an earlier one)

T = TypeVar("T")


def scorer_group(spec: StreamSpec) -> str:
    """The consumer group all scorers of a stream share: partitions are split between them."""
    return f"streamfit-{spec.name}-scorers"


class ScorerFenced(RuntimeError):
    """Another producer took this replica's transactional id: this scorer is a zombie and must stop.

    Raised out of `Scorer.run()` (and `streamfit serve` exits 1 with it). Either a newer process of
    the same replica is running (then this one is stale and stopping is right), or two live replicas
    share a replica id (give each its own `--replica-id`).
    """


_FENCED = (ProducerFencedError, InvalidProducerEpochError, TransactionalIdAuthorizationFailedError)
# A poll batch's transaction normally takes well under a second: each step (flush, offsets, commit) that takes
# longer than this is treated as failed (a transaction coordinator failing over), and the transaction settled by
# a new producer.
TRANSACTION_STEP_TIMEOUT_S = 10.0
_PUBLIC_CALLS = {
    "send_offsets": "send_offsets_to_transaction",
    "commit": "commit_transaction",
    "abort": "abort_transaction",
}
_MANAGER_CALLS = {"send_offsets": "send_offsets_to_transaction", "commit": "begin_commit", "abort": "begin_abort"}


def _bounded(producer, call: str, *args: Any, timeout_s: float) -> None:
    """kafka-python's send_offsets_to_transaction / commit_transaction / abort_transaction, with a deadline.

    Those methods wait for the transaction coordinator without one (kafka-python 3.0), and a coordinator
    that died mid-request can leave them waiting forever. These are their same three steps (ask the
    transaction manager, wake the sender, wait for the result), bounded; if the internals ever move, the
    public (unbounded) method is used instead.
    """
    manager, sender = getattr(producer, "_transaction_manager", None), getattr(producer, "_sender", None)
    begin = getattr(manager, _MANAGER_CALLS[call], None)
    if begin is None or sender is None or not hasattr(sender, "wakeup"):
        getattr(producer, _PUBLIC_CALLS[call])(*args)
        return
    result = begin(*args)
    sender.wakeup()
    if not result.wait(timeout_ms=int(timeout_s * 1000)):
        raise KafkaTimeoutError(f"{_PUBLIC_CALLS[call]} got no answer within {timeout_s:g}s")


def _discard(producer) -> None:
    """Close a producer at once, dropping what it still holds (kafka-python's close raises instead of
    stopping its sender thread when records are pending)."""
    try:
        producer.close(timeout=0)
    except Exception:
        sender = getattr(producer, "_sender", None)
        if sender is not None and hasattr(sender, "force_close"):
            sender.force_close()


class Scorer:
    """Consumes `<stream>.events` in the scorers' group and writes `<stream>.predictions`.

    `run()` blocks until `stop()`; it waits for the watcher's first model before joining the group,
    so no event is consumed without a model to score it. A wedged consumer is replaced by a new member
    (kafka/rejoin.py): one whose group stops answering while the brokers do, and one with a call (poll, offset
    commit, committed-offset lookup) that has not returned for `rejoin.STUCK_POLL_S` (kafka-python; a watch
    thread unblocks it).
    """

    def __init__(
        self,
        spec: StreamSpec,
        settings: KafkaSettings,
        watcher: ChampionWatcher,
        metrics: ScorerMetrics,
        group_id: str | None = None,
        max_poll_records: int = DEFAULT_MAX_POLL_RECORDS,
        poll_timeout_ms: int = 200,
        flush_timeout_s: float = 30.0,
        transaction_step_timeout_s: float = TRANSACTION_STEP_TIMEOUT_S,
        consumer_overrides: dict[str, Any] | None = None,
        producer_overrides: dict[str, Any] | None = None,
        delivery: Delivery | str | None = None,
        replica_id: str | None = None,
        client: str | None = None,
    ) -> None:
        if max_poll_records < 1:
            raise ValueError("max_poll_records must be at least 1")
        # A Delivery is final; a string ("auto", "exactly-once", ...) is resolved against the broker in run().
        self.delivery: Delivery | None = delivery if isinstance(delivery, Delivery) else None
        self.requested_delivery = delivery.requested if isinstance(delivery, Delivery) else requested_delivery(delivery)
        self.client = requested_client(client)  # kafka-python or confluent: which client consumes the events
        self.replica_id = replica_id  # set by ScoringService from --replica-id or host and port
        self.fenced: str | None = None
        self.spec = spec
        self.settings = settings
        self.watcher = watcher
        self.metrics = metrics
        self.group_id = group_id or scorer_group(spec)
        self.max_poll_records = max_poll_records
        self.poll_timeout_ms = poll_timeout_ms
        self.flush_timeout_s = flush_timeout_s
        self.transaction_step_timeout_s = transaction_step_timeout_s
        self.consumer_overrides = consumer_overrides or {}
        self.producer_overrides = producer_overrides or {}
        self.assigned = threading.Event()  # set once the group gave this member its (first) assignment
        # Unready after a session timeout without the broker answering: by then the group has evicted us.
        self.link = KafkaLink(
            settings.bootstrap,
            self.group_id,
            stale_after_s=GROUP_SESSION_TIMEOUT_MS / 1000,
            stall_after_s=flush_timeout_s + GROUP_SESSION_TIMEOUT_MS / 1000,
        )
        self.partitions: frozenset[int] = frozenset()
        self.scored = 0  # events scored and committed by this scorer (for logs and tests)
        self._stop = threading.Event()
        # Derived features from the served version's checkpoint, caught up to this scorer's position.
        self.features = ServingFeatures(spec, settings, watcher.registry, metrics) if spec.derived else None
        self._batches = BatchScorer(spec, watcher, metrics, self.features, flush_timeout_s)
        self._uncommitted: dict[int, int] = {}  # partition -> next offset, acknowledged but not yet committed
        self._positions: dict[int, int] = {}
        self._state_lock = threading.Lock()
        self._give_up_at: float | None = None
        self._producer: Any = None
        self._consumer: ScorerConsumer | None = None
        self._inflight: tuple[PollBatch, Sending] | None = None  # sent, not yet acknowledged and committed
        self._read_committed = False  # set per run from the delivery mode: exactly-once reads committed events only
        self._generation = 0  # of the consumer: callbacks of a replaced one are ignored
        self._member_assigned = False  # the current consumer (not just the scorer) has had an assignment
        self._rejoin = RejoinWatch(settings, self.link.last_contact)
        self._polls = PollWatch(f"{spec.name}-scorer", self._stop)  # unblocks a stuck call (kafka-python)
        self._fetches_checked_at = 0.0

    def stop(self) -> None:
        """Ask the loop to finish its current batch, commit, leave the group and return."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def transactional_id(self) -> str | None:
        if self.delivery is None or not self.delivery.exactly_once:
            return None
        return transactional_id(self.spec, self.replica_id or replica_id_or_default(None, 0))

    def describe_delivery(self) -> dict[str, Any]:
        """The delivery mode and why, for /healthz."""
        if self.delivery is None:
            return {
                "mode": None,
                "requested": self.requested_delivery,
                "reason": "decided when the Kafka loop starts (after the first model loads)",
            }
        detail: dict[str, Any] = self.delivery.as_json()
        if self.delivery.exactly_once:
            detail["transactional_id"] = self.transactional_id
        if self.fenced:
            detail["fenced"] = self.fenced
        return detail

    def run(self) -> None:
        try:
            self._run()
        except ScorerFenced as exc:
            self.link.detach(f"FENCED: {exc}")
            raise
        except BaseException as exc:
            self.link.detach(f"failed: {exc!r}")
            raise
        self.link.detach("stopped")

    def resolve_delivery(self) -> Delivery:
        """The delivery mode for this broker (once); sets the mode metric."""
        if self.delivery is None:
            self.delivery = resolve_delivery(self.settings, self.requested_delivery)
            log.info("%s: delivery %s (%s)", self.spec.name, self.delivery.mode, self.delivery.reason)
        for mode in ("exactly_once", "at_least_once"):
            self.metrics.delivery_mode.labels(self.spec.name, mode).set(1 if mode == self.delivery.mode else 0)
        return self.delivery

    def _run(self) -> None:
        while self.watcher.wait_for_model(0.25) is None:
            if self._stop.is_set():
                return
        log.info("%s: model %s loaded; joining group %s", self.spec.name, self.watcher.current.version, self.group_id)
        self.link.preparing("starting: creating the topics and the producer")
        ensure_topics(
            self.settings,
            [self.spec.events_topic, self.spec.dlq_topic, self.spec.predictions_topic],
            self.spec.partitions,
        )
        exactly_once = self.resolve_delivery().exactly_once
        if exactly_once:
            producer = self._transactional_producer()
            if producer is None:  # stopped while the transaction coordinator was unavailable
                return
        elif self.producer_overrides:  # kafka-python settings: keep kafka-python's producer
            producer = clients.producer(self.settings, **({"acks": "all"} | self.producer_overrides))
        else:
            producer = clients.fast_producer(self.settings, acks="all")
        # read_committed wherever transactions work, in either mode: an upstream producer's aborted
        # events are never scored or counted in derived features, as training's reads never learn them.
        self._read_committed = exactly_once or read_isolation(self.settings) == "read_committed"
        self._producer = producer  # exactly-once replaces it after a fatal producer error
        self._inflight = None
        try:
            with self._polls.watching():  # from the first consumer's subscribe: its metadata wait is watched too
                consumer = self._open_consumer()
                if consumer is not None:  # else stopped while no broker answered
                    if exactly_once:
                        self._loop_exactly_once(consumer)
                    else:
                        self._loop(consumer, producer)
        finally:
            self.link.detach("stopping")
            try:
                if self._producer is not None:
                    self._producer.close(timeout=10)
            finally:
                if self._consumer is not None:  # leaves the group: the others take over at once
                    # bounded: kafka-python's close waits on its network loop without a deadline, so a client
                    # wedged (or unblocked) at stop time would keep `streamfit serve` from exiting
                    close_bounded(self._consumer.close, f"{self.spec.name}-consumer")
            log.info("%s: scorer stopped after %d events; left group %s", self.spec.name, self.scored, self.group_id)

    def _open_consumer(self) -> ScorerConsumer | None:
        """A new member of the scorers' group; its rebalance callbacks are ignored once it is replaced. Made again
        while no broker answers (a stuck consumer is replaced during an outage too); None if stopped meanwhile."""
        self._generation += 1
        generation = self._generation
        self._member_assigned = False
        # read_committed: events written in transactions upstream count once committed
        consumer = made_while_brokers_away(
            lambda: open_consumer(
                self.client,
                self.settings,
                self.group_id,
                self.spec.events_topic,
                lambda partitions: generation == self._generation and self._on_assigned(partitions),
                lambda partitions: generation == self._generation and self._on_revoked(partitions),
                max_poll_records=self.max_poll_records,
                read_committed=self._read_committed,
                on_poll_error=self._poll_failed,
                overrides=self.consumer_overrides,
                # the metadata wait before subscribing (kafka-python) is watched like a poll: if it is unblocked,
                # the consumer joins no group and is replaced after the next poll (skipped)
                watch=lambda unblock, call: self._polls.call(generation, unblock, call, None),
            ),
            self._stop,
            f"{self.spec.name}-scorer",
        )
        self._consumer = consumer
        if consumer is None:
            return None
        self.link.attach(consumer)
        self._rejoin.restart()
        return consumer

    def _poll(self, consumer: ScorerConsumer, timeout_s: float) -> PollBatch | None:
        """One poll, watched where the client's poll can get stuck; None when the watch unblocked it or an earlier
        call (the consumer is replaced next, by `_rejoined_if_wedged`)."""
        batch = self._watched(consumer, partial(consumer.poll, timeout_s, self.max_poll_records))
        return None if batch is _UNBLOCKED else batch

    def _watched(self, consumer: ScorerConsumer, call: Callable[[], T]) -> T:
        """`call()` on `consumer`, unblocked by the poll watch if it is stuck for `rejoin.STUCK_POLL_S`: then
        `_UNBLOCKED`. Every call that waits on kafka-python's network loop goes through here (poll, commit,
        committed): a wedged loop blocks them all without a deadline. A consumer with a call unblocked is not called
        again (`_UNBLOCKED` at once: with its loop stopped, kafka-python would run the call on this thread) and is
        replaced by `_rejoined_if_wedged`. Clients that bound their calls themselves (unblock None) are not watched."""
        if consumer.unblock is None:
            return call()
        return self._polls.call(self._generation, consumer.unblock, call, _UNBLOCKED)

    def _rejoined_if_wedged(self, consumer: ScorerConsumer) -> ScorerConsumer | None:
        """`consumer`, or a new one in its place when the poll watch unblocked a stuck call into it, or when the group
        stopped answering while the brokers did not (rejoin.py). Called between batches only: nothing is in
        flight, no transaction is open; what was acknowledged but not committed is read again by the new one.
        Never while stopping: the loop ends at its next check, and a new member would only join to leave."""
        if self._stop.is_set():
            return consumer
        if self._polls.abandoned(self._generation):
            reason = f"a call into it (poll, commit, committed offsets) was stuck for over {rejoin.STUCK_POLL_S:.0f} s"
        # A member that leaves before its first assignment can wedge a group (Tansu), so a replacement that is
        # still joining is never replaced: that would repeat the wedge every REJOIN_AFTER_S (seen in tests).
        elif not self._member_assigned or (reason := self._rejoin.wedged()) is None:
            return consumer
        log.warning("%s: %s; a new consumer joins the group in place of the old one", self.spec.name, reason)
        self.metrics.consumer_rejoins.labels(self.spec.name).inc()
        self._generation += 1  # the old member's callbacks during its close change nothing from here on
        close_bounded(consumer.close, f"{self.spec.name}-consumer")
        with self._state_lock:  # acknowledged-but-uncommitted batches are re-read: at-least-once allows it
            dropped = set(self.partitions)
            self._uncommitted.clear()
            self._positions.clear()
            self.partitions = frozenset()
        self.metrics.scorer_partitions.labels(self.spec.name).set(0)
        self._forget_lag(dropped)
        return self._open_consumer()

    def _should_stop(self) -> bool:
        # A member that leaves before its first assignment can wedge the group on some brokers
        # (Tansu): on stop, keep polling until assigned, for at most two session timeouts. That is this
        # consumer's assignment: a replacement still joining is such a member too. One whose stuck call was
        # unblocked is past helping (its network loop is stopped): it leaves at once.
        if not self._stop.is_set():
            return False
        if self._member_assigned or self._polls.abandoned(self._generation):
            return True
        if self._give_up_at is None:
            self._give_up_at = time.monotonic() + 2 * GROUP_SESSION_TIMEOUT_MS / 1000
        if time.monotonic() > self._give_up_at:
            log.warning("%s: stopping before the group assigned partitions", self.spec.name)
            return True
        return False

    def _poll_failed(self, exc: Exception) -> None:
        log.warning("%s: poll failed (%r); polling again", self.spec.name, exc)

    @staticmethod
    def _rewind(consumer: ScorerConsumer, *batches: PollBatch | None) -> None:
        """Seek every partition of `batches` back to its first record there (where its committed offset is)."""
        firsts: dict[int, int] = {}
        for batch in batches:
            for partition, first in (batch.firsts() if batch is not None else {}).items():
                firsts[partition] = min(first, firsts.get(partition, first))
        for partition, first in firsts.items():
            consumer.seek(partition, first)

    def _count(self, outcome: BatchOutcome) -> None:
        spec = self.spec
        if outcome.dlq:
            self.metrics.dlq_messages.labels(spec.name).inc(outcome.dlq)
        if outcome.predicted:
            self.metrics.predictions.labels(spec.name, outcome.version, "kafka").inc(outcome.predicted)
        self.metrics.count_unseen(outcome.unseen, "kafka")
        self.metrics.scoring_batches.labels(spec.name, outcome.version).inc()
        self.scored += outcome.predicted

    def _loop(self, consumer: ScorerConsumer, producer) -> None:
        """At-least-once. A batch is committed only after the broker acknowledged its predictions and dead
        letters. Where the client runs its rebalance callbacks inside `poll` on this thread
        (`consumer.revokes_in_poll`), the next batch is polled and prepared while the broker acknowledges this
        one, and a partition about to be revoked has its batch finished first; at any moment at most one
        batch is sent and not committed, so a crash still repeats at most one batch."""
        self._give_up_at = None
        overlap = consumer.revokes_in_poll
        while True:
            if self._inflight is not None and (not overlap or self._stop.is_set()):
                self._settle(consumer)
            if self._should_stop():
                return
            # With a batch in flight, only take what is already there: if nothing is, settle it now.
            timeout_s = 0 if self._inflight is not None else self.poll_timeout_ms / 1000
            batch = self._poll(consumer, timeout_s)
            self.link.polled(batch is not None)
            self._check_fetches()
            prepared = self._batches.prepare(batch) if batch is not None else None
            if self._inflight is not None and not self._settle(consumer, batch):
                continue  # that batch failed and was rewound, this one with it
            if batch is None:
                self._update_lag(consumer, None)
                if self._inflight is None:
                    consumer = self._rejoined_if_wedged(consumer)
                    if consumer is None:  # stopped while no broker answered
                        return
                continue
            self._inflight = (batch, self._batches.send(producer, prepared))

    def _settle(self, consumer: ScorerConsumer, next_batch: PollBatch | None = None) -> bool:
        """Wait for the in-flight batch's acknowledgements, then commit it. If the broker did not acknowledge it
        all, nothing is committed: rewind to it (and past `next_batch`, polled meanwhile) to score it again."""
        batch, sending = self._inflight
        self._inflight = None
        try:
            outcome = self._batches.confirm(self._producer, sending)
        except (PredictionsNotAcknowledged, DeadLetterError, KafkaTimeoutError) as exc:
            # Nothing of this batch is committed: rewind and score it again (same ids, same keys).
            self.metrics.batch_retries.labels(self.spec.name).inc()
            self.link.batch_failed(str(exc), batch.firsts())
            log.error("%s: %s; re-reading the batch", self.spec.name, exc)
            self._rewind(consumer, batch, next_batch)
            self._stop.wait(1.0)
            return False
        self._count(outcome)
        self.link.batch_settled()
        with self._state_lock:
            self._uncommitted.update(batch.nexts())
            offsets = dict(self._uncommitted)
        self._commit(consumer, offsets)
        self._update_lag(consumer, batch)
        return True

    # -- exactly-once ---------------------------------------------------------------------------------

    def _transactional_producer(self):
        """A transactional producer with this replica's id, initialised: that fences any older producer with the
        same id and settles its open transaction (aborted, or a commit already under way completed). None if
        stopped before the transaction coordinator answered."""
        tid = self.transactional_id
        while True:
            if self.client == KAFKA_PYTHON:
                producer = clients.transactional_producer(self.settings, tid, **self.producer_overrides)
            else:  # confluent's producer: the transaction carries the confluent consumer's group metadata
                producer = clients.confluent_transactional_producer(self.settings, tid, self.transaction_step_timeout_s)
            try:
                producer.init_transactions()
                log.info("%s: transactional producer %s ready (exactly-once)", self.spec.name, tid)
                return producer
            except KafkaTimeoutError as exc:  # no transaction coordinator yet (broker starting, failover)
                _discard(producer)
                log.warning("%s: init_transactions(%s) timed out (%s); retrying", self.spec.name, tid, exc)
                self.link.preparing(f"waiting for the transaction coordinator: init_transactions timed out ({exc})")
            except BaseException:
                _discard(producer)
                raise
            if self._stop.wait(1.0):
                return None

    def _fenced(self, exc: BaseException) -> ScorerFenced:
        self.fenced = (
            f"another producer uses transactional id {self.transactional_id} ({type(exc).__name__}): either a newer "
            "process of this replica is running, or two live replicas share a replica id (give each its own "
            "--replica-id / STREAMFIT_SCORER_REPLICA_ID); this scorer stopped and committed nothing more"
        )
        log.critical("%s: FENCED: %s", self.spec.name, self.fenced)
        return ScorerFenced(self.fenced)

    def _loop_exactly_once(self, consumer: ScorerConsumer) -> None:
        self._give_up_at = None
        while True:
            if self._should_stop():
                return
            batch = self._poll(consumer, self.poll_timeout_ms / 1000)
            self.link.polled(bool(batch))
            self._check_fetches()
            if not batch:
                self._update_lag(consumer, None)
                consumer = self._rejoined_if_wedged(consumer)
                if consumer is None:  # stopped while no broker answered
                    return
                continue
            self._producer = self._transact(consumer, self._producer, batch)
            if self._producer is None:  # stopped while replacing a failed producer
                return

    def _transact(self, consumer: ScorerConsumer, producer, batch: PollBatch):
        """One poll batch as one transaction; returns the producer to use next (a new one after a failure,
        None if stopped while making it)."""
        step_s = self.transaction_step_timeout_s
        outcome: BatchOutcome | None = None
        lost_every_broker = getattr(producer, "lost_every_broker", None)  # confluent's producer only
        if lost_every_broker is not None and lost_every_broker():
            # confluent's producer after an outage of every broker: it may keep a group coordinator that is gone
            # and hang in send_offsets_to_transaction (kafka/fast_transactions.py); no transaction is open, so
            # start afresh with a new producer (same transactional id) instead.
            log.warning("%s: every broker was unreachable; new transactional producer", self.spec.name)
            _discard(producer)
            producer = self._transactional_producer()
            if producer is None:
                return None
        try:
            producer.begin_transaction()
            outcome = self._batches.process(producer, batch, flush_timeout_s=step_s)
            topic = batch.topic
            offsets = {TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in batch.nexts().items()}
            # The group's metadata (generation, member id) lets the broker refuse offsets from a member
            # that a rebalance has replaced (KIP-447), so a partition that moved is never committed twice.
            _bounded(producer, "send_offsets", offsets, consumer.group_metadata(), timeout_s=step_s)
            crash_point("scorer_before_transaction_commit")  # tests: all sent, the transaction still open
            _bounded(producer, "commit", timeout_s=step_s)
        except _FENCED as exc:
            raise self._fenced(exc) from exc
        except (PredictionsNotAcknowledged, DeadLetterError, KafkaError) as exc:
            last = getattr(getattr(producer, "_transaction_manager", None), "last_error", None) or getattr(
                producer, "fatal_error", None
            )  # kafka-python's transaction manager, or confluent's fatal error
            if isinstance(last, _FENCED):  # a new producer would fence the live process back: stop instead
                raise self._fenced(last) from exc
            # Not aborted here: after a coordinator failover kafka-python's producer can wait forever on the dead
            # node. A new producer with the same id looks the coordinator up afresh and its init_transactions
            # settles this transaction (aborts it, or finishes a commit that was under way): Kafka's own recovery.
            log.error("%s: transaction failed (%r); new producer, re-reading from the commit", self.spec.name, exc)
            self.link.batch_failed(repr(exc), batch.firsts())
            _discard(producer)
            producer = self._transactional_producer()
            if producer is None:
                return None
            committed_all = self._rewind_to_committed(consumer, batch)
            if committed_all is None:  # the lookup was stuck: its consumer is replaced before the next poll
                log.warning(
                    "%s: whether the failed transaction committed is unknown (the committed-offset lookup was stuck); "
                    "the new consumer reads on from the group's committed offsets, so nothing is skipped or repeated, "
                    "but this batch is not counted if it did commit",
                    self.spec.name,
                )
                self.metrics.batch_retries.labels(self.spec.name).inc()
            elif committed_all and outcome is not None:
                # the coordinator finished the commit although we saw no answer: the batch is served, count it
                log.warning("%s: the failed transaction had committed after all; nothing re-scored", self.spec.name)
                self.metrics.transactions.labels(self.spec.name, "committed").inc()
                self._count(outcome)
                self._update_lag(consumer, batch)
            else:
                self.metrics.batch_retries.labels(self.spec.name).inc()
                self.metrics.transactions.labels(self.spec.name, "aborted").inc()
            return producer
        except BaseException:  # a bug or a crash point: try to leave nothing open for read_committed readers
            try:
                _bounded(producer, "abort", timeout_s=step_s)
            except Exception:  # the broker aborts it after the transaction timeout, or our successor's init does
                pass
            raise
        self.metrics.transactions.labels(self.spec.name, "committed").inc()
        self._count(outcome)
        self.link.contact()
        self.link.batch_settled()
        self._update_lag(consumer, batch)
        return producer

    def _rewind_to_committed(self, consumer: ScorerConsumer, batch: PollBatch) -> bool | None:
        """Seek the batch's partitions to the group's committed offsets, which say whether the failed transaction
        committed after all (then nothing is scored twice) or not (then the batch is scored again). With
        read_committed the fetch waits until no transaction holds offsets of the group (KIP-447).

        True if the committed offsets show the whole batch committed; None if a lookup was stuck and the poll watch
        unblocked it. The transaction is settled already (the new producer's init_transactions) and no other is open,
        so the replacement consumer, which starts from the group's committed offsets, neither skips nor repeats it."""
        committed_all = True
        nexts = batch.nexts()
        step_s = self.transaction_step_timeout_s
        for partition, first in batch.firsts().items():
            while True:
                try:
                    committed = self._watched(consumer, partial(consumer.committed, partition, step_s))
                    if committed is _UNBLOCKED:
                        return None
                    break
                except KafkaError as exc:
                    if not exc.retriable:
                        raise
                    log.warning("%s: reading committed offsets failed (%r); retrying", self.spec.name, exc)
                    if self._stop.wait(1.0):
                        return False
            committed_all = committed_all and committed is not None and committed >= nexts[partition]
            consumer.seek(partition, committed if committed is not None else first)
        return committed_all

    # -- both modes -----------------------------------------------------------------------------------

    def _commit(self, consumer: ScorerConsumer, offsets: dict[int, int]) -> None:
        """Commit `offsets` (acknowledged batches), watched: a commit stuck inside the client is unblocked and its
        consumer replaced; the new one reads again from the group's committed offsets (at-least-once re-scores what
        was acknowledged but not committed, and skips nothing)."""
        try:
            if self._watched(consumer, partial(consumer.commit, offsets)) is _UNBLOCKED:
                self.metrics.commit_failures.labels(self.spec.name).inc()
                log.warning("%s: offset commit stuck inside the client; its consumer is replaced", self.spec.name)
                return
        except CommitFailed as exc:
            # Kept in _uncommitted and committed with the next batch; a rebalance drops what we lost.
            self.metrics.commit_failures.labels(self.spec.name).inc()
            log.warning("%s: offset commit failed (%s); retrying with the next batch", self.spec.name, exc)
            return
        self.link.contact()
        with self._state_lock:
            for partition, offset in offsets.items():
                if self._uncommitted.get(partition) == offset:
                    del self._uncommitted[partition]

    def _check_fetches(self) -> None:
        """About once a second: which assigned partitions the consumer cannot fetch from, into the link (/healthz)
        and `streamfit_scorer_partition_unfetched_seconds`. Metadata and connection state only, no broker call."""
        now = time.monotonic()
        if now - self._fetches_checked_at < FETCH_CHECK_INTERVAL_S:
            return
        self._fetches_checked_at = now
        seconds = self.link.check_fetches()
        for partition, unfetched_s in seconds.items():
            self.metrics.partition_unfetched.labels(self.spec.name, str(partition)).set(unfetched_s)
        # kafka-python revokes on its IO thread: a partition revoked meanwhile keeps no gauge to alert on
        self._forget_lag(set(seconds) - self.partitions)

    def _update_lag(self, consumer: ScorerConsumer, batch: PollBatch | None) -> None:
        with self._state_lock:
            if batch is not None:
                self._positions.update(batch.nexts())
            positions = dict(self._positions)
        for partition, position in positions.items():
            high_water = consumer.highwater(partition)
            if high_water is not None:
                self.metrics.scorer_lag.labels(self.spec.name, str(partition)).set(max(high_water - position, 0))

    # Called on the client's rebalance callback (kafka-python's IO loop, or inside confluent's consume()):
    # bookkeeping only, never blocking calls.
    def _on_assigned(self, assigned: Iterable[int]) -> None:
        assigned = sorted(assigned)
        with self._state_lock:
            self.partitions = frozenset(self.partitions | set(assigned))
        self._member_assigned = True
        self.assigned.set()
        self.link.assigned(assigned)
        self.metrics.scorer_partitions.labels(self.spec.name).set(len(self.partitions))
        log.info("%s: assigned partitions %s", self.spec.name, assigned)

    def _on_revoked(self, revoked: Iterable[int]) -> None:
        revoked = sorted(revoked)
        inflight = self._inflight
        if inflight is not None and not set(revoked).isdisjoint(inflight[0].partitions):
            # Only where revocations run inside poll on the loop's thread: finish the batch while the
            # partition is ours, so its next owner starts after it (a failure leaves it to the next owner).
            self._settle(self._consumer)
        with self._state_lock:
            for partition in revoked:
                self._uncommitted.pop(partition, None)
                self._positions.pop(partition, None)
            self.partitions = frozenset(self.partitions - set(revoked))
        self.metrics.scorer_partitions.labels(self.spec.name).set(len(self.partitions))
        self._forget_lag(revoked)
        self.link.revoked(revoked)
        log.info("%s: revoked partitions %s", self.spec.name, revoked)

    def _forget_lag(self, partitions: Iterable[int]) -> None:
        """Drop the per-partition gauges (lag, seconds without a fetch) of partitions this scorer no longer owns,
        so a dashboard does not show a frozen value for a partition another member serves."""
        for partition in partitions:
            for gauge in (self.metrics.scorer_lag, self.metrics.partition_unfetched):
                try:
                    gauge.remove(self.spec.name, str(partition))
                except KeyError:
                    pass


class HttpPortUnavailable(OSError):
    """The HTTP address could not be bound; keeps the bind's errno so the command can name the option
    that picks another port. Its text is the errno's alone: create_server's repeats the address."""

    def __init__(self, host: str, port: int, error: OSError) -> None:
        plain = OSError(error.errno, os.strerror(error.errno)) if error.errno else error
        super().__init__(f"cannot serve HTTP on {host}:{port}: {plain.strerror or plain}")
        self.host, self.port, self.error = host, port, plain


class ScoringService:
    """A scorer process: champion watcher, Kafka loop and HTTP API for one stream.

    `start()` starts the watcher and HTTP server (so /healthz answers while waiting for a model),
    `run()` runs the Kafka loop in the calling thread until `stop()`, `close()` stops the rest.
    `serve_until_signalled()` does all three and turns SIGTERM/SIGINT into a clean stop.
    """

    def __init__(
        self,
        spec: StreamSpec,
        settings: KafkaSettings,
        registry: ModelRegistry | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        group_id: str | None = None,
        max_poll_records: int = DEFAULT_MAX_POLL_RECORDS,
        token: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_rows: int = DEFAULT_MAX_ROWS,
        body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        keep_alive_s: int = DEFAULT_KEEP_ALIVE_S,
        watch_interval_s: float = 0.25,
        consumer_overrides: dict[str, Any] | None = None,
        delivery: Delivery | str | None = None,
        replica_id: str | None = None,
        client: str | None = None,
        http_processes: int = 1,
    ) -> None:
        if http_processes < 1:
            raise ValueError(f"http_processes must be at least 1, got {http_processes}")
        if http_processes > 1 and spec.derived:
            raise ValueError(
                f"stream {spec.name!r} has derived features, computed from the Kafka loop's state in the main "
                "process, which other HTTP processes cannot see: serve it with --http-processes 1"
            )
        if http_processes > 1 and multiprocess_dir() is None:
            raise ValueError(
                "--http-processes > 1 shares metrics through prometheus_client's multiprocess mode: call "
                "serving.metrics.enable_multiprocess(<fresh directory>) before building the service "
                "(`streamfit serve` does)"
            )
        if registry is None:
            from dagster_project.registry.backends import registry_from_env

            registry = registry_from_env()
        self.spec = spec
        self.metrics = ScorerMetrics(spec.name)
        self.watcher = ChampionWatcher(registry, spec, self.metrics, interval_s=watch_interval_s)
        self.scorer = Scorer(
            spec,
            settings,
            self.watcher,
            self.metrics,
            group_id=group_id,
            max_poll_records=max_poll_records,
            consumer_overrides=consumer_overrides,
            delivery=delivery,
            client=client,
        )
        self.health = ScorerHealth(
            spec.name,
            self.watcher,
            self.scorer.link,
            delivery=self.scorer.describe_delivery,
            features=self.scorer.features,
        )
        options = dict(
            token=token,
            max_body_bytes=max_body_bytes,
            max_rows=max_rows,
            body_timeout_s=body_timeout_s,
            max_connections=max_connections,
            keep_alive_s=keep_alive_s,
        )
        try:
            sock = bind_http_socket((host, port)) if http_processes == 1 else reserve_reuse_port((host, port))
        except OSError as exc:
            raise HttpPortUnavailable(host, port, exc) from exc
        self.http: ScorerHTTPServer | HttpProcesses
        if http_processes == 1:  # today's layout: uvicorn in a thread beside the Kafka loop
            self.http = ScorerHTTPServer(
                (host, port),
                spec,
                self.watcher,
                self.metrics,
                health=self.health,
                features=self.scorer.features,
                sock=sock,
                **options,
            )
        else:  # N processes serve HTTP only; this one runs the Kafka loop
            plan = WorkerPlan(
                spec,
                registry,
                metrics_dir=multiprocess_dir(),
                state_file=str(Path(multiprocess_dir()) / "kafka-state.json"),
                watch_interval_s=watch_interval_s,
                server_options=options,
            )
            self.http = HttpProcesses(
                sock, http_processes, plan, kafka=self.scorer.link.describe, delivery=self.scorer.describe_delivery
            )
        # The transactional id's replica part: given, or from the environment, or <hostname>-<HTTP port>.
        self.scorer.replica_id = replica_id_or_default(replica_id, self.http.server_address[1])
        self._started = False

    @property
    def url(self) -> str:
        return self.http.url

    def start(self) -> ScoringService:
        if not self._started:
            self._started = True
            self.watcher.start()
            self.http.start()
        return self

    def run(self) -> None:
        """The Kafka loop, in this thread, until `stop()`."""
        self.start()
        self.scorer.run()

    def stop(self) -> None:
        self.scorer.stop()

    def close(self) -> None:
        self.scorer.stop()
        self.http.stop()
        self.watcher.stop()

    def serve_until_signalled(self) -> None:
        """Run until SIGTERM or SIGINT: finish the batch, commit, leave the group, stop HTTP.

        A second signal during shutdown falls back to the default action (terminate at once).
        """

        def handle(signum, _frame) -> None:
            log.warning("%s: %s received; finishing the current batch", self.spec.name, signal.Signals(signum).name)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            self.stop()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
        try:
            self.run()
        finally:
            self.close()


def build_service(
    spec: StreamSpec,
    settings: KafkaSettings,
    registry_root: str | Path | None = None,
    **options: Any,
) -> ScoringService:
    """A ScoringService on the registry $STREAMFIT_REGISTRY picks (local root `registry_root`, default
    $STREAMFIT_HOME/registry), the bearer token from $STREAMFIT_SCORER_TOKEN unless `token` is given,
    after checking the broker answers.

    The consumer client (`client`: kafka-python, confluent or auto; default $STREAMFIT_SCORER_CLIENT,
    else auto: confluent when installed, else kafka-python) and the delivery mode (`delivery`:
    exactly-once, at-least-once or auto; default $STREAMFIT_SCORER_DELIVERY, else auto) are checked
    and resolved against the broker here, so an impossible choice fails at start-up
    (DeliveryUnavailable, a ValueError) rather than after the first model loads.
    """
    from dagster_project.registry.backends import registry_from_env

    check_reachable(settings)
    registry = registry_from_env(registry_root) if registry_root else None
    options.setdefault("token", os.environ.get(TOKEN_ENV) or None)
    options["client"] = requested_client(options.get("client"))
    delivery = options.pop("delivery", None)
    if not isinstance(delivery, Delivery):
        delivery = resolve_delivery(settings, requested_delivery(delivery))
    return ScoringService(spec, settings, registry, delivery=delivery, **options)
