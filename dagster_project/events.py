"""The event contract: parse one Kafka message into a training row, or say exactly why not.

Events are JSON objects `{id, ts, features: {...}, label?}` keyed by event id. A message that
cannot be parsed or breaks the stream's schema becomes a dead-letter record that names the
reason and where the message came from; it never stops a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from dagster_project.spec import FeatureSpec, StreamSpec


class InvalidEvent(ValueError):
    """The message breaks the event contract; the message is the reason stored in the DLQ."""


@dataclass(frozen=True)
class ParsedEvent:
    event_id: str
    ts: float | None
    values: list[float]
    label_index: int | None
    label_value: float | None


def coerce_feature(feature: FeatureSpec, raw: Any) -> float:
    if raw is None:
        if feature.nullable:
            return math.nan
        raise InvalidEvent(f"feature {feature.name!r} is null but the spec does not allow nulls")
    if feature.type == "bool":
        if isinstance(raw, bool) or raw in (0, 1):
            return float(raw)
        raise InvalidEvent(f"feature {feature.name!r} must be a bool, got {type(raw).__name__} {raw!r}")
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise InvalidEvent(f"feature {feature.name!r} must be a number, got {type(raw).__name__} {raw!r}")
    if feature.type == "int" and not float(raw).is_integer():
        raise InvalidEvent(f"feature {feature.name!r} must be an integer, got {raw!r}")
    value = float(raw)
    if not math.isfinite(value):
        raise InvalidEvent(f"feature {feature.name!r} is not finite: {raw!r}")
    return value


class EventParser:
    """Validates messages against one stream's spec; built once per batch for speed."""

    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec
        self._features = spec.features
        self._known = set(spec.feature_names)
        classes = spec.label.classes or []
        self._class_index = {label_key(c): i for i, c in enumerate(classes)}

    def parse(self, raw: bytes | None) -> ParsedEvent:
        if raw is None:
            raise InvalidEvent("empty message (null value)")
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent(f"not valid JSON: {exc}") from None
        if not isinstance(event, dict):
            raise InvalidEvent(f"event must be a JSON object, got {type(event).__name__}")
        event_id = event.get("id")
        if not isinstance(event_id, str | int) or isinstance(event_id, bool) or event_id == "":
            raise InvalidEvent("event has no 'id' (string or integer)")
        features = event.get("features")
        if not isinstance(features, dict):
            raise InvalidEvent("event has no 'features' object")
        missing = [f.name for f in self._features if f.name not in features]
        if missing:
            raise InvalidEvent(f"missing feature(s) {missing}")
        unknown = sorted(set(features) - self._known)
        if unknown:
            raise InvalidEvent(f"unknown feature(s) {unknown}: add them to the stream spec or stop sending them")
        values = [coerce_feature(f, features[f.name]) for f in self._features]
        ts = event.get("ts")
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float)):
            raise InvalidEvent(f"'ts' must be a number (epoch seconds), got {ts!r}")
        label_index, label_value = self._label(event.get("label"))
        return ParsedEvent(str(event_id), ts, values, label_index, label_value)

    def _label(self, label: Any) -> tuple[int | None, float | None]:
        if label is None:
            return None, None
        if self.spec.task == "classification":
            if not isinstance(label, str | int | float):
                raise InvalidEvent(f"label must be a string, number or bool, got {type(label).__name__}")
            index = self._class_index.get(label_key(label))
            if index is None:
                raise InvalidEvent(f"label {label!r} is not one of the spec's classes {self.spec.label.classes}")
            return index, None
        if isinstance(label, bool) or not isinstance(label, int | float) or not math.isfinite(label):
            raise InvalidEvent(f"regression label must be a finite number, got {label!r}")
        return None, float(label)


def label_key(value: Any) -> tuple[str, Any]:
    """Keys that keep True apart from 1 (Python treats them as equal) but let 1.0 match class 1."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", float(value))
    return (type(value).__name__, value)


def make_event(event_id: str, features: dict[str, Any], label: Any = None, ts: float | None = None) -> bytes:
    """Encode one event in the contract format."""
    event: dict[str, Any] = {"id": event_id, "ts": ts, "features": features}
    if label is not None:
        event["label"] = label
    return orjson.dumps(event)


def dead_letter(reason: str, topic: str, partition: int, offset: int, raw: bytes | None) -> bytes:
    """The DLQ record: the reason, where the message came from, and the message itself."""
    payload = raw.decode("utf-8", errors="replace") if raw is not None else None
    return orjson.dumps({"reason": reason, "topic": topic, "partition": partition, "offset": offset, "value": payload})
