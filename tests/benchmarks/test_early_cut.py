"""Cutting a waiting batch short on the served model's error totals (benchmarks/early_cut.py)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.early_cut import ErrorTotals, should_cut, should_cut_settled


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


# Part 10: `should_cut_settled`, on the label join's checkpoint totals (one ErrorTotals per checkpoint).


def _windows(*rates: float, rows: int = 100) -> list[ErrorTotals]:
    """One checkpoint's totals per error rate, `rows` rows each (rates exact to the row)."""
    return [ErrorTotals(rows, round(rate * rows)) for rate in rates]


def test_an_abrupt_change_that_has_settled_is_cut_once_two_spans_wait() -> None:
    # STAGGER-like at the batch boundary: every checkpoint since is at the new level.
    decision = should_cut_settled(ErrorTotals(1_000, 0), _windows(0.8, 0.8, 0.8, 0.8, 0.8), batch_rows=1_000)
    assert decision.cut and "settled, cut" in decision.reason
    assert "error 0 -> 0.8 (200 rows) -> 0.8 (200 rows)" in decision.reason
    # Two spans of a quarter batch each must wait, so the retrain after a cut has half a batch.
    early = should_cut_settled(ErrorTotals(1_000, 0), _windows(0.8, 0.8, 0.8, 0.8), batch_rows=1_000)
    assert not early.cut and "fewer than two spans of 250 rows waiting" in early.reason


def test_a_small_completed_change_is_cut_without_a_floor_on_its_size() -> None:
    # SEA-like: error 0.024 -> 0.12 and flat since, d about 0.4 (part 9's `should_cut` refuses it).
    before, windows = ErrorTotals(1_000, 24), _windows(0.12, 0.11, 0.13, 0.12, 0.12)
    assert should_cut_settled(before, windows, batch_rows=1_000).cut
    assert not should_cut(before, sum(windows[1:], windows[0]), batch_rows=1_000).cut
    # The variant with part 9's floor on the rise's size keeps refusing it.
    large = should_cut_settled(before, windows, batch_rows=1_000, min_effect=0.8)
    assert not large.cut and "smaller than an abrupt change's" in large.reason


def test_a_transition_still_under_way_is_not_cut_however_large_the_rise() -> None:
    # Part 9's `--rows 7000` loss: STAGGER half-way through a gradual change, error 0.006 -> 0.202 over
    # the waiting 500 rows, rising checkpoint by checkpoint. `should_cut` took it (d 0.82).
    before, windows = ErrorTotals(1_000, 6), _windows(0.02, 0.08, 0.16, 0.28, 0.47)
    assert should_cut(before, sum(windows[1:], windows[0]), batch_rows=1_000).cut
    decision = should_cut_settled(before, windows, batch_rows=1_000)
    assert not decision.cut and "still rising (step t >= 2)" in decision.reason
    # Later in the transition the errors level off, and then it cuts.
    assert should_cut_settled(before, _windows(*(0.02, 0.08, 0.16, 0.28, 0.47, 0.58, 0.6, 0.59, 0.6)), 1_000).cut


def test_a_slow_rise_is_still_rising_when_the_last_span_holds_half_of_it() -> None:
    # Each span's step is within noise (t 1.7) but the last span carries half of the rise so far.
    decision = should_cut_settled(ErrorTotals(1_600, 32), _windows(*[0.05] * 4, *[0.08] * 4), batch_rows=1_600)
    assert not decision.cut and "still rising (step >= 50% of the rise)" in decision.reason


def test_one_checkpoint_per_tick_leaves_no_trend_to_read() -> None:
    # The label join's default flush (5 s) is one read per tick: the last span is a whole read.
    one = should_cut_settled(ErrorTotals(1_000, 0), [ErrorTotals(500, 400)], batch_rows=1_000)
    assert not one.cut and "no trend to read" in one.reason
    assert should_cut_settled(ErrorTotals(1_000, 0), [ErrorTotals(500, 400)] * 2, batch_rows=1_000).cut


@pytest.mark.parametrize("rate", [0.0, 0.02, 0.1, 0.3, 0.5])
def test_a_stationary_stream_is_never_cut_on_settled_totals(rate: float) -> None:
    decisions = [
        should_cut_settled(
            _misses(1_000, rate, seed), [_misses(100, rate, seed * 100 + i) for i in range(checkpoints)], 1_000
        )
        for seed in range(100)
        for checkpoints in (5, 7, 9)
    ]
    assert not any(d.cut for d in decisions), [d.reason for d in decisions if d.cut][:3]


def test_settled_regression_totals_cut_on_a_level_shift_in_absolute_errors() -> None:
    rng = np.random.default_rng(5)
    before = np.abs(rng.normal(0, 1.0, 1_000))
    shifted = [np.abs(rng.normal(0, 2.0, 100)) for _ in range(5)]
    totals = [ErrorTotals(len(e), float(e.sum()), float((e * e).sum())) for e in (before, *shifted)]
    assert should_cut_settled(totals[0], totals[1:], batch_rows=1_000).cut
    with pytest.raises(ValueError, match="batch.rows"):
        should_cut_settled(totals[0], totals[1:], batch_rows=0)
