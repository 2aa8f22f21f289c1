"""A micro-batch survives Dagster's IO manager (pickle) with every id, row and tail intact."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from dagster_project.ingest.micro_batch import MicroBatch


def _batch(ids: list[str], tail: MicroBatch | None = None) -> MicroBatch:
    rows = len(ids)
    return MicroBatch(
        stream="s",
        ranges={0: (10, 10 + rows)},
        X=np.arange(rows * 2, dtype=np.float64).reshape(rows, 2),
        y=np.zeros(rows),
        ids=ids,
        partitions=np.zeros(rows, dtype=np.int32),
        offsets=np.arange(10, 10 + rows, dtype=np.int64),
        tail=tail,
    )


@pytest.mark.parametrize(
    "ids",
    [
        [f"event-{i}" for i in range(1_000)],
        ["a\x00b", "c", ""],  # the separator inside an id: pickled as a list
        ["", "", "x"],
        ["é", "日本", "a,b\nc"],
        [],
    ],
    ids=["plain", "separator-inside", "empty-strings", "unicode", "no-rows"],
)
def test_pickle_round_trip_keeps_ids_and_rows(ids: list[str]) -> None:
    batch = _batch(ids, tail=_batch(["t1", "t2"]))
    restored = pickle.loads(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
    assert restored.rows == len(ids)
    assert restored.ids == ids
    assert restored.tail is not None and restored.tail.ids == ["t1", "t2"] and restored.tail.rows == 2
    np.testing.assert_array_equal(restored.offsets, batch.offsets)
    again = pickle.loads(pickle.dumps(restored))  # a step that re-emits what it read
    assert again.ids == ids and again.rows == len(ids)


def test_ids_changed_after_unpickling_are_the_ones_pickled_next() -> None:
    restored = pickle.loads(pickle.dumps(_batch(["a", "b"])))
    restored.ids = ["c"]
    assert pickle.loads(pickle.dumps(restored)).ids == ["c"]
    assert copy.deepcopy(restored).ids == ["c"]


def test_a_missing_attribute_is_still_an_attribute_error() -> None:
    restored = pickle.loads(pickle.dumps(_batch(["a"])))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        restored.nope  # noqa: B018
