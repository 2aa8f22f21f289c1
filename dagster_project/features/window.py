"""Running aggregates over one key's sliding window: O(1) amortized per event instead of O(window).

A `WindowCursor` follows `[lo, hi)`, a range of *absolute* positions in one column of a key's
history (position = index + the number of values dropped from the front so far). Events of a key
arrive in event-time order almost always, so both ends only move forward: the values entering are
added to the exact sums and the monotonic deques, the values leaving are taken out. When an end
moves back (an out-of-order event within the lateness) or the ranges do not overlap, the cursor
is rebuilt from the slice, which costs what the from-scratch path always cost. The cursor is a
cache: it is never saved, and a value never depends on it (`features.aggregations`).
"""

from __future__ import annotations

from collections import deque

from dagster_project.features.aggregations import ExactSums, finish
from dagster_project.spec import DerivedFeatureSpec


class WindowCursor:
    """Exact sums, running min and running max of `column[lo - base : hi - base]`."""

    __slots__ = ("lo", "hi", "sums", "low", "high")

    def __init__(self, sums: bool, squares: bool, low: bool, high: bool) -> None:
        self.lo = self.hi = 0
        self.sums = ExactSums(squares) if sums else None
        # (position, value), values increasing (low) or decreasing (high): the front is the extreme.
        self.low: deque[tuple[int, float]] | None = deque() if low else None
        self.high: deque[tuple[int, float]] | None = deque() if high else None

    def move(self, column: list[float], base: int, lo: int, hi: int) -> None:
        """Make the cursor cover absolute positions [lo, hi) of `column` (whose first value is at `base`)."""
        if lo < self.lo or hi < self.hi or lo >= self.hi:
            self._clear(lo)
        sums, low, high = self.sums, self.low, self.high
        for i in range(self.hi, hi):
            x = column[i - base]
            if sums is not None:
                sums.add(x)
            if low is not None:
                while low and low[-1][1] >= x:
                    low.pop()
                low.append((i, x))
            if high is not None:
                while high and high[-1][1] <= x:
                    high.pop()
                high.append((i, x))
        self.hi = hi
        self._forget(column, base, lo)

    def drop_front(self, column: list[float], base: int, upto: int) -> None:
        """Positions below `upto` are about to be deleted from `column`: let go of them first."""
        if self.hi <= upto:
            self._clear(upto)
        elif self.lo < upto:
            self._forget(column, base, upto)

    def value(self, feature: DerivedFeatureSpec) -> float:
        low = self.low[0][1] if self.low else 0.0
        high = self.high[0][1] if self.high else 0.0
        return finish(feature, self.sums, self.hi - self.lo, low, high)

    def _forget(self, column: list[float], base: int, lo: int) -> None:
        """Move the start forward to `lo`, taking the values before it out."""
        if self.sums is not None:
            for i in range(self.lo, lo):
                self.sums.remove(column[i - base])
        for extremes in (self.low, self.high):
            while extremes and extremes[0][0] < lo:
                extremes.popleft()
        self.lo = lo

    def _clear(self, at: int) -> None:
        self.lo = self.hi = at
        if self.sums is not None:
            self.sums = ExactSums(self.sums.squares)
        for extremes in (self.low, self.high):
            if extremes is not None:
                extremes.clear()
