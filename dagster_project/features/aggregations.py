"""The aggregations a derived feature may name, from exact sums so that every path gives the same bits.

A window's sum and sum of squares are kept as integers: a float is exactly m / 2^k
(`float.as_integer_ratio`), so scaled by 2^K (K at least every k in the window) it is an integer,
and integer sums neither round nor drift however long values keep entering and leaving them. An
aggregate is then one correctly rounded division (CPython's int / int), so it depends only on the
window's contents: not on the order values entered and left, nor on whether the sums were kept
incrementally (`features.window`), built from scratch (`/predict`) or rebuilt after a
restart from a checkpoint. The standard deviation comes from the exact n*sum(x^2) - sum(x)^2, so
it has no cancellation error however large the mean is against the spread.
"""

from __future__ import annotations

import math

from dagster_project.spec import DerivedFeatureSpec

USES_SUMS = frozenset({"sum", "mean", "std"})


class ExactSums:
    """n, sum(x) and (optionally) sum(x^2) of a multiset of floats, exactly, as integers scaled by 2^shift."""

    __slots__ = ("n", "shift", "s1", "s2", "squares")

    def __init__(self, squares: bool) -> None:
        self.squares = squares
        self.n = self.shift = self.s1 = self.s2 = 0

    def add(self, x: float) -> None:
        m = self._scaled(x)
        self.n += 1
        self.s1 += m
        if self.squares:
            self.s2 += m * m

    def remove(self, x: float) -> None:
        m = self._scaled(x)
        self.n -= 1
        if not self.n:  # empty again: start the scale afresh, so the integers stay small
            self.shift = self.s1 = self.s2 = 0
            return
        self.s1 -= m
        if self.squares:
            self.s2 -= m * m

    def _scaled(self, x: float) -> int:
        m, d = x.as_integer_ratio()
        k = d.bit_length() - 1  # d == 2^k
        if k > self.shift:
            grow, self.shift = k - self.shift, k
            self.s1 <<= grow
            self.s2 <<= 2 * grow
        return m << (self.shift - k)

    def sum(self) -> float:
        return self.s1 / (1 << self.shift)

    def mean(self) -> float:
        return self.s1 / (self.n << self.shift)

    def std(self) -> float:
        """Population standard deviation (ddof 0): sqrt of the correctly rounded variance."""
        n = self.n
        return math.sqrt((n * self.s2 - self.s1 * self.s1) / ((n * n) << (2 * self.shift)))


def finish(feature: DerivedFeatureSpec, sums: ExactSums | None, n: int, low: float, high: float) -> float:
    """`feature.agg` of a window of `n` values given its exact sums and its min and max.

    count 0 and sum 0 are exact for an empty window; mean, min, max and std have no value there, so
    they take `feature.default`. std is the population standard deviation (ddof 0): one earlier
    event gives 0, never NaN, which the estimators could not take.
    """
    agg = feature.agg
    if agg == "count":
        return float(n)
    if not n:
        return 0.0 if agg == "sum" else feature.default
    if agg == "min":
        return low
    if agg == "max":
        return high
    assert sums is not None
    if agg == "sum":
        return sums.sum()
    return sums.mean() if agg == "mean" else sums.std()
