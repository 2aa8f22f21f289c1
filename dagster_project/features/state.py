"""The derived-feature state: per partition and key, the recent (time, values) of each key.

Semantics (README "Derived features"): for an event at time t with key k on partition p, a derived
feature aggregates the earlier-accepted events of k on p with time in [t - window, t). State is
kept per partition because a partition is the unit Kafka orders: training reads a batch partition
by partition and a scorer interleaves partitions as they come, and per-partition state makes the
values independent of that interleaving, so training and serving agree. Key the messages by the
`by` field (the Kafka message key) so that a key's whole history is on one partition.

Bounds: a partition's *watermark* is its newest event time minus `event_time.lateness`. An event
older than the watermark is late (refused, to the DLQ). History older than the watermark minus the
longest window can never be in a window again and is dropped; a key with none left is expired.
A new key at `feature_state.max_keys` (per partition and `by` field) first expires idle keys, then
evicts the least recently seen one (counted, `evicted_keys`). Expiry never changes a value;
eviction does (the evicted key starts again from an empty window), which is why it is counted.
"""

from __future__ import annotations

import copy
from bisect import bisect_left, bisect_right
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dagster_project.features.aggregations import USES_SUMS
from dagster_project.features.timing import MICROS, EventError, earlier, event_key, event_seconds, key_fields, micros
from dagster_project.features.window import WindowCursor
from dagster_project.spec import DerivedFeatureSpec, StreamSpec

Key = str | int


@dataclass
class History:
    """One key's accepted events in time order: `times[i]`, and `columns[c][i]` for each `of` column.

    `base` counts the values dropped from the front, so `base + i` is a stable position for the
    window cursors (running aggregates per (column, window): a cache, never saved).
    """

    times: list[float] = field(default_factory=list)
    columns: list[list[float]] = field(default_factory=list)
    base: int = 0
    cursors: dict[tuple[int, float], WindowCursor] = field(default_factory=dict)

    def drop_before(self, cutoff: float) -> None:
        """Drop the events older than `cutoff` (no future window can reach them)."""
        drop = bisect_left(self.times, cutoff)
        if not drop:
            return
        for (column, _), cursor in self.cursors.items():
            cursor.drop_front(self.columns[column], self.base, self.base + drop)
        del self.times[:drop]
        for column in self.columns:
            del column[:drop]
        self.base += drop


def _last_time(history: History) -> float:
    return history.times[-1] if history.times else float("-inf")


@dataclass
class PartitionState:
    newest: float | None = None  # the newest event time accepted on the partition
    # The earliest event time accepted on the partition: its windows hold less than a window of
    # history until events a window later (`features.warmup`)
    first: float | None = None
    tables: dict[str, OrderedDict[Key, History]] = field(default_factory=dict)  # by field -> least recent first
    # `newest` in whole microseconds (timing.micros), kept beside it: a cache, never saved
    _newest_us: int | None = field(default=None, init=False, compare=False, repr=False)

    def newest_us(self) -> int | None:
        if self.newest is None:
            return None
        if self._newest_us is None:
            self._newest_us = micros(self.newest)
        return self._newest_us

    def advance(self, t: float, t_us: int) -> None:
        """`t` (in seconds and microseconds) was accepted: the newest moves to it if later."""
        if self.newest is None or t > self.newest:
            self.newest, self._newest_us = t, t_us
        if self.first is None or t < self.first:
            self.first = t


@dataclass(frozen=True)
class _Group:
    """The derived features over the same key field, column and window: one window, one cursor."""

    by: str
    column: int | None  # in the stored values; None: count, which needs no values
    window: float
    window_us: int  # the window in whole microseconds (timing.micros)
    features: tuple[tuple[int, DerivedFeatureSpec], ...]  # (output position, feature)

    def cursor(self) -> WindowCursor:
        aggs = {f.agg for _, f in self.features}
        return WindowCursor(bool(aggs & USES_SUMS), "std" in aggs, "min" in aggs, "max" in aggs)


@dataclass(frozen=True)
class _Table:
    """How one `by` field's histories are laid out: which `of` columns, how far back they reach."""

    by: str
    in_features: bool
    columns: tuple[str, ...]  # the `of` features stored per event
    horizon: float  # the longest window over this key
    reach_us: int  # lateness + horizon in microseconds: history older than the newest minus it is dropped


DEFAULT_MAX_AHEAD_NOTE = " (the default; it was 1 h before 2026-12-05)"


