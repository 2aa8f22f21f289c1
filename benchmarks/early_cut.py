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
equals `_cutslopefreesure` everywhere else (part 16). A candidate: not wired into the sensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from monitors.change_point import MIN_T
from monitors.decisions import Decision, DecisionConfig, LastAction, decide
from monitors.detectors import ChangeResult, detect_batch_change, detect_series_change

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


# Part 12: locate the rise first, then judge "settled" on the rows after it. Chosen before any run.
STAY_T = 2.0  # a checkpoint is above the batch before's level when its own t >= this ("a clear margin")


def locate_rise(before: ErrorTotals, windows: Sequence[ErrorTotals], stay_t: float = STAY_T) -> int | None:
    """The first checkpoint from which the served model's error stays above the batch before's: every
    checkpoint from it to the last is above `before` by its own two-sample t >= `stay_t`. None when the
    last checkpoint is not above (no rise now). Where the errors rose, not a fixed trailing span: an
    abrupt change inside the waiting rows puts it at the checkpoint holding the change."""
    start = len(windows)
    while start > 0 and windows[start - 1].rows > 0 and _rise(before, windows[start - 1])[2] >= stay_t:
        start -= 1
    return None if start == len(windows) else start


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


# Part 15: the rows after the located rise judged on the slope of their error (a weighted least-squares
# line over the checkpoints) instead of two halves whose share is measured from the batch before. Chosen
# before any run: part 10's step threshold, and nothing else.
MAX_SLOPE_T = MAX_STEP_T  # the line rises by t >= this (one-sided): the errors are still climbing


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


# A point of the drift sensor's per-batch series: (error rate or MAE, rows, first row, time in s).
SeriesPoint = tuple[float, int, int, float]


def drift_decision(
    series: Sequence[SeriesPoint],
    task: str,
    detector: str,
    params: dict[str, Any],
    now: float,
    last: LastAction | None,
    policy: DecisionConfig,
    answered_at: float | None = None,
) -> tuple[ChangeResult | None, Decision]:
    """The drift sensor's decision on the per-batch series since the last action: the product's
    detector (`monitors.detectors`) and `monitors.decisions.decide`. `answered_at`: a cut retrain that
    does not anchor the cooldown still answers the detections up to it (decide's rule 4)."""
    errors, rows, _, times = (list(c) for c in zip(*series, strict=True))
    if task == "classification":
        found = detect_batch_change(errors, rows, detector, times=times, **params)
    else:
        found = detect_series_change(errors, detector, metric="mae", times=times, **params)
    if found is not None and answered_at is not None and found.at is not None and found.at <= answered_at:
        found = None
    return found, decide(now=now, changes=[found] if found else [], last_action=last, config=policy)


def confirmed(decision: CutDecision, retrain: Decision) -> CutDecision:
    """A cut is either followed by a drift retrain or not taken: `retrain` is the drift decision the
    short batch would get. Without it, cutting would only change the batch series the detector reads
    and delay the retrain a full batch would have raised (part 10, `sea_gradual_s2` at batches of 1,200)."""
    if not decision.cut:
        return decision
    if retrain.action != "retrain":
        why = "; ".join(retrain.reasons[:1])
        return CutDecision(False, f"{decision.reason}; no retrain would follow ({why}): not cut")
    return CutDecision(True, f"{decision.reason}; the drift detector fires on the short batch")


def cooldown_anchor(last: LastAction | None, now: float, after_cut: bool, free: bool) -> LastAction | None:
    """The action the drift cooldown runs from after a retrain at `now`. With `free`, a retrain that
    follows a cut leaves it where it was: it must not spend the stream's one retrain per cooldown on
    what may be a pause in a transition, so a second retrain can follow when the errors rise again."""
    return last if after_cut and free else LastAction("retrain", now)


def series_after_retrain(series: Sequence[SeriesPoint], after_cut: bool, free: bool) -> list[SeriesPoint]:
    """The detector's series after a retrain: empty (errors since the action), or with `free` after a
    cut the short batch alone, so "rise again" means the retrained model errs above the level the
    cut was taken on (a transition that only paused), not merely above its own first batch."""
    return [series[-1]] if after_cut and free and series else []


def cut_allowed(now: float, last_cut_retrain: float | None, cooldown_s: float) -> bool:
    """At most one cooldown-free cut retrain per `cooldown_s`: with `cooldown_anchor` that bounds the
    retrains a cooldown holds to two (the cut's and one after it)."""
    return last_cut_retrain is None or now - last_cut_retrain >= cooldown_s


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


def first_cut_retrain(after_cut: bool, second: bool) -> bool:
    """Whether a retrain is a first cut's: only that one leaves the cooldown (`cooldown_anchor`), seeds
    the detector's series with its short batch (`series_after_retrain`) and arms a second cut in the
    batch it serves. A second cut's retrain is an ordinary one: it starts the cooldown and arms no
    third, so at most one extra cut per change (a transition is not chased a half batch at a time)
    and a cooldown holds two retrains, as part 12 bounded it."""
    return after_cut and not second


def retrain_start(firsts: Sequence[int], found: ChangeResult, second: bool) -> int:
    """The first row of a drift retrain's window (before the product locates the change inside it):
    the detector's start of the new regime; after a second cut, the first row served by the first
    cut's retrain (`firsts[-1]`), since the rows before it are the ones that retrain already learned."""
    if second:
        return firsts[-1]
    return firsts[found.start_index if found.start_index is not None else found.index]
