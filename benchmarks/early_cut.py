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

`should_cut_settled` (part 10) reads the trend instead of one tick's totals: the label join's totals
at each checkpoint since the batch began, and it cuts only on a rise that has stopped rising, so the
retrain learns a settled concept rather than a transition under way. Not safe either: a transition
that pauses looks settled, and with `min_effect` it is safe only by cutting almost nothing (part 10).

Part 12 (`should_cut_located` and the cost side): locate where the served model's error level rose on
the checkpoint totals first, judge "settled" on the checkpoints after that point only (no fixed
trailing spans, no floor on the rise's size); a retrain that follows a cut does not start the
drift cooldown (`cooldown_anchor`, `series_after_retrain`, `cut_allowed`); and a cut is taken only if
the drift detector fires on the short batch (`drift_decision`, `confirmed`), so a cut is always
followed by a retrain and never bends the detector's series without one. Not safe either (part 12):
with all three, never worse at four of six settings, but a pause at a transition's start still looks
settled (batches of 800) and a ramp read on the halves after its located start can too (change
mid-batch); (c) also refuses cuts that help by incremental learning alone (inside the cooldown).

Part 15 (`should_cut_sloped`): the rows after the located rise judged on the slope of their error (a
least-squares line over the checkpoints, from totals) instead of two halves whose share of the rise is
measured from the batch before, which a ramp could pass depending on where its rise was located.

Part 16 (`should_cut_again`, `first_cut_retrain`, `retrain_start`): the second cut. A transition
that pauses at its start looks settled to every trend test on totals; the cut's retrain learns the
pause, and that model errs at once when the transition goes on. So in the batch the cut's retrain
serves, the retrained model's errors on the rows waiting so far are compared with the short batch's
level (its totals under the model that served it: the level the cut retrained on, the seed part
12's (b) gives the detector), and the batch is cut again on a rise of t >= `change_point.MIN_T`,
with the first cut's floors (half a batch waiting; a retrain must follow), its retrain learning the
rows since the first cut. Once per change: a second cut's retrain starts the cooldown, arms no third.
With part 15's rule and (b), (c) (`_cutslopefreesure2`) it is never worse than the default at all six
settings of parts 12-16; it fired once, on part 10's pause at batches of 800 (-0.0231 -> +0.0088), and
equals `_cutslopefreesure` everywhere else (part 16). Part 17 wired it, opt-in (`batch.early_cut`): the
rules the product runs moved to `monitors.early_cut` and `monitors.cut_policy` and are imported here;
the candidates the benchmark rejected (parts 9-12) stay in this module.
"""

from __future__ import annotations

from collections.abc import Sequence

from monitors.change_point import MIN_T
from monitors.cut_policy import (
    SeriesPoint,
    confirmed,
    cooldown_anchor,
    cut_allowed,
    drift_decision,
    first_cut_retrain,
    retrain_start,
    series_after_retrain,
)
from monitors.early_cut import (
    MIN_EFFECT,
    MIN_WAITING_FRACTION,
    STAY_T,
    CutDecision,
    ErrorTotals,
    _located,
    _rise,
    error_slope,
    locate_rise,
    should_cut,
    should_cut_again,
    should_cut_sloped,
)

__all__ = [
    "MIN_EFFECT",
    "MIN_WAITING_FRACTION",
    "CutDecision",
    "ErrorTotals",
    "SeriesPoint",
    "confirmed",
    "cooldown_anchor",
    "cut_allowed",
    "drift_decision",
    "error_slope",
    "first_cut_retrain",
    "locate_rise",
    "retrain_start",
    "series_after_retrain",
    "should_cut",
    "should_cut_again",
    "should_cut_located",
    "should_cut_settled",
    "should_cut_sloped",
]


# Part 10: cut only on a rise that has stopped rising. Chosen before the benchmark was run on them.
SPAN_FRACTION = 0.25  # of batch.rows per span; two spans waiting = part 9's half-batch floor
MAX_STEP_T = 2.0  # the last span above the one before by t >= this: the errors are still rising
MAX_STEP_SHARE = 0.5  # ... or by at least this share of the whole rise: most of it is not behind us


def _trailing(windows: Sequence[ErrorTotals], span_rows: float) -> tuple[ErrorTotals, int]:
    """The totals of the last windows that fit in `span_rows` (at least one), and how many they are."""
    total, used = windows[-1], 1
    while used < len(windows) and total.rows + windows[-used - 1].rows <= span_rows:
        total, used = windows[-used - 1] + total, used + 1
    return total, used


def should_cut_settled(
    before: ErrorTotals,
    windows: Sequence[ErrorTotals],
    batch_rows: int,
    span_fraction: float = SPAN_FRACTION,
    min_t: float = MIN_T,
    max_step_t: float = MAX_STEP_T,
    max_step_share: float = MAX_STEP_SHARE,
    min_effect: float = 0.0,
) -> CutDecision:
    """Cut the waiting batch once the served model's errors rose over the batch before and have stopped
    rising: the retrain that follows then learns a settled concept, not a transition under way.

    `windows` are the waiting rows' totals between consecutive checkpoints of the label join, oldest
    first (each live_metrics.jsonl line is such a delta per model version). The last two spans of
    about `span_fraction` of a batch each (whole windows), A then B, must show
    - a rise: A and B together above `before` by t >= `min_t`;
    - that has stopped: B above A by t < `max_step_t` and by less than `max_step_share` of B's rise
      over `before`. Inside a transition the latest span carries much of the rise; after a change,
      abrupt or gradual, large or small, A and B sit at the same new level.
    At least two spans must be waiting, so the retrain has half a batch of post-change rows (part 9).
    With one checkpoint per tick the spans cannot be read before two ticks have passed. `min_effect`:
    part 9's floor on Cohen's d of the rise as well (off by default; `MIN_EFFECT` in part 10's variant)."""
    if batch_rows <= 0:
        raise ValueError(f"batch_rows must be positive (the stream's batch.rows), got {batch_rows}")
    span = span_fraction * batch_rows
    waiting_rows = sum(w.rows for w in windows)
    numbers = f"waiting {waiting_rows} rows in {len(windows)} checkpoints; batch before {before.rows} rows"
    if waiting_rows < 2 * span:
        return CutDecision(False, f"{numbers}: fewer than two spans of {span:g} rows waiting")
    if before.rows < 2:
        return CutDecision(False, f"{numbers}: no batch before to compare with")
    last, used = _trailing(windows, span)
    if used == len(windows):
        return CutDecision(False, f"{numbers}: one checkpoint holds the last span; no trend to read")
    previous, _ = _trailing(windows[:-used], span)
    both = previous + last
    numbers += (
        f", error {before.mean:.4g} -> {previous.mean:.4g} ({previous.rows} rows) -> {last.mean:.4g} ({last.rows} rows)"
    )
    rise, d, t = _rise(before, both)
    if rise <= 0 or t < min_t:
        return CutDecision(False, f"{numbers}: no evident rise (t {t:.1f} < {min_t:g})")
    if d < min_effect:
        return CutDecision(False, f"{numbers}: smaller than an abrupt change's (d {d:.2f} < {min_effect:g})")
    step, _, step_t = _rise(previous, last)
    whole = last.mean - before.mean
    share = step / whole if whole > 0 else 1.0
    numbers += f", rise d {d:.2f} t {t:.1f}, last step {step:.4g} (t {step_t:.1f}, {share:.0%} of the rise)"
    if step_t >= max_step_t:
        return CutDecision(False, f"{numbers}: still rising (step t >= {max_step_t:g})")
    if share >= max_step_share:
        return CutDecision(False, f"{numbers}: still rising (step >= {max_step_share:.0%} of the rise)")
    return CutDecision(True, f"{numbers}: settled, cut")


def should_cut_located(
    before: ErrorTotals,
    windows: Sequence[ErrorTotals],
    batch_rows: int,
    min_waiting_fraction: float = MIN_WAITING_FRACTION,
    stay_t: float = STAY_T,
    min_t: float = MIN_T,
    max_step_t: float = MAX_STEP_T,
    max_step_share: float = MAX_STEP_SHARE,
) -> CutDecision:
    """Cut the waiting batch once the served model's errors rose and have stopped rising, judged on the
    rows after the located rise (`locate_rise`) rather than on fixed trailing spans.

    `windows`: the waiting rows' totals between consecutive label-join checkpoints, oldest first. All
    must hold: half a batch waiting (`min_waiting_fraction`, part 9's floor); a located rise whose
    checkpoints together are above `before` by t >= `min_t`; at least two checkpoints after the rise's
    first one (which may straddle the change: part old concept, part new), split into halves A then B,
    with B above A by t < `max_step_t` and by less than `max_step_share` of B's rise over `before`
    (part 10's clauses). No floor on the rise's size: small completed changes are the ones to cut."""
    decision, numbers, after = _located(before, windows, batch_rows, min_waiting_fraction, stay_t, min_t)
    if decision is not None:
        return decision
    half = len(after) // 2
    previous, last = sum(after[1:half], after[0]), sum(after[half + 1 :], after[half])
    step, _, step_t = _rise(previous, last)
    whole = last.mean - before.mean
    share = step / whole if whole > 0 else 1.0
    numbers += (
        f"; after it {previous.mean:.4g} ({previous.rows} rows) -> {last.mean:.4g} ({last.rows} rows), "
        f"step t {step_t:.1f}, {share:.0%} of the rise"
    )
    if step_t >= max_step_t:
        return CutDecision(False, f"{numbers}: still rising (step t >= {max_step_t:g})")
    if share >= max_step_share:
        return CutDecision(False, f"{numbers}: still rising (step >= {max_step_share:.0%} of the rise)")
    return CutDecision(True, f"{numbers}: settled, cut")