class FeatureState:
    """Rolling per-key state for one stream's derived features, with its bounds and counters."""

    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec
        self.event_time = spec.event_time
        self.lateness = spec.event_time.lateness if spec.event_time else 0.0
        self._lateness_us = micros(self.lateness)
        self.max_ahead = spec.event_time.max_ahead if spec.event_time else None
        self._max_ahead_us = None if self.max_ahead is None else micros(self.max_ahead)
        # Named in the refusal: the default fell from 1 h to 5 min, which an upgraded stream did not choose.
        self._max_ahead_is_default = bool(spec.event_time) and "max_ahead" not in spec.event_time.model_fields_set
        self.max_keys = spec.feature_state.max_keys
        self.last_time: float | None = None  # the event time `observe` last accepted
        position = {name: j for j, name in enumerate(spec.feature_names)}
        self._tables: list[_Table] = []
        for by, in_features in key_fields(spec):
            mine = [d for d in spec.derived if d.by == by]
            columns = tuple(dict.fromkeys(d.of for d in mine if d.of is not None))
            horizon = max(d.window for d in mine)
            self._tables.append(_Table(by, in_features, columns, horizon, self._lateness_us + micros(horizon)))
        table_of = {t.by: t for t in self._tables}
        groups: dict[tuple[str, int | None, float], list[tuple[int, DerivedFeatureSpec]]] = {}
        for j, d in enumerate(spec.derived):
            column = table_of[d.by].columns.index(d.of) if d.of else None
            groups.setdefault((d.by, column, d.window), []).append((j, d))
        self._groups = [_Group(by, c, w, micros(w), tuple(members)) for (by, c, w), members in groups.items()]
        self._of_positions = {t.by: [position[c] for c in t.columns] for t in self._tables}
        self.partitions: dict[int, PartitionState] = {}
        # Since this object was made (a batch, a scorer's life): never part of the checkpoint.
        self.counters: Counter = Counter()

    # ------------------------------------------------------------------ the event path

    def observe(
        self, partition: int, event: dict[str, Any], row: Sequence[float], produced: float | None = None
    ) -> list[float]:
        """The event's derived values from its earlier events, then the event enters the state.

        `row` is the event's parsed features (the spec's order); `produced` its Kafka record's
        timestamp in epoch seconds (None: unknown). Raises `EventError` (nothing changes) for an
        event without a key or time, older than the partition's watermark, or too far ahead of
        `produced`.
        """
        t, keys = self._read(event)
        t_us = micros(t)  # every bound below is on the microsecond grid (timing.micros)
        if produced is not None:
            self._refuse_ahead(t, t_us, produced, "its Kafka timestamp")
        part = self.partitions.get(partition)
        if part is None:
            part = self.partitions[partition] = PartitionState()
        newest_us = part.newest_us()
        if newest_us is not None and t_us < newest_us - self._lateness_us:
            raise EventError(
                f"late event: event time {t:.3f} is {part.newest - t:.3f} s behind the newest on partition "
                f"{partition} ({part.newest:.3f}), more than event_time.lateness {self.lateness:g} s"
            )
        values = self._values(part, keys, t, follow=True, t_us=t_us)
        part.advance(t, t_us)
        self.last_time = t  # the time of the event last accepted (features.batch collects the earliest)
        newest_us = part.newest_us()
        for table in self._tables:
            history = self._history(part, table, keys[table.by], (newest_us - table.reach_us) / MICROS)
            at = bisect_right(history.times, t)  # equal times stay in arrival order
            history.times.insert(at, t)
            for column, j in zip(history.columns, self._of_positions[table.by], strict=True):
                column.insert(at, float(row[j]))
        return values

    def _refuse_ahead(self, t: float, t_us: int, reference: float, what: str) -> None:
        """`event_time.max_ahead`: a time further ahead of `reference` (`what` it is, for the reason)
        would hold the partition's watermark there and make every later event of it late."""
        if self._max_ahead_us is None or t_us - micros(reference) <= self._max_ahead_us:
            return
        raise EventError(
            f"event time {t:.3f} is {t - reference:.0f} s ahead of {what} ({reference:.3f}), more "
            f"than event_time.max_ahead {self.max_ahead:g} s{DEFAULT_MAX_AHEAD_NOTE * self._max_ahead_is_default}: "
            "check the producer's clock or event_time.unit, or set event_time.max_ahead to how far clocks run ahead"
        )

    def peek(self, event: dict[str, Any], partition: int | None = None, now: float | None = None) -> list[float]:
        """The values `observe` would give the event, without changing the state (for `/predict`).

        Without a partition the key's history is taken from the partition that saw it most recently
        (with messages keyed by the `by` field there is only one). A key never seen gets the
        empty-window values. A time further behind the newest event of the partition(s) it reads than
        the lateness allows is refused, as on the stream: the state keeps the history a window needs
        only from there on, so its windows could come out cut short (a backfill over HTTP got
        empty-window values, with 200). A key never seen is judged against every partition. With `now`
        (the request's arrival, epoch seconds) a time more than `event_time.max_ahead` after it is
        refused, as the stream refuses one that far ahead of its Kafka timestamp.
        """
        t, keys = self._read(event)
        if now is not None:
            self._refuse_ahead(t, micros(t), now, "the request's arrival")
        if partition is not None:
            part = self.partitions.get(partition) or PartitionState()
            self._refuse_late_request(t, {partition: part})
            return self._values(part, keys, t)
        merged = PartitionState(tables={})
        read: dict[int, PartitionState] = {}
        for table in self._tables:
            key = keys[table.by]
            holders = [(n, p) for n, p in self.partitions.items() if key in p.tables.get(table.by, {})]
            chosen = max(holders, key=lambda h: _last_time(h[1].tables[table.by][key]), default=None)
            if chosen is not None:
                read[chosen[0]] = chosen[1]
            merged.tables[table.by] = OrderedDict({key: chosen[1].tables[table.by][key]} if chosen else {})
        self._refuse_late_request(t, read or self.partitions)
        return self._values(merged, keys, t)

    def _refuse_late_request(self, t: float, read: dict[int, PartitionState]) -> None:
        """`observe`'s lateness rule for a request reading the history of the partitions in `read`: the
        only bound under which no window is cut short (history is dropped below the watermark minus
        the longest window)."""
        seen = [(n, p.newest) for n, p in read.items() if p.newest is not None]
        if not seen:
            return
        partition, newest = max(seen, key=lambda x: x[1])
        if micros(t) < micros(newest) - self._lateness_us:  # as `observe` judges an event
            raise EventError(
                f"late request: event time {t:.3f} is {newest - t:.3f} s behind the newest the state has seen on "
                f"partition {partition} ({newest:.3f}), more than event_time.lateness {self.lateness:g} s: the "
                "events its windows need may be gone, so they would come out cut short. Score it from the stream "
                "(its event on Kafka), send a current time, or raise event_time.lateness to how far behind "
                "requests run"
            )

    def _read(self, event: dict[str, Any]) -> tuple[float, dict[str, Key]]:
        if self.event_time is None:
            raise EventError("the stream has no event_time: add event_time: {field: ts} to its spec")
        t = event_seconds(event.get(self.event_time.field), self.event_time)
        return t, {table.by: event_key(event, table.by, table.in_features) for table in self._tables}

    def _values(
        self, part: PartitionState, keys: dict[str, Key], t: float, follow: bool = False, t_us: int | None = None
    ) -> list[float]:
        """Each derived feature over its key's window [t - window, t). With `follow` the key's cursors
        move there (the event path); without, the windows are aggregated from scratch and nothing,
        not even a cache, changes (`peek`). Both give the same bits (`features.aggregations`)."""
        out = [0.0] * len(self.spec.derived)
        t_us = micros(t) if t_us is None else t_us
        for group in self._groups:
            history = part.tables.get(group.by, {}).get(keys[group.by])
            if history is None:
                empty = WindowCursor(False, False, False, False)
                for j, feature in group.features:
                    out[j] = empty.value(feature)
                continue
            times, base = history.times, history.base
            start = (t_us - group.window_us) / MICROS  # on the microsecond grid: see timing.micros
            lo, hi = base + bisect_left(times, start), base + bisect_left(times, t)
            if group.column is None:  # count: the window's length
                for j, _ in group.features:
                    out[j] = float(hi - lo)
                continue
            slot = (group.column, group.window)
            cursor = history.cursors.get(slot) if follow else None
            if cursor is None:
                cursor = group.cursor()
                if follow:
                    history.cursors[slot] = cursor
            cursor.move(history.columns[group.column], base, lo, hi)
            for j, feature in group.features:
                out[j] = cursor.value(feature)
        return out

    def _history(self, part: PartitionState, table: _Table, key: Key, cutoff: float) -> History:
        """The key's history with what can never be in a window again (before `cutoff`: the newest
        minus the lateness and the longest window) dropped; new keys respect the cap."""
        keys = part.tables.setdefault(table.by, OrderedDict())
        history = keys.get(key)
        if history is not None:
            history.drop_before(cutoff)
            if history.times:
                keys.move_to_end(key)
                return history
            del keys[key]  # expired: from here on it is a new key, exactly as after a sweep
            self.counters["expired_keys"] += 1
        if len(keys) >= self.max_keys:
            self._expire(keys, cutoff)
        if len(keys) >= self.max_keys:
            keys.popitem(last=False)
            self.counters["evicted_keys"] += 1
        history = keys[key] = History(columns=[[] for _ in table.columns])
        return history

    def _expire(self, keys: OrderedDict[Key, History], cutoff: float) -> None:
        for key in [k for k, h in keys.items() if not h.times or h.times[-1] < cutoff]:
            del keys[key]
            self.counters["expired_keys"] += 1

    # ------------------------------------------------------------------ the checkpoint

    def settle(self) -> None:
        """Drop everything no future event can see, so the saved state is the same however the
        events were split into calls (a batch, a retry, a scorer's polls)."""
        for part in self.partitions.values():
            if part.newest is None:
                continue
            for table in self._tables:
                keys = part.tables.get(table.by)
                if keys:
                    cutoff = earlier(part.newest, table.reach_us)
                    for history in keys.values():
                        history.drop_before(cutoff)
                    self._expire(keys, cutoff)

    def keys(self) -> int:
        """Keys held, over all partitions and `by` fields (the state-size gauge)."""
        return sum(len(keys) for part in self.partitions.values() for keys in part.tables.values())

    def table_columns(self) -> dict[str, list[str]]:
        return {t.by: list(t.columns) for t in self._tables}

    def copy(self) -> FeatureState:
        """An independent copy (the promotion tail is computed on one, so the checkpoint stays put)."""
        twin = copy.copy(self)
        twin.partitions = copy.deepcopy(self.partitions)
        twin.counters = Counter()
        return twin
