"""Cutting a waiting batch short on the served model's error totals (benchmarks/early_cut.py)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.early_cut import (
    ErrorTotals,
    confirmed,
    cooldown_anchor,
    cut_allowed,
    drift_decision,
    error_slope,
    first_cut_retrain,
    locate_rise,
    retrain_start,
    series_after_retrain,
    should_cut,
    should_cut_again,
    should_cut_located,
    should_cut_settled,
    should_cut_sloped,
)
from monitors.decisions import DecisionConfig, LastAction, decide
from monitors.detectors import ChangeResult


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


# Part 12: `should_cut_located` (the rise located first, "settled" judged on the checkpoints after it)
# and the cost side: `confirmed` (a cut only when a retrain follows it), `cooldown_anchor` /
# `series_after_retrain` / `cut_allowed` (a cut's retrain does not spend the stream's cooldown).


def test_an_abrupt_change_inside_the_waiting_rows_is_located_and_cut_on_the_rows_after_it() -> None:
    # Part 10's (a): STAGGER's change a quarter into the batch (`--rows 6500`); the fixed trailing spans
    # read 0.2 -> 0.8 as a rise under way. Located at the checkpoint holding the change, the rows after
    # it sit at one level.
    before, windows = ErrorTotals(1_000, 0), _windows(0.0, 0.0, 0.4, 0.8, 0.8)
    assert locate_rise(before, windows) == 2
    assert not should_cut_settled(before, windows, batch_rows=1_000).cut
    decision = should_cut_located(before, windows, batch_rows=1_000)
    assert decision.cut and "from checkpoint 2" in decision.reason and "settled, cut" in decision.reason
    # The checkpoint holding the change (part old, part new concept) is not part of the settled test,
    # and two checkpoints must follow it.
    assert "0.8 (100 rows) -> 0.8 (100 rows)" in decision.reason
    late = should_cut_located(before, _windows(0.0, 0.0, 0.0, 0.4, 0.8), batch_rows=1_000)
    assert not late.cut and "fewer than two checkpoints after the rise's first" in late.reason


def test_the_rise_starts_where_the_errors_stay_above_the_batch_before() -> None:
    before = ErrorTotals(1_000, 20)
    assert locate_rise(before, _windows(0.02, 0.03, 0.02, 0.01, 0.02)) is None  # no rise now
    assert locate_rise(before, _windows(0.3, 0.02, 0.25, 0.3, 0.28)) == 2  # a dip back to the level resets it
    assert locate_rise(before, _windows(0.3, 0.3, 0.3, 0.3, 0.3)) == 0


def test_a_located_transition_still_under_way_is_not_cut_until_it_levels_off() -> None:
    # Part 9's `--rows 7000` loss (STAGGER half-way through a gradual change): rising after the rise too.
    before, rising = ErrorTotals(1_000, 6), _windows(0.02, 0.08, 0.16, 0.28, 0.47)
    decision = should_cut_located(before, rising, batch_rows=1_000)
    assert not decision.cut and "still rising" in decision.reason
    # Judged on all rows after the rise, a transition that has just levelled off still reads as rising
    # (the ramp is in the earlier half): the rule waits a gradual change out rather than cut inside it.
    levelled = should_cut_located(before, _windows(0.02, 0.08, 0.16, 0.28, 0.47, 0.58, 0.6, 0.59, 0.6, 0.6), 1_000)
    assert not levelled.cut and "still rising" in levelled.reason
    # A slow rise whose step hides in noise (t 1.0): the later half carries half of the rise.
    slow = should_cut_located(ErrorTotals(1_000, 10), _windows(0.06, 0.06, 0.10, 0.12, rows=50), batch_rows=400)
    assert not slow.cut and "still rising (step >= 50% of the rise)" in slow.reason


def test_a_small_completed_change_is_cut_on_located_totals_without_a_size_floor() -> None:
    before, windows = ErrorTotals(1_000, 24), _windows(0.12, 0.11, 0.13, 0.12, 0.12)
    assert should_cut_located(before, windows, batch_rows=1_000).cut
    assert not should_cut(before, sum(windows[1:], windows[0]), batch_rows=1_000).cut  # part 9: d < 0.8
    floor = should_cut_located(before, _windows(0.8, 0.8, 0.8, 0.8), batch_rows=1_000)
    assert not floor.cut and "fewer than 500 waiting rows" in floor.reason


@pytest.mark.parametrize("rate", [0.0, 0.02, 0.1, 0.3, 0.5])
def test_a_stationary_stream_is_never_cut_on_located_totals(rate: float) -> None:
    decisions = [
        should_cut_located(
            _misses(1_000, rate, seed), [_misses(100, rate, seed * 100 + i) for i in range(checkpoints)], 1_000
        )
        for seed in range(100)
        for checkpoints in (5, 7, 9)
    ]
    assert not any(d.cut for d in decisions), [d.reason for d in decisions if d.cut][:3]


def test_located_regression_totals_cut_on_a_level_shift_in_absolute_errors() -> None:
    def totals(seed: int, scales: tuple[float, ...]) -> list[ErrorTotals]:
        rng = np.random.default_rng(seed)
        parts = [np.abs(rng.normal(0, 1.0, 1_000)), *(np.abs(rng.normal(0, s, 100)) for s in scales)]
        return [ErrorTotals(len(e), float(e.sum()), float((e * e).sum())) for e in parts]

    # MAE doubles a checkpoint into the waiting rows; 100-row checkpoints of absolute errors are noisy,
    # so most seeds, not all, read the level after it as settled. Without a shift, none cuts.
    shifted = [should_cut_located(t[0], t[1:], 1_000).cut for t in (totals(s, (1, 2, 2, 2, 2, 2)) for s in range(40))]
    assert sum(shifted) >= 30
    calm = [should_cut_located(t[0], t[1:], 1_000).cut for t in (totals(s, (1,) * 6) for s in range(40))]
    assert not any(calm)
    with pytest.raises(ValueError, match="batch.rows"):
        should_cut_located(ErrorTotals(1_000, 0), _windows(0.8, 0.8, 0.8, 0.8, 0.8), batch_rows=0)


# Part 15: `should_cut_sloped`, the rows after the located rise judged on the slope of their error.


def test_the_slope_over_checkpoint_totals_is_the_least_squares_line_through_every_row() -> None:
    rng = np.random.default_rng(3)
    errors = [(rng.random(n) < p).astype(float) for n, p in ((100, 0.2), (150, 0.25), (100, 0.4), (50, 0.3))]
    slope, t = error_slope([ErrorTotals(len(e), float(e.sum())) for e in errors])
    # The same line fitted to the rows themselves, each at its checkpoint's centre.
    edges = (0, 100, 250, 350)
    centres = np.concatenate([np.full(len(e), edge + len(e) / 2) for e, edge in zip(errors, edges, strict=True)])
    y = np.concatenate(errors)
    design = np.column_stack([np.ones_like(centres), centres])
    coef, residual, *_ = np.linalg.lstsq(design, y, rcond=None)
    se = np.sqrt(residual[0] / (len(y) - 2) / ((centres - centres.mean()) ** 2).sum())
    assert slope == pytest.approx(coef[1]) and t == pytest.approx(coef[1] / se)
    with pytest.raises(ValueError, match="two checkpoints"):
        error_slope([ErrorTotals(100, 20)])


def test_a_ramp_that_the_halves_read_as_settled_still_climbs_on_the_slope() -> None:
    # Part 12's `--rows 7000` loss (`stagger_gradual_s2`, per 100 rows): the halves after the located
    # rise (0.22 -> 0.33) step by t 2.0, just below the threshold, and 34 % of the rise measured from the
    # batch before; the line through the three checkpoints climbs by t 2.8.
    before, ramp = ErrorTotals(1_000, 6), _windows(0.02, 0.11, 0.22, 0.26, 0.40)
    assert should_cut_located(before, ramp, batch_rows=1_000).cut
    decision = should_cut_sloped(before, ramp, batch_rows=1_000)
    assert not decision.cut and "still climbing (slope t >= 2)" in decision.reason and "(t 2.8)" in decision.reason
    # Once the errors level off the line over the rows after the rise is flat, and it cuts.
    levelled = _windows(0.02, 0.11, 0.22, 0.26, 0.40, 0.41, 0.40, 0.40, 0.41, 0.40)
    assert not should_cut_sloped(before, levelled, batch_rows=1_000).cut  # the ramp is still in the line
    assert should_cut_sloped(before, _windows(0.02, 0.40, 0.41, 0.40, 0.40, 0.41), batch_rows=1_000).cut


def test_the_slope_is_read_after_the_located_rise_not_over_the_whole_wait() -> None:
    # An abrupt change a third into the waiting rows: over every checkpoint the line climbs steeply;
    # after the checkpoint holding the change it is flat.
    before, windows = ErrorTotals(1_000, 0), _windows(0.0, 0.0, 0.4, 0.8, 0.8)
    decision = should_cut_sloped(before, windows, batch_rows=1_000)
    assert decision.cut and "from checkpoint 2" in decision.reason and "flat, cut" in decision.reason
    assert error_slope(windows)[1] > 2
    late = should_cut_sloped(before, _windows(0.0, 0.0, 0.0, 0.4, 0.8), batch_rows=1_000)
    assert not late.cut and "fewer than two checkpoints after the rise's first" in late.reason
    short = should_cut_sloped(before, _windows(0.8, 0.8, 0.8, 0.8), batch_rows=1_000)
    assert not short.cut and "fewer than 500 waiting rows" in short.reason


@pytest.mark.parametrize("rate", [0.0, 0.02, 0.1, 0.3, 0.5])
def test_a_stationary_stream_is_never_cut_on_the_slope(rate: float) -> None:
    decisions = [
        should_cut_sloped(
            _misses(1_000, rate, seed), [_misses(100, rate, seed * 100 + i) for i in range(checkpoints)], 1_000
        )
        for seed in range(100)
        for checkpoints in (5, 7, 9)
    ]
    assert not any(d.cut for d in decisions), [d.reason for d in decisions if d.cut][:3]


POLICY = DecisionConfig()  # the product's defaults: a 900-s cooldown


def _series(*batches: tuple[float, int]) -> list[tuple[float, int, int, float]]:
    """A drift sensor's per-batch series from (error rate, rows), one batch after another at 100 rows/s."""
    out, first = [], 0
    for error, rows in batches:
        out.append((error, rows, first, (first + rows) / 100))
        first += rows
    return out


