"""Dead letters: one writer for every component, and every send is checked.

A message that cannot be learned, scored or joined is never dropped: it goes to `<stream>.dlq`
with the reason, where it came from (topic, partition, offset), which component refused it, and
the message itself, under its key and with its headers. A dead letter the broker did not
acknowledge fails the caller, which then retries: a silently lost dead letter would be a silently
lost row.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from dagster_project.kafka import clients

Component = Literal["trainer", "scorer", "label-joiner"]


class DeadLetterError(RuntimeError):
    """The broker did not acknowledge every dead letter: the batch must not count as handled."""


@dataclass(frozen=True)
class DeadLetter:
    """One refused message: why, and exactly where it came from."""

    reason: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | dict[str, Any] | None  # the raw message, or the parsed row it became
    # The message's Kafka headers (tracing ids, its producer's name), copied onto the dead letter as
    # they were, so whoever reads the DLQ can follow the message back; None when it had none.
    headers: list[tuple[str, bytes | None]] | None = None


# The DLQ record must fit the producer's and the broker's 1 MB defaults (max.request.size,
# message.max.bytes) whatever the refused message was: a message the events topic took can grow
# six-fold as JSON text (control bytes become \u0000), and a dead letter that cannot be written
# fails its batch on every retry. A longer message keeps its first MAX_VALUE_BYTES; the whole of it
# stays on the events topic at the partition and offset the record names.
MAX_RECORD_BYTES = 900_000
MAX_VALUE_BYTES = 64 * 1024
MAX_REASON_CHARS = 4096  # reasons quote values short (ingest.quoting); this bounds any other
# The key and headers travel beside the value: bounded too, so the record stays under 1 MB whatever
# the refused message carried (a 900 KB key made every write of its dead letter fail).
MAX_KEY_BYTES = 16 * 1024
MAX_HEADERS_BYTES = 32 * 1024


def encode(letter: DeadLetter, component: Component) -> bytes:
    """The DLQ record. Raw bytes are kept as text when they are UTF-8, else as `value_base64` (the
    exact bytes); a parsed row (split off after parsing) as an object."""
    reason = letter.reason
    if len(reason) > MAX_REASON_CHARS:
        reason = f"{reason[:MAX_REASON_CHARS]}... ({len(reason)} characters)"
    record = {
        "reason": reason,
        "topic": letter.topic,
        "partition": letter.partition,
        "offset": letter.offset,
        "component": component,
        **_value_fields(letter.value),
    }
    if letter.key is not None and len(letter.key) > MAX_KEY_BYTES:  # the record's key is its first part
        record |= {"key_truncated": True, "key_bytes": len(letter.key)}
    if letter.headers and _headers_bytes(letter.headers) > MAX_HEADERS_BYTES:
        record |= {"headers_dropped": len(letter.headers), "headers_bytes": _headers_bytes(letter.headers)}
    encoded = orjson.dumps(record)
    if len(encoded) <= MAX_RECORD_BYTES or not isinstance(letter.value, bytes | bytearray):
        return encoded
    raw = bytes(letter.value)
    cut = _value_fields(raw[:MAX_VALUE_BYTES])
    return orjson.dumps(record | cut | {"value_truncated": True, "value_bytes": len(raw)})


def bounded_key(key: bytes | None) -> bytes | None:
    """The dead letter's key: the message's, its first MAX_KEY_BYTES when longer (`encode` says so)."""
    return key if key is None or len(key) <= MAX_KEY_BYTES else bytes(key[:MAX_KEY_BYTES])


def bounded_headers(headers: list[tuple[str, bytes | None]] | None) -> list[tuple[str, bytes]] | None:
    """The message's headers for the dead letter, None when it had none or they exceed MAX_HEADERS_BYTES
    (`encode` says so). kafka-python's producer takes no null header value: it becomes empty."""
    if not headers or _headers_bytes(headers) > MAX_HEADERS_BYTES:
        return None
    return [(name, b"" if value is None else bytes(value)) for name, value in headers]


def _headers_bytes(headers: list[tuple[str, bytes | None]]) -> int:
    return sum(len(name.encode()) + len(value or b"") for name, value in headers)


def _value_fields(value: bytes | dict[str, Any] | None) -> dict[str, Any]:
    if not isinstance(value, bytes | bytearray):
        return {"value": value}
    try:
        return {"value": bytes(value).decode("utf-8")}
    except UnicodeDecodeError:  # text for a reader, and the exact bytes (nothing of the message lost)
        return {
            "value": bytes(value).decode("utf-8", errors="replace"),
            "value_base64": base64.b64encode(value).decode(),
        }


