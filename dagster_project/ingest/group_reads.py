"""A micro-batch read by partition groups: which offsets each group reads, and the one batch they make.

With ``model.scale_out.workers > 1`` every partition-group step reads, parses and dead-letters its own
partitions (``read_batch`` on a subset of the ranges: Kafka's assign+seek takes any subset), so
reading and parsing, most of a batch's time, run side by side. ``merge`` then rebuilds the batch of
the whole ranges from the groups' batches, so the batch-level decision (the data-quality suite, the
halt / quarantine / allow_partial policy) is still made once, about the whole batch.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from dagster_project.ingest.micro_batch import MicroBatch, first_examples
from dagster_project.kafka.offsets import Ranges


@dataclass(frozen=True)
class GroupRead:
    """One group's share of a batch: its partitions' ranges (and where their learned rows end)."""

    index: int
    ranges: Ranges
    learn_ends: dict[int, int] | None
    # The DLQ offsets the batch's plan recorded (`sent_letters.planned_dlq_from`); None: planned without.
    dlq_from: dict[int, int] | None = None

    @property
    def partitions(self) -> list[int]:
        return sorted(self.ranges)


EMPTY = GroupRead(0, {}, None)  # the one group of a batch that reads nothing (already learned)


def plan_reads(ranges: Ranges, learn_ends: dict[int, int] | None, workers: int) -> list[GroupRead]:
    """Partition ``p`` goes to group ``p % workers``, the grouping the fit uses; empty groups are dropped.

    The fit may still merge groups back into one (too few rows: ``scale_out.plan_workers``); the
    reads split regardless, since a partition's read costs the same wherever it runs.
    """
    groups = []
    for g in range(max(1, workers)):
        mine = {p: r for p, r in sorted(ranges.items()) if p % max(1, workers) == g}
        if mine:
            ends = {p: e for p, e in learn_ends.items() if p in mine} if learn_ends else None
            groups.append(GroupRead(len(groups), mine, ends))
    return groups or [EMPTY]


def merge(
    ranges: Ranges, learn_ends: dict[int, int] | None, parts: list[MicroBatch], chained: bool = False
) -> MicroBatch:
    """The batch of the whole ``ranges`` from the groups' batches (rows in group, then offset order).

    ``chained``: the parts are consecutive reads of the same partitions, each continuing the feature
    state the one before ended with (a retrain window read in chunks, `retraining.read_window`). The
    state after them all is the last part's, and the unseen examples keep one read's cap per feature.
    Its ``filling`` (a share of all the rows) is the caller's to judge.
    """
    parts = [p for p in parts if p is not None]
    if not parts:
        raise ValueError(f"no group read any of {ranges}: the merge needs every group's batch")
    first = parts[0]
    after = parts[-1] if chained or len(parts) == 1 else None  # whose feature state is the merged one's
    examples = [e for p in parts for e in p.unseen_examples]
    reasons: Counter = Counter()
    for part in parts:
        reasons.update(part.dlq_reasons)
    tails = [p.tail for p in parts if p.tail is not None]
    batch = MicroBatch(
        stream=first.stream,
        ranges=dict(sorted(ranges.items())),
        X=np.concatenate([p.X for p in parts]),
        y=np.concatenate([p.y for p in parts]),
        ids=[i for p in parts for i in p.ids],
        partitions=np.concatenate([p.partitions for p in parts]),
        offsets=np.concatenate([p.offsets for p in parts]),
        dlq_reasons=reasons,
        read=sum(p.read for p in parts),
        identity=next((p.identity for p in parts if p.identity), None),
        learn_ends=dict(learn_ends) if learn_ends else None,
        unseen_examples=first_examples(examples) if chained else examples,
        feature_state=after.feature_state if after else None,
        feature_counters=after.feature_counters if after else None,
        filling=tuple(sorted({name for p in parts for name in p.filling})),
    )
    if tails:
        batch.tail = merge(ranges, None, tails)
        batch.tail.learn_ends = None
    return batch


def describe(read: GroupRead, batch: MicroBatch) -> dict:
    """What one group read, for the merged batch's metadata: its partitions, rows, dead letters and offsets."""
    offsets = {
        str(p): [int(batch.offsets[batch.partitions == p].min()), int(batch.offsets[batch.partitions == p].max())]
        for p in np.unique(batch.partitions)
    }
    return {
        "group": read.index,
        "partitions": read.partitions,
        "rows": batch.rows,
        "dlq": batch.dlq,
        "offsets": offsets,  # first and last valid offset per partition
    }