def test_a_cut_is_taken_only_when_the_drift_detector_fires_on_the_short_batch() -> None:
    # A small settled rise (part 10's `sea_gradual_s2` at batches of 1,200): the totals rule would cut,
    # but ADWIN on the batch series since the last action does not fire on it.
    cut = should_cut_located(ErrorTotals(1_200, 12), _windows(*[0.05] * 6), 1_200)
    assert cut.cut
    history = [(0.01, 1_200)] * 2
    _, quiet = drift_decision(_series(*history, (0.05, 600)), "classification", "adwin", {}, 30.0, None, POLICY)
    refused = confirmed(cut, quiet)
    assert quiet.action == "none" and not refused.cut and "no retrain would follow" in refused.reason
    found, loud = drift_decision(_series(*history, (0.8, 600)), "classification", "adwin", {}, 30.0, None, POLICY)
    assert found is not None and loud.action == "retrain" and confirmed(cut, loud).cut
    # Inside the cooldown the detector fires but no retrain follows: no cut either.
    _, held = drift_decision(
        _series(*history, (0.8, 600)), "classification", "adwin", {}, 30.0, LastAction("retrain", 20.0), POLICY
    )
    assert not confirmed(cut, held).cut and "cooldown" in confirmed(cut, held).reason


def test_a_retrain_after_a_cut_leaves_the_cooldown_to_a_second_retrain() -> None:
    change = ChangeResult("error_rate", "adwin", {}, index=1, n=2, mean_before=0.12, value_at=0.55, at=45.0)
    free = cooldown_anchor(None, 35.0, after_cut=True, free=True)
    assert decide(now=45.0, changes=[change], last_action=free, config=POLICY).action == "retrain"
    spent = cooldown_anchor(None, 35.0, after_cut=True, free=False)
    assert decide(now=45.0, changes=[change], last_action=spent, config=POLICY).action == "none"
    assert cooldown_anchor(None, 35.0, after_cut=False, free=True) == LastAction("retrain", 35.0)  # uncut: as ever
    # One cooldown-free cut retrain per cooldown.
    assert cut_allowed(40.0, None, 900.0) and not cut_allowed(40.0, 35.0, 900.0) and cut_allowed(935.0, 35.0, 900.0)


