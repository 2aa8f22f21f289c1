"""One Kafka record as Streamfit needs it."""

from __future__ import annotations

from typing import NamedTuple


class RawRecord(NamedTuple):
    """One Kafka record as Streamfit needs it (a tuple: built once per message on the hot path)."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


def timestamp_seconds(timestamp_ms: int | None) -> float | None:
    """A record's Kafka timestamp in epoch seconds; None when it has none (-1, 0 from some clients, or
    None: kafka-python's for a record in the pre-0.10 format)."""
    return timestamp_ms / 1000.0 if timestamp_ms is not None and timestamp_ms > 0 else None
