"""Batch planning: from each partition's learned offset and true end, decide the next batch.

Pure functions over plain values so every edge case (empty topic, idle partitions, the tail,
lost offsets, the row cap) is tested without a broker or Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

Ranges = dict[int, tuple[int, int]]
CUT_REASON_PREFIX = "early cut: "  # a plan cut short by `batch.early_cut` (the third trigger)


def ranges_text(ranges: Ranges) -> str:
    """Offset ranges as logs, decisions and the CLI print them: `p0[0, 500), p1[0, 480)`."""
    return ", ".join(f"p{p}[{s}, {e})" for p, (s, e) in sorted(ranges.items()))


@dataclass(frozen=True)
class PartitionState:
    """What the sensor learned about one partition without consuming it."""

    partition: int
    next_offset: int  # first offset the model has not learned
    log_start: int  # earliest offset the broker still has
    high_water: int  # one past the last record (from a fetch response, not ListOffsets)
    oldest_waiting_ts_ms: int | None = None  # timestamp of the record at next_offset

    @property
    def lag(self) -> int:
        return max(0, self.high_water - self.next_offset)


@dataclass(frozen=True)
class TopicIdentity:
    """Which cluster, and which incarnation of a topic, offsets belong to.

    Offsets mean nothing on another cluster or on a topic that was deleted and recreated (or on an
    in-memory broker that restarted empty): offset 5,000 there is a different record. Each version
    records the identity it learned from; a mismatch is an offset gap, however the numbers look.
    """

    cluster_id: str | None
    topic_id: str | None  # None on brokers without topic ids (Kafka before 2.8)

    def as_json(self) -> dict[str, str | None]:
        return {"cluster_id": self.cluster_id, "topic_id": self.topic_id}

    @classmethod
    def from_json(cls, raw: dict | None) -> TopicIdentity | None:
        return cls(raw.get("cluster_id"), raw.get("topic_id")) if raw else None


def identity_change(learned: TopicIdentity | None, current: TopicIdentity | None) -> str | None:
    """Why offsets learned on `learned` do not apply to `current`, or None if they do (or cannot be told)."""
    if learned is None or current is None:
        return None
    changes = []
    if learned.cluster_id and current.cluster_id and learned.cluster_id != current.cluster_id:
        changes.append(f"cluster id {learned.cluster_id} -> {current.cluster_id} (another cluster)")
    if learned.topic_id and current.topic_id and learned.topic_id != current.topic_id:
        changes.append(
            f"topic id {learned.topic_id} -> {current.topic_id} (deleted and recreated, or the broker lost its data)"
        )
    return "; ".join(changes) or None


@dataclass(frozen=True)
class Gap:
    """Offsets the model needs that the broker no longer has (retention, restart, recreation)."""

    partition: int
    expected: int
    log_start: int
    high_water: int

    def describe(self) -> str:
        if self.expected > self.high_water:
            return (
                f"partition {self.partition}: learned up to offset {self.expected} but the broker ends at "
                f"{self.high_water} (topic recreated or broker lost its data)"
            )
        return (
            f"partition {self.partition}: offsets {self.expected}..{self.log_start - 1} were deleted "
            f"before they were learned (retention)"
        )


@dataclass(frozen=True)
class BatchPlan:
    ranges: Ranges
    reason: str

    @property
    def rows(self) -> int:
        return sum(end - start for start, end in self.ranges.values())


@dataclass(frozen=True)
class NoBatch:
    reason: str


def find_gaps(states: list[PartitionState]) -> list[Gap]:
    return [
        Gap(s.partition, s.next_offset, s.log_start, s.high_water)
        for s in states
        if s.next_offset > s.high_water or s.next_offset < s.log_start
    ]


def plan_batch(
    states: list[PartitionState],
    min_rows: int,
    max_rows: int,
    max_wait_s: float,
    now_ms: int,
    cut: str | None = None,
) -> BatchPlan | NoBatch:
    """Plan `{partition: (start, end)}` when lag >= min_rows or the oldest waiting row is too old, or,
    third, when `cut` gives the reason to cut the waiting rows short now (`batch.early_cut`).

    The batch takes at most `max_rows`, shared between partitions in proportion to their lag
    (every waiting partition gets at least one row), so no partition starves.
    """
    lag = sum(s.lag for s in states)
    if lag == 0:
        return NoBatch("caught up: no rows waiting")
    oldest = [s.oldest_waiting_ts_ms for s in states if s.lag and s.oldest_waiting_ts_ms is not None]
    age_s = (now_ms - min(oldest)) / 1000 if oldest else 0.0
    if lag >= min_rows:
        reason = f"lag {lag} >= batch.rows {min_rows}"
    elif age_s >= max_wait_s:
        reason = f"oldest waiting row is {age_s:.1f}s old >= batch.max_wait_s {max_wait_s:g}"
    elif cut is not None:
        reason = f"{CUT_REASON_PREFIX}{cut}"
    else:
        age = f"oldest row {age_s:.1f}s < {max_wait_s:g}s" if oldest else "oldest row's age unknown (no record polled)"
        return NoBatch(f"waiting: lag {lag} < batch.rows {min_rows}, {age}")
    take = _share(states, min(lag, max_rows))
    ranges = {s.partition: (s.next_offset, s.next_offset + take[s.partition]) for s in states if take[s.partition]}
    if lag > max_rows:
        reason += f"; capped at batch.max_rows {max_rows} ({lag - max_rows} rows left for the next batch)"
    return BatchPlan(ranges, reason)


def _share(states: list[PartitionState], budget: int) -> dict[int, int]:
    waiting = [s for s in states if s.lag]
    take = {s.partition: 0 for s in states}
    if budget < len(waiting):  # too small for one row each: the oldest waiting partitions go first
        oldest_first = sorted(waiting, key=lambda s: (s.oldest_waiting_ts_ms is None, s.oldest_waiting_ts_ms, -s.lag))
        for s in oldest_first[:budget]:
            take[s.partition] = 1
        return take
    total = sum(s.lag for s in waiting)
    for s in waiting:
        take[s.partition] = min(s.lag, max(1, budget * s.lag // total))
    overflow = sum(take.values()) - budget
    for s in sorted(waiting, key=lambda s: -take[s.partition]):  # trim the 'at least one' excess
        if overflow <= 0:
            break
        cut = min(overflow, take[s.partition] - 1)
        take[s.partition] -= cut
        overflow -= cut
    leftover = budget - sum(take.values())
    for s in waiting:  # hand out what integer division left over
        if leftover <= 0:
            break
        extra = min(leftover, s.lag - take[s.partition])
        take[s.partition] += extra
        leftover -= extra
    return take


def ranges_key(stream: str, head_version: str | None, ranges: Ranges) -> str:
    """Deterministic run key: the same batch on the same head is requested exactly once."""
    parts = ",".join(f"p{p}:{s}-{e}" for p, (s, e) in sorted(ranges.items()))
    return f"{stream}@{head_version or 'v0'}:{parts}"


def encode_ranges(ranges: Ranges) -> str:
    return orjson.dumps({str(p): [s, e] for p, (s, e) in sorted(ranges.items())}).decode()


def decode_ranges(text: str) -> Ranges:
    return {int(p): (int(se[0]), int(se[1])) for p, se in orjson.loads(text).items()}
