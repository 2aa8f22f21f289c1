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

from dagster_project.features.aggregations import aggregate
from dagster_project.features.timing import EventError, event_key, event_seconds, key_fields
from dagster_project.spec import StreamSpec

Key = str | int


@dataclass
class History:
    """One key's accepted events in time order: `times[i]`, and `columns[c][i]` for each `of` column
    (column lists, so a window is a slice taken at C speed)."""

    times: list[float] = field(default_factory=list)
    columns: list[list[float]] = field(default_factory=list)


@dataclass
class PartitionState:
    newest: float | None = None  # the newest event time accepted on the partition
    tables: dict[str, OrderedDict[Key, History]] = field(default_factory=dict)  # by field -> least recent first


@dataclass(frozen=True)
class _Table:
    """How one `by` field's histories are laid out: which `of` columns, how far back they reach."""

    by: str
    in_features: bool
    columns: tuple[str, ...]  # the `of` features stored per event
    horizon: float  # the longest window over this key


class FeatureState:
    """Rolling per-key state for one stream's derived features, with its bounds and counters."""

    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec
        self.event_time = spec.event_time
        self.lateness = spec.event_time.lateness if spec.event_time else 0.0
        self.max_keys = spec.feature_state.max_keys
        position = {name: j for j, name in enumerate(spec.feature_names)}
        self._tables: list[_Table] = []
        for by, in_features in key_fields(spec):
            mine = [d for d in spec.derived if d.by == by]
            columns = tuple(dict.fromkeys(d.of for d in mine if d.of is not None))
            self._tables.append(_Table(by, in_features, columns, max(d.window for d in mine)))
        table_of = {t.by: t for t in self._tables}
        # Per derived feature: (table, column in the stored values or None for count, window, spec).
        self._features = [
            (table_of[d.by], table_of[d.by].columns.index(d.of) if d.of else None, d.window, d) for d in spec.derived
        ]
        self._of_positions = {t.by: [position[c] for c in t.columns] for t in self._tables}
        self.partitions: dict[int, PartitionState] = {}
        # Since this object was made (a batch, a scorer's life): never part of the checkpoint.
        self.counters: Counter = Counter()

    # ------------------------------------------------------------------ the event path

    def observe(self, partition: int, event: dict[str, Any], row: Sequence[float]) -> list[float]:
        """The event's derived values from its earlier events, then the event enters the state.

        `row` is the event's parsed features (the spec's order). Raises `EventError` (nothing changes)
        for an event without a key or time, or older than the partition's watermark.
        """
        t, keys = self._read(event)
        part = self.partitions.get(partition)
        if part is None:
            part = self.partitions[partition] = PartitionState()
        if part.newest is not None and t < part.newest - self.lateness:
            raise EventError(
                f"late event: event time {t:.3f} is {part.newest - t:.3f} s behind the newest on partition "
                f"{partition} ({part.newest:.3f}), more than event_time.lateness {self.lateness:g} s"
            )
        values = self._values(part, keys, t)
        part.newest = t if part.newest is None else max(part.newest, t)
        watermark = part.newest - self.lateness
        for table in self._tables:
            history = self._history(part, table, keys[table.by], watermark)
            at = bisect_right(history.times, t)  # equal times stay in arrival order
            history.times.insert(at, t)
            for column, j in zip(history.columns, self._of_positions[table.by], strict=True):
                column.insert(at, float(row[j]))
        return values

    def peek(self, event: dict[str, Any], partition: int | None = None) -> list[float]:
        """The values `observe` would give the event, without changing the state (for `/predict`).

        Without a partition the key's history is taken from the partition that saw it most recently
        (with messages keyed by the `by` field there is only one). A key never seen gets the
        empty-window values. No lateness check: a request is not part of the stream.
        """
        t, keys = self._read(event)
        if partition is not None:
            part = self.partitions.get(partition) or PartitionState()
            return self._values(part, keys, t)
        merged = PartitionState(tables={})
        for table in self._tables:
            key = keys[table.by]
            holders = [p.tables[table.by][key] for p in self.partitions.values() if key in p.tables.get(table.by, {})]
            newest = max(holders, key=lambda h: h.times[-1] if h.times else float("-inf"), default=None)
            merged.tables[table.by] = OrderedDict({key: newest} if newest is not None else {})
        return self._values(merged, keys, t)

    def _read(self, event: dict[str, Any]) -> tuple[float, dict[str, Key]]:
        if self.event_time is None:
            raise EventError("the stream has no event_time: add event_time: {field: ts} to its spec")
        t = event_seconds(event.get(self.event_time.field), self.event_time)
        return t, {table.by: event_key(event, table.by, table.in_features) for table in self._tables}

    def _values(self, part: PartitionState, keys: dict[str, Key], t: float) -> list[float]:
        out = []
        windows: dict[tuple[str, int | None, float], list[float] | int] = {}  # shared by features over the same slice
        for table, column, window, feature in self._features:
            history = part.tables.get(table.by, {}).get(keys[table.by])
            if history is None:
                out.append(aggregate(feature, ()))
                continue
            key = (table.by, column, window)
            values = windows.get(key)
            if values is None:
                lo, hi = bisect_left(history.times, t - window), bisect_left(history.times, t)
                values = windows[key] = hi - lo if column is None else history.columns[column][lo:hi]
            out.append(float(values) if column is None else aggregate(feature, values))
        return out

    def _history(self, part: PartitionState, table: _Table, key: Key, watermark: float) -> History:
        """The key's history with what can never be in a window again dropped; new keys respect the cap."""
        keys = part.tables.setdefault(table.by, OrderedDict())
        cutoff = watermark - table.horizon
        history = keys.get(key)
        if history is not None:
            _prune(history, cutoff)
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
                    cutoff = part.newest - self.lateness - table.horizon
                    for history in keys.values():
                        _prune(history, cutoff)
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


def _prune(history: History, cutoff: float) -> None:
    drop = bisect_left(history.times, cutoff)
    if drop:
        del history.times[:drop]
        for column in history.columns:
            del column[:drop]
