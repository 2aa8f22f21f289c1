"""Whether to cut a waiting batch short because the served champion's errors on it rose: on totals only.

A batch learner serves the batch that holds a concept change with the old concept's model; cutting that
batch short once the served model's errors have risen and stopped climbing lets the drift retrain learn
the new concept a partial batch sooner. A sensor sees totals (rows and summed errors: the head's
prequential metrics and the label join's per-checkpoint deltas), not per-row errors, so the rules take
totals. The rule the product runs (`batch.early_cut`) is the benchmark's `_cutslopefreesure2`
(benchmarks/README.md, "Learning quality over many streams", parts 9-17): `should_cut_sloped` for the
first cut, `should_cut_again` for the one extra cut in the batch the first cut's retrain serves; the
drift-side clauses (a retrain must follow, the cooldown it leaves alone) are in `monitors.cut_policy`.
Thresholds were fixed before the benchmark ran and are not tuned to it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from monitors.change_point import MIN_T

MIN_WAITING_FRACTION = 0.5  # of batch.rows: the retrain after a cut learns from these rows
MIN_EFFECT = 0.8  # Cohen's d, "large" by his convention; part 9's floor (`should_cut`'s default)
STAY_T = 2.0  # a checkpoint is above the batch before's level when its own t >= this ("a clear margin")
MAX_SLOPE_T = 2.0  # the line after the rise climbs by t >= this (one-sided): the errors are still climbing


@dataclass(frozen=True)
class ErrorTotals:
    """A model's summed per-row errors over some rows: misses for classification (0/1 errors), summed
    absolute errors for regression. `squared` (summed squared errors) is needed for a variance;
    left None it is taken equal to `errors`, which holds exactly for 0/1 errors."""

    rows: int
    errors: float
    squared: float | None = None

    @property
    def mean(self) -> float:
        return self.errors / self.rows if self.rows else 0.0

    def sum_of_squares_about_mean(self) -> float:
        if self.squared is None and self.errors > self.rows:
            raise ValueError(
                f"{self.errors:g} summed errors over {self.rows} rows are not 0/1 errors: pass `squared` "
                "(the summed squared errors) for regression"
            )
        squared = self.errors if self.squared is None else self.squared
        return max(squared - self.rows * self.mean**2, 0.0)

    def __add__(self, other: ErrorTotals) -> ErrorTotals:
        """The totals of both sets of rows (a sensor adds the label join's checkpoint deltas)."""
        squared = None
        if self.squared is not None or other.squared is not None:
            squared = (self.errors if self.squared is None else self.squared) + (
                other.errors if other.squared is None else other.squared
            )
        return ErrorTotals(self.rows + other.rows, self.errors + other.errors, squared)


def _rise(lower: ErrorTotals, upper: ErrorTotals) -> tuple[float, float, float]:
    """`upper`'s mean error over `lower`'s: (difference, Cohen's d, two-sample pooled t)."""
    rise = upper.mean - lower.mean
    within = lower.sum_of_squares_about_mean() + upper.sum_of_squares_about_mean()
    sd = math.sqrt(max(within / max(lower.rows + upper.rows - 2, 1), 1e-12))
    d = rise / sd
    return rise, d, d / math.sqrt(1 / lower.rows + 1 / upper.rows)


@dataclass(frozen=True)
class CutDecision:
    """Cut or not, and why, with the numbers the decision was taken on."""

    cut: bool
    reason: str


def should_cut(
    before: ErrorTotals,
    waiting: ErrorTotals,
    batch_rows: int,
    min_waiting_fraction: float = MIN_WAITING_FRACTION,
    min_effect: float = MIN_EFFECT,
    min_t: float = MIN_T,
) -> CutDecision:
    """Cut the waiting batch now if the served model's errors on the waiting (labelled) rows rose over
    the batch before by an abrupt-sized, evident amount, and enough rows are waiting for a retrain."""
    if batch_rows <= 0:
        raise ValueError(f"batch_rows must be positive (the stream's batch.rows), got {batch_rows}")
    floor = math.ceil(min_waiting_fraction * batch_rows)
    numbers = (
        f"waiting {waiting.rows} rows, error {waiting.mean:.4g}; batch before {before.rows} rows, "
        f"error {before.mean:.4g}"
    )
    if waiting.rows < floor:
        return CutDecision(False, f"{numbers}: fewer than {floor} waiting rows ({min_waiting_fraction:g} of a batch)")
    if before.rows < 2:
        return CutDecision(False, f"{numbers}: no batch before to compare with")
    rise, d, t = _rise(before, waiting)
    if rise <= 0:
        return CutDecision(False, f"{numbers}: no rise")
    numbers += f", rise {rise:.4g} (d {d:.2f}, t {t:.1f})"
    if t < min_t:
        return CutDecision(False, f"{numbers}: not evident (t < {min_t:g})")
    if d < min_effect:
        return CutDecision(False, f"{numbers}: smaller than an abrupt change's (d < {min_effect:g})")
    return CutDecision(True, f"{numbers}: cut")


def locate_rise(before: ErrorTotals, windows: Sequence[ErrorTotals], stay_t: float = STAY_T) -> int | None:
    """The first checkpoint from which the served model's error stays above the batch before's: every
    checkpoint from it to the last is above `before` by its own two-sample t >= `stay_t`. None when the
    last checkpoint is not above (no rise now). Where the errors rose, not a fixed trailing span: an
    abrupt change inside the waiting rows puts it at the checkpoint holding the change."""
    start = len(windows)
    while start > 0 and windows[start - 1].rows > 0 and _rise(before, windows[start - 1])[2] >= stay_t:
        start -= 1
    return None if start == len(windows) else start


def error_slope(windows: Sequence[ErrorTotals]) -> tuple[float, float]:
    """The least-squares line of the per-row error against the row's position over `windows` (each
    checkpoint's rows placed at its centre), from totals only: (slope per row, its t). The residual
    variance adds each checkpoint's spread about its own mean (`sum_of_squares_about_mean`) to its
    mean's distance from the line, so the t is that of the line fitted to every row."""
    rows = sum(w.rows for w in windows)
    if len(windows) < 2 or rows < 3:
        raise ValueError(f"a slope needs two checkpoints and three rows, got {len(windows)} and {rows}")
    centres, edge = [], 0
    for w in windows:
        centres.append(edge + w.rows / 2)
        edge += w.rows
    x_mean = sum(w.rows * x for w, x in zip(windows, centres, strict=True)) / rows
    y_mean = sum(w.errors for w in windows) / rows
    sxx = sum(w.rows * (x - x_mean) ** 2 for w, x in zip(windows, centres, strict=True))
    sxy = sum(w.rows * (x - x_mean) * (w.mean - y_mean) for w, x in zip(windows, centres, strict=True))
    slope = sxy / sxx
    residual = sum(
        w.sum_of_squares_about_mean() + w.rows * (w.mean - y_mean - slope * (x - x_mean)) ** 2
        for w, x in zip(windows, centres, strict=True)
    )
    se = math.sqrt(max(residual / (rows - 2), 0.0) / sxx)
    if se == 0:
        return slope, math.copysign(math.inf, slope) if slope else 0.0
    return slope, slope / se


def should_cut_sloped(
    before: ErrorTotals,
    windows: Sequence[ErrorTotals],
    batch_rows: int,
    min_waiting_fraction: float = MIN_WAITING_FRACTION,
    stay_t: float = STAY_T,
    min_t: float = MIN_T,
    max_slope_t: float = MAX_SLOPE_T,
) -> CutDecision:
    """`should_cut_located`'s rule with "settled" read as a flat line: the checkpoints after the located
    rise's first (at least two) must show no climb, the least-squares slope of their error below
    `max_slope_t` standard errors. It does not depend on where the rise was located, as the halves'
    share of the rise from the batch before did: a ramp climbs whatever level its first checkpoint sat at."""
    decision, numbers, after = _located(before, windows, batch_rows, min_waiting_fraction, stay_t, min_t)
    if decision is not None:
        return decision
    slope, t = error_slope(after)
    numbers += f"; after it {len(after)} checkpoints, slope {slope * 100:+.3g} error per 100 rows (t {t:.1f})"
    if t >= max_slope_t:
        return CutDecision(False, f"{numbers}: still climbing (slope t >= {max_slope_t:g})")
    return CutDecision(True, f"{numbers}: flat, cut")


def _located(
    before: ErrorTotals,
    windows: Sequence[ErrorTotals],
    batch_rows: int,
    min_waiting_fraction: float,
    stay_t: float,
    min_t: float,
) -> tuple[CutDecision | None, str, list[ErrorTotals]]:
    """`should_cut_located`'s floors and located rise: (a refusal or None, the numbers so far, the
    checkpoints after the rise's first)."""
    if batch_rows <= 0:
        raise ValueError(f"batch_rows must be positive (the stream's batch.rows), got {batch_rows}")
    floor = math.ceil(min_waiting_fraction * batch_rows)
    waiting_rows = sum(w.rows for w in windows)
    numbers = f"waiting {waiting_rows} rows in {len(windows)} checkpoints; batch before {before.rows} rows"
    if waiting_rows < floor:
        why = f"{numbers}: fewer than {floor} waiting rows ({min_waiting_fraction:g} of a batch)"
        return CutDecision(False, why), numbers, []
    if before.rows < 2:
        return CutDecision(False, f"{numbers}: no batch before to compare with"), numbers, []
    start = locate_rise(before, windows, stay_t)
    if start is None:
        why = f"{numbers}: the last checkpoint is not above the batch before (t < {stay_t:g})"
        return CutDecision(False, why), numbers, []
    risen = windows[start:]
    rise, d, t = _rise(before, sum(risen[1:], risen[0]))
    numbers += f", error {before.mean:.4g} -> {risen[0].mean:.4g} from checkpoint {start} (t {t:.1f}, d {d:.2f})"
    if rise <= 0 or t < min_t:
        return CutDecision(False, f"{numbers}: no evident rise (t < {min_t:g})"), numbers, []
    after = list(risen[1:])
    if len(after) < 2:
        why = f"{numbers}: fewer than two checkpoints after the rise's first; cannot judge"
        return CutDecision(False, why), numbers, after
    return None, numbers, after


# Part 16: a second cut in the batch a cut's retrain serves. Chosen before any run: the first cut's floors
# and `change_point.MIN_T`, the t with which a drift retrain locates a change and part 12 its located rise.
def should_cut_again(
    short: ErrorTotals,
    waiting: ErrorTotals,
    batch_rows: int,
    min_waiting_fraction: float = MIN_WAITING_FRACTION,
    min_t: float = MIN_T,
) -> CutDecision:
    """Cut again when the model retrained on a cut's short batch errs on the rows waiting since (all of
    them: it errs from its first row if it learned a pause) above the short batch's level by t >=
    `min_t`, and half a batch waits, as for the first cut. No trend test: the rows since the first cut
    are what the second retrain learns, and a model that learned a pause errs at once. `short`: the
    short batch's totals under the model that served it."""
    decision = should_cut(short, waiting, batch_rows, min_waiting_fraction, min_effect=0.0, min_t=min_t)
    reason = decision.reason.replace("batch before", "short batch").replace(": cut", ": above it, cut again")
    return CutDecision(decision.cut, f"after a cut's retrain: {reason}")
