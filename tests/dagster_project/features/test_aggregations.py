"""Exact window sums: the same bits however values entered and left, and a std without cancellation."""

from __future__ import annotations

import math
import statistics
from fractions import Fraction

import numpy as np
import pytest

from dagster_project.features.aggregations import ExactSums
from dagster_project.spec import DerivedFeatureSpec
from tests.dagster_project.features.reference import from_scratch


def feature(agg: str, default: float = -1.0) -> DerivedFeatureSpec:
    return DerivedFeatureSpec(name=f"x_{agg}", of="x", by="k", agg=agg, window=10, default=default)


def test_sums_kept_through_many_adds_and_removes_equal_the_sums_from_scratch_bit_for_bit():
    rng = np.random.default_rng(1)
    values = (rng.normal(size=5000) * 10.0 ** rng.integers(-8, 8, size=5000)).tolist()
    running, window = ExactSums(squares=True), []
    for x in values:  # a sliding window of 50: 4,950 removals, no drift
        running.add(x)
        window.append(x)
        if len(window) > 50:
            running.remove(window.pop(0))
    scratch = ExactSums(squares=True)
    for x in window:
        scratch.add(x)
    assert (running.sum(), running.mean(), running.std()) == (scratch.sum(), scratch.mean(), scratch.std())
    assert running.sum() == math.fsum(window)  # correctly rounded, as fsum is
    assert running.mean() == float(sum(map(Fraction, window)) / len(window))


def test_the_std_has_no_cancellation_error_however_large_the_mean():
    rng = np.random.default_rng(2)
    values = (1e9 + rng.normal(size=200)).tolist()  # mean^2 / variance = 1e18: E[x^2] - E[x]^2 in floats fails
    exact = math.sqrt(statistics.pvariance(map(Fraction, values)))
    assert from_scratch(feature("std"), values) == pytest.approx(exact, rel=1e-15)
    naive = math.sqrt(max(math.fsum(x * x for x in values) / 200 - (math.fsum(values) / 200) ** 2, 0.0))
    assert abs(naive - exact) > 1e-3 * exact  # what the float formula would have given


def test_an_emptied_window_gives_the_defaults_and_starts_its_scale_afresh():
    sums = ExactSums(squares=True)
    for x in (1e-300, 3.0):
        sums.add(x)
    for x in (1e-300, 3.0):
        sums.remove(x)
    assert (sums.n, sums.shift, sums.s1, sums.s2) == (0, 0, 0, 0)
    assert [from_scratch(feature(a), []) for a in ("count", "sum", "mean", "min", "max", "std")] == [
        0.0,
        0.0,
        -1.0,
        -1.0,
        -1.0,
        -1.0,
    ]
    assert from_scratch(feature("std"), [4.0]) == 0.0  # one earlier event: 0, never NaN
