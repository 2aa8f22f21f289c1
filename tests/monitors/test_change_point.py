"""Locating a rise in a model's errors inside a window (monitors/change_point.py)."""

from __future__ import annotations

import numpy as np
import pytest

from monitors.change_point import rise_start


def _errors(rows: int, change: int, before: float, after: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rates = np.where(np.arange(rows) < change, before, after)
    return (rng.random(rows) < rates).astype(float)


@pytest.mark.parametrize(
    ("change", "before", "after"),
    [(600, 0.0, 0.78), (300, 0.02, 0.15), (850, 0.10, 0.50), (100, 0.05, 0.40)],
    ids=["stagger-like", "sea-like small rise", "late", "early"],
)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_rise_is_located_near_where_it_began(change: int, before: float, after: float, seed: int) -> None:
    found = rise_start(_errors(1_000, change, before, after, seed))
    assert found is not None and abs(found - change) <= 40, found


@pytest.mark.parametrize("rate", [0.02, 0.1, 0.3, 0.5])
def test_a_stationary_window_keeps_its_first_row(rate: float) -> None:
    located = [rise_start(_errors(1_000, 0, rate, rate, seed)) for seed in range(50)]
    assert located == [None] * 50


def test_absolute_errors_of_a_regression_rise_too() -> None:
    rng = np.random.default_rng(4)
    errors = np.abs(np.concatenate([rng.normal(0, 1.0, 700), rng.normal(0, 3.0, 300)]))
    found = rise_start(errors)
    assert found is not None and abs(found - 700) <= 40


def test_a_fall_or_a_short_window_is_not_a_rise() -> None:
    assert rise_start(_errors(1_000, 500, 0.5, 0.05, 5)) is None
    assert rise_start(np.array([0.0] * 20 + [1.0] * 20)) is None  # fewer than 30 rows a side
