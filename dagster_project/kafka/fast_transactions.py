"""kafka-python's transactional producer surface on top of confluent-kafka, for the confluent scorer client.

The scorer's exactly-once loop (`serving/scorer.py`) drives one transaction per poll batch through
kafka-python's calls and reacts to kafka-python's exceptions. This adapter keeps those calls and maps
librdkafka's errors onto the same exceptions: a fenced producer (another process took the transactional
id) raises `ProducerFencedError`, an error that needs the transaction aborted or any other failure a
`KafkaError`, a missing coordinator at `init_transactions` a `KafkaTimeoutError`. Every call is bounded by
`step_timeout_s`, which librdkafka takes as an argument.
"""

from __future__ import annotations

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
    if error.code() in (RdError._TIMED_OUT, RdError._TIMED_OUT_QUEUE, RdError.COORDINATOR_NOT_AVAILABLE):
        return KafkaTimeoutError(text)
    return KafkaError(text)


class ConfluentTransactionalProducer(ConfluentProducer):
    """A transactional ConfluentProducer that answers like kafka-python's KafkaProducer."""

    def __init__(self, config: dict[str, Any], step_timeout_s: float) -> None:
        super().__init__(config)
        self.step_timeout_s = step_timeout_s

    def _call(self, call: str, *args: Any) -> None:
        from confluent_kafka import KafkaException

        try:
            getattr(self._producer, call)(*args)
        except KafkaException as exc:
            raise _translated(exc, call) from exc

    def init_transactions(self) -> None:
        self._call("init_transactions", self.step_timeout_s)

    def begin_transaction(self) -> None:
        self._call("begin_transaction")

    def send_offsets_to_transaction(self, offsets: dict[Any, Any], group_metadata: Any) -> None:
        """`offsets` as kafka-python gives them ({TopicPartition: OffsetAndMetadata}); `group_metadata` from
        confluent's consumer (`consumer_group_metadata()`), which lets the broker fence a replaced member."""
        from confluent_kafka import TopicPartition

        partitions = [TopicPartition(tp.topic, tp.partition, meta.offset) for tp, meta in offsets.items()]
        self._call("send_offsets_to_transaction", partitions, group_metadata, self.step_timeout_s)

    def commit_transaction(self) -> None:
        self._call("commit_transaction", self.step_timeout_s)

    def abort_transaction(self) -> None:
        self._call("abort_transaction", self.step_timeout_s)

    def close(self, timeout: float | None = None) -> None:
        if timeout == 0:  # discarded after a failure: drop what it holds, its successor settles the transaction
            self._producer.purge()
            return
        super().close(timeout)
