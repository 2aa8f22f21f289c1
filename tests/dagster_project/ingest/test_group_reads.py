"""Planning group reads and merging the groups' batches into one (dagster_project/ingest/group_reads.py)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from dagster_project.ingest.group_reads import EMPTY, GroupRead, describe, merge, plan_reads
from dagster_project.ingest.micro_batch import MicroBatch


def _batch(partitions: list[int], offsets: list[int], dlq: Counter | None = None, tail=None) -> MicroBatch:
    n = len(partitions)
    return MicroBatch(
        stream="s",
        ranges={},
        X=np.arange(n * 2, dtype=float).reshape(n, 2),
        y=np.zeros(n),
        ids=[f"{p}-{o}" for p, o in zip(partitions, offsets, strict=True)],
        partitions=np.asarray(partitions, dtype=np.int32),
        offsets=np.asarray(offsets, dtype=np.int64),
        dlq_reasons=dlq or Counter(),
        tail=tail,
    )


def test_partition_p_is_read_by_group_p_mod_workers_with_its_own_learn_ends():
    ranges = {0: (0, 10), 1: (5, 9), 2: (3, 4), 3: (0, 1), 4: (2, 8)}

    reads = plan_reads(ranges, {0: 8, 1: 9, 2: 4, 3: 1, 4: 6}, 2)

    assert [(r.index, r.ranges) for r in reads] == [
        (0, {0: (0, 10), 2: (3, 4), 4: (2, 8)}),
        (1, {1: (5, 9), 3: (0, 1)}),
    ]
    assert reads[0].learn_ends == {0: 8, 2: 4, 4: 6} and reads[1].learn_ends == {1: 9, 3: 1}


def test_groups_without_partitions_are_dropped_and_no_partitions_is_one_empty_read():
    assert [r.partitions for r in plan_reads({1: (0, 5), 3: (0, 5)}, None, 2)] == [[1, 3]]
    assert plan_reads({}, None, 3) == [EMPTY]


def test_the_merged_batch_holds_every_group_row_dead_letter_and_tail_for_the_whole_ranges():
    g0 = _batch([0, 0, 2], [0, 1, 0], Counter({"invalid": 1}), tail=_batch([0], [2]))
    g1 = _batch([1], [0], Counter({"invalid": 2, "schema": 1}), tail=_batch([1], [1]))
    ranges = {1: (0, 2), 0: (0, 3), 2: (0, 1)}

    batch = merge(ranges, {0: 2, 1: 1, 2: 1}, [g0, g1])

    assert list(batch.ranges) == [0, 1, 2] and batch.ranges[0] == (0, 3)
    assert batch.rows == 4 and batch.ids == ["0-0", "0-1", "2-0", "1-0"]
    assert batch.X.shape == (4, 2) and list(batch.partitions) == [0, 0, 2, 1]
    assert batch.dlq_reasons == Counter({"invalid": 3, "schema": 1}) and batch.dlq == 4
    assert batch.learned_ends == {0: 2, 1: 1, 2: 1}
    assert batch.tail.ids == ["0-2", "1-1"] and batch.tail.learn_ends is None


def test_the_merged_batch_says_which_derived_windows_any_group_found_filling():
    """Lost in the merge, a scaled-out stream's versions never said so, and drift checks judged the
    warm-up profile of its derived features (features.warmup)."""
    g0, g1 = _batch([0], [0]), _batch([1], [0])
    g0.filling, g1.filling = ("count_1h",), ("count_1h", "mean_1h")

    assert merge({0: (0, 1), 1: (0, 1)}, None, [g0, g1]).filling == ("count_1h", "mean_1h")


def test_describe_names_the_group_partitions_and_first_and_last_offsets():
    read = GroupRead(1, {1: (0, 9), 3: (4, 9)}, None)
    assert describe(read, _batch([1, 3, 1], [0, 4, 7], Counter({"x": 2}))) == {
        "group": 1,
        "partitions": [1, 3],
        "rows": 3,
        "dlq": 2,
        "offsets": {"1": [0, 7], "3": [4, 4]},
    }


def test_a_chained_merge_keeps_the_last_part_s_feature_state_and_one_read_s_cap_of_unseen_examples():
    # Consecutive chunks of one window (`retraining.read_window`): the state after them is the last
    # chunk's, not none (two groups' states cannot be merged, two chunks' need not be).
    first, last = _batch([0, 0], [0, 1]), _batch([0, 0], [2, 3])
    first.feature_state, last.feature_state = b"after chunk 1", b"after chunk 2"
    first.feature_counters, last.feature_counters = {"keys": 1}, {"keys": 2}
    first.unseen_examples = [{"feature": "c", "value": f"v{o}", "partition": 0, "offset": o} for o in range(4)]
    last.unseen_examples = [{"feature": "c", "value": f"w{o}", "partition": 0, "offset": o} for o in range(2, 6)]

    chained = merge({0: (0, 4)}, None, [first, last], chained=True)

    assert chained.feature_state == b"after chunk 2" and chained.feature_counters == {"keys": 2}
    assert [e["value"] for e in chained.unseen_examples] == ["v0", "v1", "v2", "v3", "w2"]  # UNSEEN_EXAMPLES
    assert merge({0: (0, 4)}, None, [first, last]).feature_state is None  # groups: as before