def test_after_a_cut_retrain_the_detector_reads_on_from_the_short_batch() -> None:
    # Part 10's pause: cut at 0.12 error, the retrained model (it learned the pause) then errs at 0.55.
    series = _series((0.001, 800), (0.12, 500))
    kept = series_after_retrain(series, after_cut=True, free=True)
    assert kept == series[-1:] and series_after_retrain(series, after_cut=False, free=True) == []
    over = kept + [(0.55, 800, 1_300, 21.0)]
    found, decision = drift_decision(over, "classification", "adwin", {}, 21.0, None, POLICY, answered_at=13.0)
    assert found is not None and decision.action == "retrain"
    # From an empty series (every retrain's) the retrained model's first batch is no rise at all.
    alone = drift_decision(over[1:], "classification", "adwin", {}, 21.0, None, POLICY, answered_at=13.0)
    assert alone[0] is None
    # A detection the cut's retrain already answered is not acted on again.
    assert drift_decision(over, "classification", "adwin", {}, 21.0, None, POLICY, answered_at=21.0)[0] is None


def test_a_retrained_model_that_errs_above_the_short_batch_is_cut_again() -> None:
    # Part 10's pause (batches of 800): the cut was taken at 0.12 error, the model retrained on it errs 0.55.
    decision = should_cut_again(ErrorTotals(500, 60), ErrorTotals(500, 275), batch_rows=800)
    assert decision.cut
    assert "after a cut's retrain" in decision.reason and "short batch 500 rows, error 0.12" in decision.reason
    assert "above it, cut again" in decision.reason


