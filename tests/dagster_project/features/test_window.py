"""The window cursor: moved forward, back and trimmed, it gives the from-scratch aggregate's bits."""

from __future__ import annotations

import numpy as np
import pytest

from dagster_project.features.window import WindowCursor
from dagster_project.spec import DerivedFeatureSpec
from tests.dagster_project.features.reference import from_scratch

AGGS = ("count", "sum", "mean", "min", "max", "std")
FEATURES = [DerivedFeatureSpec(name=a, of="x", by="k", agg=a, window=1, default=-7.0) for a in AGGS]


def test_any_walk_of_the_window_gives_the_from_scratch_values():
    rng = np.random.default_rng(5)
    column = rng.integers(-3, 4, size=400).astype(float).tolist()  # many ties for the min and max deques
    column = [x + 0.1 * (i % 3) for i, x in enumerate(column)]
    cursor = WindowCursor(sums=True, squares=True, low=True, high=True)
    lo = hi = 0
    for step in range(2000):
        if step % 97 == 0:  # now and then an end moves back (an out-of-order event): rebuilt
            lo, hi = sorted(rng.integers(0, len(column), size=2).tolist())
        else:
            hi = min(len(column), hi + int(rng.integers(0, 3)))
            lo = min(hi, lo + int(rng.integers(0, 3)))
        cursor.move(column, 0, lo, hi)
        window = column[lo:hi]
        assert [cursor.value(f) for f in FEATURES] == [from_scratch(f, window) for f in FEATURES], (lo, hi)


@pytest.mark.parametrize("upto", [3, 10, 25])
def test_dropping_the_front_keeps_the_cursor_right(upto):
    column = [float(x) for x in (5, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9)]
    cursor = WindowCursor(sums=True, squares=True, low=True, high=True)
    cursor.move(column, 0, 2, 12)
    kept = column[upto:]  # what History.drop_before leaves, with base = upto
    cursor.drop_front(column, 0, upto)
    lo, hi = max(2, upto), max(12, upto)
    cursor.move(kept, upto, lo, min(hi + 2, upto + len(kept)))
    window = column[lo : min(hi + 2, upto + len(kept))]
    assert [cursor.value(f) for f in FEATURES] == [from_scratch(f, window) for f in FEATURES]