class DeadLetterWriter:
    """Sends dead letters on a caller's producer and checks each send once the producer is flushed.

    Components that already own a producer (the scorer, the label joiner) send their dead letters
    beside their other records and call `check()` after their own flush, before committing offsets.
    """

    def __init__(self, producer: Any, dlq_topic: str, component: Component) -> None:
        self.producer = producer
        self.dlq_topic = dlq_topic
        self.component = component
        self._futures: list[Any] = []
        self._errors: list[Exception] = []
        self._unsent = 0

    def send(self, letter: DeadLetter) -> None:
        if self._errors:  # each send would block as long again (30 s of metadata wait per letter, or more)
            self._unsent += 1
            return
        try:
            future = self.producer.send(
                self.dlq_topic,
                key=bounded_key(letter.key),
                value=encode(letter, self.component),
                headers=bounded_headers(letter.headers),
            )
        except Exception as exc:  # kafka-python raises at once when it cannot even queue the record
            self._errors.append(exc)
            return
        self._futures.append(future)

    @property
    def _then(self) -> str:
        """What happens to the work: a training run is retried (or re-executed); scorers retry themselves."""
        if self.component == "trainer":
            return "the run is retried, or re-execute it once the broker accepts writes again"
        return "the work is retried once the broker accepts writes again"

    @property
    def pending(self) -> int:
        return len(self._futures) + len(self._errors) + self._unsent

    def check(self) -> int:
        """After the producer's flush: raise unless every dead letter was acknowledged; returns how many."""
        failed = self._errors + [f.exception for f in self._futures if not (f.is_done and f.exception is None)]
        sent, unsent = self.pending, self._unsent
        self._futures, self._errors, self._unsent = [], [], 0
        if failed:
            text = repr(failed[0])
            if any(sign in text for sign in ("TooLarge", "TOO_LARGE", "too large")):
                fix = (
                    f"a dead letter is larger than {self.dlq_topic} accepts: raise the topic's max.message.bytes "
                    f"to at least {MAX_RECORD_BYTES + 100_000} bytes, then re-execute the run"
                )
            elif "metadata" in text.lower():
                fix = (
                    f"the broker gave no metadata for {self.dlq_topic}: it is unreachable, or the topic does not "
                    "exist and the broker does not create topics (auto.create.topics.enable=false; then create "
                    f"it); {self._then}"
                )
            else:
                fix = self._then
            not_sent = f" ({unsent} not sent after the first failure)" if unsent else ""
            raise DeadLetterError(
                f"{len(failed) + unsent} of {sent} dead letters were not acknowledged by {self.dlq_topic}{not_sent}: "
                f"{failed[0]!r}. Nothing was committed; {fix}."
            )
        return sent


def write_dead_letters(
    settings: Any,
    dlq_topic: str,
    component: Component,
    letters: Iterable[DeadLetter],
    timeout_s: float = 30.0,
    partitions: int | None = None,
) -> int:
    """Send `letters` on a producer of their own (acks=all) and return once all are durable, or raise
    within about `timeout_s` (the producer's bootstrap is bounded too: kafka-python waits 30 s for an
    unreachable broker by default, whatever the send timeout). With `partitions`, the topic is created
    first if it does not exist (deleted, on a broker that creates no topics), as the scorer does."""
    letters = list(letters)
    if not letters:
        return 0
    if partitions is not None:
        from dagster_project.kafka.io import ensure_topics

        try:
            ensure_topics(
                settings,
                [dlq_topic],
                partitions,
                timeout_s=timeout_s,
                warn_on_partitions=False,
                bootstrap_timeout_s=timeout_s,
            )
        except Exception as exc:
            raise DeadLetterError(
                f"cannot make sure {dlq_topic} exists before writing {len(letters)} dead letters to it: {exc!r}. "
                "Nothing was committed; the work is retried once the broker answers"
            ) from exc
    try:
        timeout_ms = int(timeout_s * 1000)
        producer = clients.producer(settings, acks="all", max_block_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms)
    except Exception as exc:
        raise DeadLetterError(
            f"cannot reach the broker to write {len(letters)} dead letters to {dlq_topic}: {exc!r}"
        ) from exc
    writer = DeadLetterWriter(producer, dlq_topic, component)
    try:
        for letter in letters:
            writer.send(letter)
        try:
            producer.flush(timeout=timeout_s)
        except Exception as exc:
            raise DeadLetterError(
                f"{writer.pending} dead letters to {dlq_topic} were not acknowledged within {timeout_s:g}s: {exc!r}"
            ) from exc
        return writer.check()
    finally:
        producer.close(timeout=5)
