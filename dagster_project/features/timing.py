"""An event's key and event time, read from the raw message the way the spec says."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from dagster_project.ingest.events import MAX_KEY_CHARS
from dagster_project.ingest.quoting import described, quoted
from dagster_project.spec import EPOCH_UNITS, EventTimeSpec, StreamSpec

# Epoch seconds of 0001-01-01 and 9999-12-31T23:59:59 UTC, the range of a date: a time outside it is a
# producer bug (often milliseconds sent as seconds), and accepted it would hold the partition's watermark there.
EARLIEST, LATEST = -62_135_596_800.0, 253_402_300_799.0


MICROS = 1_000_000


def micros(seconds: float) -> int:
    """A time or duration in whole microseconds: the grid every window edge and lateness bound is
    computed on, so an event exactly `window` before another is in its window however its time was
    written (epoch ms, ISO-8601, seconds with decimals).

    Why: in float seconds `t - window` rounds, and with `unit: ms` and a 100 ms window the start of the
    window came out 2e-7 s after the earlier event, which fell out (40 % of such edges on random times).
    A time from ms or ISO-8601 is the correctly rounded value of its whole microseconds, so that value
    is found exactly (rounding the product may land one off: the neighbours are checked).
    """
    us = round(seconds * MICROS)
    if us / MICROS != seconds:
        for near in (us - 1, us + 1):
            if near / MICROS == seconds:
                return near
    return us


def earlier(t: float, span_us: int) -> float:
    """`t` minus a span of whole microseconds, on the microsecond grid (see `micros`)."""
    return (micros(t) - span_us) / MICROS


class EventError(ValueError):
    """The event cannot enter the feature state; the message is the reason stored in the DLQ."""


def accepted_times(spec: EventTimeSpec) -> str:
    """What the event-time field takes, for refusals: `ts` only a number (the event contract keeps it
    numeric, and a message offering ISO-8601 for it led to a refusal of ISO), another field ISO-8601 too."""
    number = f"a number (epoch {EPOCH_UNITS[spec.unit]})"
    return number if spec.field == "ts" else f"{number} or an ISO-8601 string with a UTC offset"


def event_seconds(raw: Any, spec: EventTimeSpec) -> float:
    """Epoch seconds of an event-time value: a number in `spec.unit`, or ISO-8601 with a UTC offset."""
    if isinstance(raw, bool) or raw is None:
        raise EventError(f"no event time: {spec.field!r} is {quoted(raw)}; it must be {accepted_times(spec)}")
    if isinstance(raw, int | float):
        seconds = float(raw) / (1000.0 if spec.unit == "ms" else 1.0)
        if not math.isfinite(seconds):
            raise EventError(f"event time {spec.field!r} is not finite: {quoted(raw)}")
        if not EARLIEST <= seconds <= LATEST:  # one such event would make every later one late
            raise EventError(
                f"event time {spec.field!r} = {quoted(raw)} is not a date between the years 1 and 9999 "
                f"in epoch {spec.unit}: check the producer's clock or event_time.unit"
            )
        return seconds
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            raise EventError(f"event time {spec.field!r} = {quoted(raw)} is not ISO-8601") from None
        if parsed.tzinfo is None:
            raise EventError(f"event time {spec.field!r} = {quoted(raw)} has no UTC offset: add Z or +00:00")
        return parsed.timestamp()
    raise EventError(f"event time {spec.field!r} must be {accepted_times(spec)}, got {type(raw).__name__}")


def event_key(event: dict[str, Any], field: str, in_features: bool) -> str | int:
    """The key value of field `field`: from `features` when it is a declared feature, else top level.
    Refused (EventError, a dead letter or a 422) when missing, not a string or integer, or too long."""
    source = event.get("features") if in_features else event
    value = source.get(field) if isinstance(source, dict) else None
    if value is None:
        raise EventError(f"no key: the event has no {field!r} (derived features group by it)")
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise EventError(f"key {field!r} must be a non-empty string or an integer, got {described(value)}")
    if isinstance(value, str) and len(value) > MAX_KEY_CHARS:  # held in every checkpoint: see MAX_KEY_CHARS
        raise EventError(
            f"key {field!r} is {len(value):,} characters long, over the {MAX_KEY_CHARS:,} a key may have "
            f"(the feature state holds it, saved with every version): {quoted(value)}"
        )
    return value


def key_fields(spec: StreamSpec) -> list[tuple[str, bool]]:
    """Each distinct `by` field, and whether it is read from the event's `features` object."""
    declared = set(spec.feature_names)
    fields = list(dict.fromkeys(d.by for d in spec.derived))
    return [(f, f in declared) for f in fields]
