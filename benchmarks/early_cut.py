"""Whether to cut a waiting batch short because the served model's errors on it rose: on totals only.

A batch learner serves the batch that holds a concept change with the old concept's model; cutting
that batch short where the served model's errors rise lets the change be learned sooner
(`benchmarks/README.md`, "Learning quality over many streams", parts 8 and 9). A sensor can read
totals (rows and summed errors, from the head's prequential metrics and the label join's live
per-version counts), not per-row errors, so the rule takes totals.

A cut is not free: the short batch is what the drift retrain that follows learns the new concept
from, and the detector's cooldown then holds that retrained model. Two floors keep a cut from
spending them badly:

- rows: the waiting rows must be at least `MIN_WAITING_FRACTION` of `batch.rows`, so the retrain
  has about as many post-change rows as an uncut batch would give it (a 250-row cut of a 1,000-row
  batch left a fresh model with too few rows of a rule-based concept, and it served worse);
- size of the rise: the standardized difference (Cohen's d, pooled standard deviation of the
  per-row errors) between the waiting rows and the batch before must be at least `MIN_EFFECT`, a
  rise the size of an abrupt change. Early in a gradual transition the waiting rows are mostly the
  old concept, the rise is diluted, and a retrain then learns a mixture and blocks the later one.

The rise must also be evident (two-sample t >= `change_point.MIN_T`, the test a drift retrain trims
its window with); with the two floors above it nearly always is, but not on tiny batches.

Not a default, nor yet opt-in: with a change in the middle of a batch, a gradual transition half-way
through passed both floors and its cut cost 0.031 accuracy (benchmarks/README.md part 9). Totals of
one tick cannot tell a small complete change from a large one still under way (deferring the drift
retrain after a cut did not help either; same part).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from monitors.change_point import MIN_T

MIN_WAITING_FRACTION = 0.5  # of batch.rows: the retrain after a cut learns from these rows
MIN_EFFECT = 0.8  # Cohen's d, "large" by his convention; "medium" (0.5) let a transition's start cut


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
    rise = waiting.mean - before.mean
    if rise <= 0:
        return CutDecision(False, f"{numbers}: no rise")
    within = before.sum_of_squares_about_mean() + waiting.sum_of_squares_about_mean()
    sd = math.sqrt(max(within / (before.rows + waiting.rows - 2), 1e-12))
    d = rise / sd
    t = d / math.sqrt(1 / before.rows + 1 / waiting.rows)
    numbers += f", rise {rise:.4g} (d {d:.2f}, t {t:.1f})"
    if t < min_t:
        return CutDecision(False, f"{numbers}: not evident (t < {min_t:g})")
    if d < min_effect:
        return CutDecision(False, f"{numbers}: smaller than an abrupt change's (d < {min_effect:g})")
    return CutDecision(True, f"{numbers}: cut")
