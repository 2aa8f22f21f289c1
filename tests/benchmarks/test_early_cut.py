"""Cutting a waiting batch short on the served model's error totals (benchmarks/early_cut.py)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.early_cut import ErrorTotals, should_cut


def _misses(rows: int, rate: float, seed: int) -> ErrorTotals:
    """Totals of `rows` seeded 0/1 errors at `rate`."""
    errors = np.random.default_rng(seed).random(rows) < rate
    return ErrorTotals(rows, float(errors.sum()))


def test_an_abrupt_change_on_half_a_batch_cuts_and_says_why() -> None:
    # STAGGER-like: the old concept learned perfectly, most waiting rows now wrong.
    decision = should_cut(ErrorTotals(1_000, 0), ErrorTotals(500, 400), batch_rows=1_000)
    assert decision.cut
    assert "waiting 500 rows, error 0.8" in decision.reason and "batch before 1000 rows, error 0" in decision.reason
    assert "d " in decision.reason and "t " in decision.reason


def test_too_few_waiting_rows_do_not_cut_however_large_the_rise() -> None:
    # A retrain after this cut would learn from 250 rows where an uncut batch gives it 1,000.
    decision = should_cut(ErrorTotals(1_000, 0), ErrorTotals(250, 200), batch_rows=1_000)
    assert not decision.cut and "fewer than 500 waiting rows" in decision.reason
    # The floor follows the stream's batch size: the same 250 rows suffice for batches of 500.
    assert should_cut(ErrorTotals(1_000, 0), ErrorTotals(250, 200), batch_rows=500).cut


def test_the_start_of_a_gradual_transition_is_evident_but_too_small_to_cut() -> None:
    # 500 waiting rows at 10 % error after a perfect batch: t is far above 5, but the rise is the
    # diluted one of a transition just beginning (the waiting rows are mostly the old concept).
    decision = should_cut(ErrorTotals(800, 1), ErrorTotals(500, 49), batch_rows=800)
    assert not decision.cut
    assert "smaller than an abrupt change's" in decision.reason and "rise 0.09" in decision.reason


@pytest.mark.parametrize("rate", [0.0, 0.02, 0.1, 0.3, 0.5])
def test_a_stationary_stream_is_never_cut(rate: float) -> None:
    decisions = [
        should_cut(_misses(1_000, rate, seed), _misses(waiting, rate, seed + 1_000), batch_rows=1_000)
        for seed in range(100)
        for waiting in (500, 750, 999)
    ]
    assert not any(d.cut for d in decisions), [d.reason for d in decisions if d.cut][:3]


def test_no_rise_no_cut() -> None:
    fall = should_cut(ErrorTotals(1_000, 400), ErrorTotals(500, 20), batch_rows=1_000)
    assert not fall.cut and "no rise" in fall.reason
    first = should_cut(ErrorTotals(0, 0), ErrorTotals(500, 400), batch_rows=1_000)
    assert not first.cut and "no batch before" in first.reason


def test_regression_totals_need_the_squared_errors_and_then_cut_on_a_large_rise() -> None:
    rng = np.random.default_rng(3)
    before, waiting = np.abs(rng.normal(0, 1.0, 1_000)), np.abs(rng.normal(0, 4.0, 600))
    totals = [ErrorTotals(len(e), float(e.sum()), float((e * e).sum())) for e in (before, waiting)]
    assert should_cut(*totals, batch_rows=1_000).cut
    small = np.abs(rng.normal(0, 1.3, 600))  # MAE up 30 %: evident on 600 rows, not abrupt-sized
    assert not should_cut(totals[0], ErrorTotals(600, float(small.sum()), float((small**2).sum())), 1_000).cut
    with pytest.raises(ValueError, match="pass `squared`"):
        should_cut(ErrorTotals(1_000, float(before.sum())), ErrorTotals(600, float(waiting.sum())), 1_000)


def test_a_batch_size_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ValueError, match="batch.rows"):
        should_cut(ErrorTotals(1_000, 0), ErrorTotals(500, 400), batch_rows=0)
