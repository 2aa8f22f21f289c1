"""The drift side of an early cut: a cut only when a retrain follows, and the cooldown it leaves alone.

A cut that no drift retrain follows only bends the series the detector reads (benchmarks/README.md
part 12 (c)); the retrain that follows a first cut must not spend the stream's one retrain per cooldown
on what may be a pause in a transition (part 12 (b)), and a second cut's retrain learns the rows since
the first cut and arms nothing (part 16). Pure functions, shared by the benchmark and the sensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monitors.decisions import Decision, DecisionConfig, LastAction, decide
from monitors.detectors import ChangeResult, detect_batch_change, detect_series_change
from monitors.early_cut import CutDecision

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
    detector (`series_change`) and `monitors.decisions.decide`."""
    found = series_change(series, task, detector, params, answered_at)
    return found, decide(now=now, changes=[found] if found else [], last_action=last, config=policy)


def series_change(
    series: Sequence[SeriesPoint],
    task: str,
    detector: str,
    params: dict[str, Any],
    answered_at: float | None = None,
    resume: str | None = None,
) -> ChangeResult | None:
    """The product's detector (`monitors.detectors`) on the per-batch series: error rates weighted by
    rows, or MAEs. `answered_at`: a cut retrain that does not anchor the cooldown still answers the
    detections up to it (decide's rule 4), so those are not found again. `resume`: see
    `detectors.detect_change_point` (the drift sensor's series grows by a batch between its ticks)."""
    if not series:
        return None
    errors, rows, _, times = (list(c) for c in zip(*series, strict=True))
    if task == "classification":
        found = detect_batch_change(errors, rows, detector, times=times, resume=resume, **params)
    else:
        found = detect_series_change(errors, detector, metric="mae", times=times, resume=resume, **params)
    if found is not None and answered_at is not None and found.at is not None and found.at <= answered_at:
        return None
    return found


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
