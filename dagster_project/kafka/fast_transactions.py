"""kafka-python's transactional producer surface on top of confluent-kafka, for the confluent scorer client.

The scorer's exactly-once loop (`serving/scorer.py`) drives one transaction per poll batch through
kafka-python's calls and reacts to kafka-python's exceptions. This adapter keeps those calls and maps
librdkafka's errors onto the same exceptions: a fenced producer (another process took the transactional
id) raises `ProducerFencedError`, an error that needs the transaction aborted or any other failure a
`KafkaError`, a missing coordinator or any other retriable error a `KafkaTimeoutError`. Every call is bounded
by `step_timeout_s`, which librdkafka takes as an argument.

librdkafka does not always keep that bound: `send_offsets_to_transaction` can wait forever for a group
coordinator it cached before the brokers went away (librdkafka issues #5456 and #5511, open in 2.16: seen
here after a whole Apache Kafka cluster was stopped and started again, when the scorer hung in it until
stopped). So that call runs on a helper thread and is given up a little after its timeout: the scorer then
discards this producer (left to its thread, never destroyed under it) and a new one, with a fresh
coordinator lookup, settles the transaction. And a producer that saw every broker go away says so
(`lost_every_broker()`), so the scorer replaces it between transactions instead of waiting for that hang.

A given-up call keeps its producer (librdkafka's threads and sockets) until librdkafka returns, which for that
hang may be never: one per whole-cluster outage. Past `MAX_STUCK_CALLS` alive in one process the scorer stops
with `ClientCallsStuck` instead of leaking further; a restart (its supervisor's restart policy) frees them.
"""

from __future__ import annotations

import threading
from typing import Any

from kafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    ProducerFencedError,
    TransactionalIdAuthorizationFailedError,
)

from dagster_project.kafka.fast_producer import ConfluentProducer


def _translated(exc: Exception, call: str) -> Exception:
    """kafka-python's exception for librdkafka's error `exc` raised by `call`."""
    from confluent_kafka import KafkaError as RdError

    error = exc.args[0] if exc.args and isinstance(exc.args[0], RdError) else None
    text = f"{call}: {error.str() if error is not None else exc!r}"
    if error is None:
        return KafkaError(text)
    fenced = (RdError._FENCED, getattr(RdError, "PRODUCER_FENCED", None), RdError.INVALID_PRODUCER_EPOCH)
    if error.code() in fenced or (error.fatal() and "fenced" in error.str().lower()):
        return ProducerFencedError(text)
    if error.code() == RdError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
        return TransactionalIdAuthorizationFailedError(text)
    timeouts = (RdError._TIMED_OUT, RdError._TIMED_OUT_QUEUE, RdError.COORDINATOR_NOT_AVAILABLE)
    if error.code() in timeouts or (error.retriable() and not error.fatal()):
        return KafkaTimeoutError(text)  # kafka-python's retriable error: the scorer tries again
    return KafkaError(text)


# How long past its own timeout a librdkafka call that should have returned is waited for before it is given up.
OVERDUE_GRACE_S = 2.0
# Given-up calls still inside librdkafka that one process tolerates (each holds a producer): see the docstring.
MAX_STUCK_CALLS = 4
_stuck: list[threading.Thread] = []
_stuck_lock = threading.Lock()


class ClientCallsStuck(RuntimeError):
    """Too many librdkafka calls are stuck past their timeout in this process: restart it to free them."""


def stuck_calls() -> int:
    """Given-up librdkafka calls of this process that have still not returned."""
    with _stuck_lock:
        _stuck[:] = [t for t in _stuck if t.is_alive()]
        return len(_stuck)


def _give_up(worker: threading.Thread, call: str) -> int:
    """Record a given-up call; raise ClientCallsStuck past `MAX_STUCK_CALLS` of them alive."""
    with _stuck_lock:
        _stuck.append(worker)
    stuck = stuck_calls()
    if stuck > MAX_STUCK_CALLS:
        raise ClientCallsStuck(
            f"{stuck} librdkafka calls ({call} last) are stuck past their timeout in this process, each holding a "
            "producer (librdkafka #5456/#5511, after whole-cluster outages): restart the scorer to free them (a "
            "supervisor's restart policy does; nothing committed is lost, the new process resumes from the commit)"
        )
    return stuck