def test_a_retrained_model_at_or_below_the_short_batch_s_level_is_not_cut_again() -> None:
    short = ErrorTotals(500, 60)
    learned = should_cut_again(short, ErrorTotals(500, 30), batch_rows=800)  # it learned the new concept
    assert not learned.cut and "no rise" in learned.reason
    # A little above, not clearly (t about 2, under 5): the retrain learned what there was to learn.
    slight = should_cut_again(short, ErrorTotals(500, 80), batch_rows=800)
    assert not slight.cut and "not evident" in slight.reason
    # The first cut's floor: the second retrain learns the waiting rows, so half a batch must wait.
    early = should_cut_again(short, ErrorTotals(300, 165), batch_rows=800)
    assert not early.cut and "fewer than 400 waiting rows" in early.reason


def test_only_a_first_cut_s_retrain_is_cooldown_free_and_arms_a_second_cut() -> None:
    assert first_cut_retrain(after_cut=True, second=False)
    assert not first_cut_retrain(after_cut=True, second=True)  # at most one extra cut per change
    assert not first_cut_retrain(after_cut=False, second=False)  # an uncut batch's retrain


def test_a_second_cut_s_retrain_learns_the_rows_since_the_first_cut() -> None:
    firsts = [2_400, 2_900]  # the short batch (old model), then the batch the first cut's retrain served
    found = ChangeResult("error_rate", "adwin", {}, index=1, n=2, mean_before=0.12, value_at=0.55, start_index=0)
    assert retrain_start(firsts, found, second=True) == 2_900  # not the rows the first retrain learned
    assert retrain_start(firsts, found, second=False) == 2_400  # any other retrain: where the detector says
    assert retrain_start(firsts, ChangeResult("error_rate", "adwin", {}, 1, 2, 0.1, 0.5), second=False) == 2_900


@pytest.mark.parametrize("rate", [0.0, 0.02, 0.1, 0.3, 0.5])
def test_a_stationary_stream_is_never_cut_again(rate: float) -> None:
    decisions = [
        should_cut_again(_misses(500, rate, seed), _misses(waiting, rate, seed + 1_000), batch_rows=800)
        for seed in range(100)
        for waiting in (400, 500, 700)
    ]
    assert not any(d.cut for d in decisions)
