"""kafka-python's producer surface (send -> future, flush, close) on top of confluent-kafka.

The scorer sends one prediction record per event, where kafka-python's per-send Python cost
dominates and librdkafka's is far smaller. This adapter lets the scorer keep its at-least-once logic:
every send returns a future that says whether the broker acknowledged the record, and flush
raises `KafkaTimeoutError` when records are still unacknowledged at the deadline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kafka.errors import KafkaTimeoutError


class DeliveryFuture:
    """The part of kafka-python's FutureRecordMetadata Streamfit uses."""

    __slots__ = ("_errbacks", "exception", "is_done")

    def __init__(self) -> None:
        self.is_done = False
        self.exception: Exception | None = None
        self._errbacks: list[Callable[[Exception], Any]] = []

    def succeeded(self) -> bool:
        return self.is_done and self.exception is None

    def failed(self) -> bool:
        return self.is_done and self.exception is not None

    def add_errback(self, fn: Callable[[Exception], Any]) -> DeliveryFuture:
        if self.failed():
            fn(self.exception)
        else:
            self._errbacks.append(fn)
        return self

    def _delivered(self, error: Any, _message: Any) -> None:
        """librdkafka's delivery report of a failed record (called from poll/flush in the sending thread)."""
        self.is_done = True
        if error is not None:
            self.exception = RuntimeError(f"delivery failed: {error.str()}")
            for fn in self._errbacks:
                fn(self.exception)


class BatchDelivery:
    """Many records sent at once, checked together: done after a clean flush, failed if any record failed.

    One delivery callback for the whole batch instead of a future per record: at the scorer's rates the
    per-record Python objects cost as much as producing.
    """

    __slots__ = ("errors", "is_done", "sent")

    def __init__(self, sent: int) -> None:
        self.sent = sent
        self.is_done = False
        self.errors: list[Exception] = []

    def succeeded(self) -> bool:
        return self.is_done and not self.errors

    def _failed(self, error: Any, _message: Any) -> None:
        if error is not None:
            self.errors.append(RuntimeError(f"delivery failed: {error.str()}"))


class ConfluentProducer:
    """Sends like kafka-python's KafkaProducer; keyed records land on the same partitions (murmur2)."""

    def __init__(self, config: dict[str, Any]) -> None:
        from confluent_kafka import Producer

        # Delivery reports for failures only: a Python callback per acknowledged record costs as
        # much as producing it. A clean flush() means every other pending record was acknowledged.
        self._producer = Producer(config | {"delivery.report.only.error": True})
        self._pending: list[DeliveryFuture | BatchDelivery] = []

    def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> DeliveryFuture:
        future = DeliveryFuture()
        kwargs: dict[str, Any] = {"value": value, "key": key, "on_delivery": future._delivered}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = headers
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                break
            except BufferError:  # the local queue is full: serve delivery reports, then retry
                self._producer.poll(0.05)
        self._pending.append(future)
        return future

    def send_many(self, topic: str, keys: list[bytes | None], values: list[bytes]) -> BatchDelivery:
        """Send one record per (key, value); the returned batch says after `flush` whether all were acknowledged."""
        batch = BatchDelivery(len(values))
        produce, report = self._producer.produce, batch._failed
        for key, value in zip(keys, values, strict=True):
            while True:
                try:
                    produce(topic, value, key, on_delivery=report)
                    break
                except BufferError:  # the local queue is full: serve delivery reports, then retry
                    self._producer.poll(0.05)
        self._pending.append(batch)
        return batch

    def flush(self, timeout: float | None = None) -> None:
        remaining = self._producer.flush(-1 if timeout is None else timeout)
        if remaining:
            raise KafkaTimeoutError(f"{remaining} records not acknowledged within {timeout}s")
        for pending in self._pending:
            pending.is_done = True  # failures were reported (and marked) by their delivery callbacks
        self._pending.clear()

    def close(self, timeout: float | None = None) -> None:
        """Flush for up to `timeout`, then drop what is left and free librdkafka at once: its threads would
        otherwise keep reconnecting (and logging "Connect ... failed") until the last reference goes, which
        can be long after the broker stopped (a scorer object kept by a test, a benchmark's report)."""
        if self._producer is None:
            return
        try:
            self.flush(timeout)
        except KafkaTimeoutError:
            pass  # like kafka-python's close: undelivered records are dropped; their futures say so
        finally:
            self._release()

    def _release(self) -> None:
        """Purge and let go of the librdkafka producer: freeing the handle destroys it without the endless flush
        of confluent-kafka's own `close()`."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        producer.purge()
        try:
            producer.poll(0)  # serve the purged records' failure reports: their futures and batches say so
        except Exception:  # a producer in a fatal state (fenced) raises its error from poll: it is discarded anyway
            pass
