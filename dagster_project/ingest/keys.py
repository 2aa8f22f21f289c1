"""The Kafka key a stream's events are produced with, so that each key's history is on one partition."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dagster_project.features.timing import EventError, event_key, key_fields
from dagster_project.spec import StreamSpec

KeyOf = Callable[[Any], bytes | None]


def message_key(spec: StreamSpec) -> KeyOf:
    """The Kafka key of a decoded event: a stream with derived features keys by their (first) `by`
    field, read where the feature state reads it (`features` when it is a declared feature), because
    that state is per partition; any other stream by its `id`."""
    return field_key(*key_fields(spec)[0]) if spec.derived else id_key


def field_key(field: str, in_features: bool = False) -> KeyOf:
    """An event's `field` as its key, read as `features.timing.event_key` reads it; None when the
    event has no usable value there (the producer then picks a partition)."""

    def key(event: Any) -> bytes | None:
        if not isinstance(event, dict):
            return None
        try:
            value = event_key(event, field, in_features)
        except EventError:
            return None
        return str(value).encode()

    return key


id_key = field_key("id")
