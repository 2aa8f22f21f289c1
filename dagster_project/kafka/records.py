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