class ConfluentTransactionalProducer(ConfluentProducer):
    """A transactional ConfluentProducer that answers like kafka-python's KafkaProducer."""

    def __init__(self, config: dict[str, Any], step_timeout_s: float) -> None:
        super().__init__(config | {"error_cb": self._on_error})
        self.step_timeout_s = step_timeout_s
        # librdkafka's fatal error (fenced by a newer producer with our transactional id), as kafka-python's
        # exception: the scorer stops instead of making a new producer that would fence the live one back.
        self.fatal_error: Exception | None = None
        # A call that outlived its timeout still runs inside librdkafka on this thread: never purge or destroy
        # the producer under it (the thread holds the last reference, so it is freed when the call returns).
        self.stuck_in: threading.Thread | None = None
        # Every broker was unreachable at some point: the group coordinator librdkafka cached may be gone for good
        # (the hang above), so the scorer replaces this producer before its next transaction.
        self._lost_every_broker = False

    def _on_error(self, error: Any) -> None:
        from confluent_kafka import KafkaError as RdError

        if error.code() == RdError._ALL_BROKERS_DOWN:
            self._lost_every_broker = True
        if error.fatal():
            from confluent_kafka import KafkaException

            self._fatal(_translated(KafkaException(error), "producer"))

    def lost_every_broker(self) -> bool:
        """Whether every broker was unreachable since this producer was made (errors are reported on poll: served
        here first)."""
        if self._producer is not None:
            try:
                self._producer.poll(0)
            except Exception:  # a fatal error (fenced): the next transactional call raises it, translated
                pass
        return self._lost_every_broker

    def flush(self, timeout: float | None = None) -> None:
        """confluent-kafka 2.16 raises a fatal error (fenced) from flush, and then calls the failed records'
        delivery callbacks with that exception still set, which surfaces as a SystemError caused by it."""
        from confluent_kafka import KafkaException

        try:
            super().flush(timeout)
        except KafkaException as exc:
            raise self._fatal(_translated(exc, "flush")) from exc
        except SystemError as exc:
            if not isinstance(exc.__cause__, KafkaException):
                raise
            raise self._fatal(_translated(exc.__cause__, "flush")) from exc

    def _fatal(self, exc: Exception) -> Exception:
        if isinstance(exc, ProducerFencedError | TransactionalIdAuthorizationFailedError):
            self.fatal_error = exc
        return exc

    def send_many(self, topic: str, keys: list[bytes | None], values: list[bytes]):
        from confluent_kafka import KafkaException

        try:
            return super().send_many(topic, keys, values)
        except KafkaException as exc:  # a producer in a fatal state refuses new records at once
            raise self._fatal(_translated(exc, "produce")) from exc

    def send(self, topic: str, *args: Any, **fields: Any):
        """`FastProducer.send` (value, key, partition, headers), a fatal producer error translated."""
        from confluent_kafka import KafkaException

        try:
            return super().send(topic, *args, **fields)
        except KafkaException as exc:
            raise self._fatal(_translated(exc, "produce")) from exc

    def _call(self, call: str, *args: Any) -> None:
        from confluent_kafka import KafkaException

        if self.stuck_in is not None:  # another call may wait on the same dead coordinator: never stack a second
            raise KafkaTimeoutError(f"{call}: this producer was given up (a call past its timeout); use a new one")
        try:
            getattr(self._producer, call)(*args)
        except KafkaException as exc:
            raise self._fatal(_translated(exc, call)) from exc

    def init_transactions(self) -> None:
        self._call("init_transactions", self.step_timeout_s)

    def begin_transaction(self) -> None:
        self._call("begin_transaction")

    def _call_overdue_safe(self, call: str, *args: Any) -> None:
        """`_call` on a helper thread, given up `OVERDUE_GRACE_S` after `step_timeout_s` with KafkaTimeoutError:
        for the librdkafka calls that can block past the timeout they are given (see the module docstring)."""
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                self._call(call, *args)
                outcome.append(None)
            except BaseException as exc:  # handed to the caller's thread
                outcome.append(exc)

        worker = threading.Thread(target=run, name=f"librdkafka-{call}", daemon=True)
        worker.start()
        worker.join(self.step_timeout_s + OVERDUE_GRACE_S)
        if worker.is_alive():
            self.stuck_in = worker
            _give_up(worker, call)
            raise KafkaTimeoutError(
                f"{call} got no answer within {self.step_timeout_s:g}s and did not return (a librdkafka call past "
                "its timeout): this producer is given up; a new one settles the transaction"
            )
        if outcome[0] is not None:
            raise outcome[0]

    def send_offsets_to_transaction(self, offsets: dict[Any, Any], group_metadata: Any) -> None:
        """`offsets` as kafka-python gives them ({TopicPartition: OffsetAndMetadata}); `group_metadata` from
        confluent's consumer (`consumer_group_metadata()`), which lets the broker fence a replaced member."""
        from confluent_kafka import TopicPartition

        partitions = [TopicPartition(tp.topic, tp.partition, meta.offset) for tp, meta in offsets.items()]
        self._call_overdue_safe("send_offsets_to_transaction", partitions, group_metadata, self.step_timeout_s)

    def commit_transaction(self) -> None:
        self._call("commit_transaction", self.step_timeout_s)

    def abort_transaction(self) -> None:
        self._call("abort_transaction", self.step_timeout_s)

    def close(self, timeout: float | None = None) -> None:
        if self.stuck_in is not None:  # librdkafka is still inside a call: leave the producer to that thread
            self._pending.clear()
            self._producer = None  # the thread's reference frees it once the call returns
            return
        if timeout == 0:  # discarded after a failure: drop what it holds, its successor settles the transaction
            self._release()
            return
        super().close(timeout)
