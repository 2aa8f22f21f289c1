"""Prediction and label records: the two contracts the joiner reads, checked against a stream's spec.

A scorer writes `{id, prediction, probabilities, model_version, ...}` to `<stream>.predictions`; the
truth arrives as `{id, label, ts}` on `<stream>.labels`. A record that breaks its contract raises
`InvalidRecord`, whose message becomes the dead letter's reason: one bad record never stops the join.
"""

from __future__ import annotations

import math
import time
from typing import Any

import orjson

from dagster_project.ingest.events import MAGNITUDE_LIMIT, MAX_ID_CHARS, label_key, not_a_json_number
from dagster_project.ingest.quoting import described, quoted
from dagster_project.spec import StreamSpec


class InvalidRecord(ValueError):
    """A prediction or label record breaks its contract; the message is the DLQ reason."""


def _record_id(obj: dict[str, Any]) -> str:
    event_id = obj.get("id")
    if event_id is None or event_id == "":
        raise InvalidRecord("record has no 'id' (string or integer)")
    if not isinstance(event_id, str | int) or isinstance(event_id, bool):
        # orjson reads an integer beyond 64 bits as a float: say so, not "no id"
        raise InvalidRecord(f"record 'id' must be a string or an integer within 64 bits, got {described(event_id)}")
    if isinstance(event_id, str) and len(event_id) > MAX_ID_CHARS:  # its event was dead-lettered: it cannot join
        raise InvalidRecord(
            f"record 'id' is {len(event_id):,} characters long, over the {MAX_ID_CHARS:,} an event id may have"
        )
    return str(event_id)


def _json_object(raw: bytes | None, what: str) -> dict[str, Any]:
    if raw is None:
        raise InvalidRecord(f"empty {what} (null value)")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord(f"{what} is not valid JSON: {not_a_json_number(raw, exc) or exc}") from None
    if not isinstance(obj, dict):
        raise InvalidRecord(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


class RecordParser:
    """Validates prediction and label records against one stream's task and classes.

    Classes compare by the rule of `ingest/events.py`: True is not 1, but 1.0 is 1.
    """

    def __init__(self, spec: StreamSpec) -> None:
        self.task = spec.task
        self.classes = list(spec.label.classes or [])
        self._class_keys = {label_key(c) for c in self.classes}

    def _target(self, value: Any, what: str) -> Any:
        if self.task == "classification":
            if not isinstance(value, str | int | float) or label_key(value) not in self._class_keys:
                raise InvalidRecord(f"{what} {quoted(value)} is not one of the spec's classes {self.classes}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidRecord(f"regression {what} must be a finite number, got {quoted(value)}")
        if what == "label" and abs(value) > MAGNITUDE_LIMIT:  # as training refuses it (its error² overflowed)
            raise InvalidRecord(f"regression {what} {value!r} is beyond the magnitude limit {MAGNITUDE_LIMIT:g}")
        return float(value)

    def prediction(self, raw: bytes | None) -> tuple[str, str, Any]:
        """(event id, model version, prediction)."""
        event_id, version, value, _ = self.timed_prediction(raw)
        return event_id, version, value

    def timed_prediction(self, raw: bytes | None) -> tuple[str, str, Any, float | None]:
        """(event id, model version, prediction, the event's timestamp in epoch ms or None): see `event_ms`."""
        obj = _json_object(raw, "prediction")
        event_id = _record_id(obj)
        version = obj.get("model_version")
        if not isinstance(version, str) or not version:
            raise InvalidRecord("prediction has no 'model_version'")
        if "prediction" not in obj:
            raise InvalidRecord("prediction has no 'prediction'")
        return event_id, version, self._target(obj["prediction"], "prediction"), event_ms(obj)

    def label(self, raw: bytes | None) -> tuple[str, Any]:
        """(event id, label)."""
        obj = _json_object(raw, "label")
        event_id = _record_id(obj)
        if obj.get("label") is None:
            raise InvalidRecord("label record has no 'label'")
        return event_id, self._target(obj["label"], "label")


def event_ms(prediction: dict[str, Any]) -> float | None:
    """The scored event's own Kafka timestamp (epoch ms), from a prediction record's `ts` (when it was
    made, epoch s) less its `latency_ms` (from the event's record timestamp to then); None when either is
    missing (a scorer that did not know the event's timestamp, or another writer).

    It is what places a joined row among the events topic's offsets: the Kafka sensor knows the oldest
    waiting event's timestamp, and the early cut counts only rows whose event is not older (`cut_evidence`)."""
    ts, latency = prediction.get("ts"), prediction.get("latency_ms")
    numbers = all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in (ts, latency))
    if not numbers:
        return None
    served = float(ts) * 1000.0 - float(latency)
    return served if math.isfinite(served) else None  # ts 1e306 s overflows in ms


def make_label(event_id: str, label: Any, ts: float | None = None) -> bytes:
    """A label record in the contract format `{id, label, ts}`."""
    return orjson.dumps({"id": event_id, "label": label, "ts": time.time() if ts is None else ts})
