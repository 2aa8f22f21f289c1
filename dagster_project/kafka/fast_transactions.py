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
        super().__init__(config | {"error_cb": self._on_error})
        self.step_timeout_s = step_timeout_s
        # librdkafka's fatal error (fenced by a newer producer with our transactional id), as kafka-python's
        # exception: the scorer stops instead of making a new producer that would fence the live one back.
        self.fatal_error: Exception | None = None

    def _on_error(self, error: Any) -> None:
        if error.fatal():
            from confluent_kafka import KafkaException

            self._fatal(_translated(KafkaException(error), "producer"))

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

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None, partition: int | None = None):
        from confluent_kafka import KafkaException

        try:
            return super().send(topic, value=value, key=key, partition=partition)
        except KafkaException as exc:
            raise self._fatal(_translated(exc, "produce")) from exc

    def _call(self, call: str, *args: Any) -> None:
        from confluent_kafka import KafkaException

        try:
            getattr(self._producer, call)(*args)
        except KafkaException as exc:
            raise self._fatal(_translated(exc, call)) from exc

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
