"""Exactly-once learning: is a planned batch new, already learned, or a gap?"""

from __future__ import annotations

from enum import Enum

from dagster_project.kafka.offsets import Ranges


class BatchRefused(RuntimeError):
    """The batch does not start where the model stopped: learning it would skip or repeat rows."""


class Decision(Enum):
    LEARN = "learn"
    ALREADY_LEARNED = "already_learned"


def decide(expected: dict[int, int], ranges: Ranges) -> Decision:
    """Compare a batch with the head's next offsets.

    A batch wholly behind the head was learned before (a retry after the version was written):
    skip it. A batch that starts exactly at the head is learned. Anything else would lose or
    double-count rows, so it is refused with the offsets that disagree. A partition the head has
    never seen may start anywhere: the sensor planned it from the broker's log start.
    """
    behind = [p for p, (_, end) in ranges.items() if p in expected and end <= expected[p]]
    if behind and len(behind) == len(ranges):
        return Decision.ALREADY_LEARNED
    wrong = {p: (start, expected[p]) for p, (start, _) in ranges.items() if p in expected and start != expected[p]}
    if wrong:
        detail = ", ".join(
            f"partition {p} starts at {s} but the model's next offset is {e}" for p, (s, e) in wrong.items()
        )
        kind = "gap" if any(s > e for s, e in wrong.values()) else "overlap"
        raise BatchRefused(
            f"batch refused ({kind}): {detail}. Re-plan from the head (the sensor does this by itself), "
            "or move the offsets deliberately with `streamfit offsets reset`."
        )
    return Decision.LEARN


def refuse_unseen_partition_gaps(ranges: Ranges, expected: dict[int, int], log_starts: dict[int, int]) -> None:
    """A partition the head has never learned must start at the broker's first offset of it (where
    the sensor plans it): a later start recorded the rows before it as learned, and a partition the
    topic lacks recorded a phantom offset. `log_starts` holds the topic's partitions only."""
    wrong = []
    for p, (start, _) in sorted(ranges.items()):
        if p in expected:
            continue
        if p not in log_starts:
            wrong.append(f"partition {p} does not exist in the topic")
        elif start > log_starts[p]:
            wrong.append(
                f"partition {p} was never learned and starts at {start}, but the broker's first offset is "
                f"{log_starts[p]}: rows [{log_starts[p]}, {start}) would be recorded as learned"
            )
    if wrong:
        raise BatchRefused(
            f"batch refused (gap): {'; '.join(wrong)}. Let the stream's Kafka sensor plan the batch, "
            "or move the offsets deliberately with `streamfit offsets reset`."
        )
