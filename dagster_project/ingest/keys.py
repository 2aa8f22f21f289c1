"""The Kafka key a stream's events are produced with, so that each key's history is on one partition."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dagster_project.features.timing import EventError, event_key, key_fields
from dagster_project.spec import StreamSpec


def message_key(spec: StreamSpec) -> Callable[[Any], bytes | None]:
    """The Kafka key of a decoded event: a stream with derived features keys by their (first) `by`
    field, read where the feature state reads it (`features` when it is a declared feature), because
    that state is per partition; any other stream by its `id`. None when the event has no usable key
    (the producer then picks a partition)."""
    if not spec.derived:
        return id_key
    field, in_features = key_fields(spec)[0]

    def key(event: Any) -> bytes | None:
        if not isinstance(event, dict):
            return None
        try:
            value = event_key(event, field, in_features)
        except EventError:
            return None
        return str(value).encode()

    return key


def id_key(event: Any) -> bytes | None:
    """An event's `id` as its key; None when it has none."""
    value = event.get("id") if isinstance(event, dict) else None
    return None if value is None or value == "" else str(value).encode()
