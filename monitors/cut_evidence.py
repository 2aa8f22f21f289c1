"""The early cut's evidence from durable state: the served champion's live totals and the series before.

The Kafka sensor asks this module, when `batch.early_cut` is on and a batch is still filling, whether
to cut it now. Everything comes from files other processes already wrote: the label join's
live_metrics.jsonl (one delta per checkpoint and model version), the registry's versions (each
batch's totals under the champion that served it), its champion history and its action records.
Nothing reads Kafka. The waiting rows' evidence is that of every champion of the serving lineage
(`monitors.lineage`), not of the current champion alone: the gate promotes after nearly every batch.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from dagster_project.labels.store import read_records, record_at
from dagster_project.registry.store import ModelRegistry, Version
from dagster_project.spec import StreamSpec
from monitors.actions import action_history
from monitors.cut_policy import SeriesPoint, confirmed, cut_allowed, drift_decision
from monitors.decisions import DecisionConfig
from monitors.early_cut import CutDecision, ErrorTotals, should_cut_again, should_cut_sloped
from monitors.evidence import detector_series
from monitors.lineage import serving_lineage


@dataclass(frozen=True)
class CutPlan:
    """A cut the sensor should take now: its reason, and whether it is a second cut (`should_cut_again`)."""

    reason: str
    second: bool


def metric_totals(metrics: dict[str, Any], task: str) -> ErrorTotals | None:
    """Rows and summed errors from a version's metrics: misses from accuracy, or MAE (and RMSE) sums."""
    rows = int(metrics.get("rows") or 0)
    if rows < 1:
        return None
    if task == "classification":
        if metrics.get("accuracy") is None:
            return None
        return ErrorTotals(rows, float(round((1 - metrics["accuracy"]) * rows)))
    if metrics.get("mae") is None:
        return None
    squared = metrics["rmse"] ** 2 * rows if metrics.get("rmse") is not None else None
    return ErrorTotals(rows, metrics["mae"] * rows, squared)


def served_totals(version: Version, task: str) -> ErrorTotals | None:
    """A batch's totals under the champion that served it (the version's `served` record, else its own
    prequential metrics: the served model was the one it continued)."""
    served = (version.meta.get("served") or {}).get("metrics")
    return metric_totals(served or version.meta.get("metrics", {}), task)


def _totals(raw: dict[str, Any], task: str) -> ErrorTotals | None:
    if not raw or not raw.get("rows"):
        return None
    rows = int(raw["rows"])
    if task == "classification":
        return ErrorTotals(rows, float(rows - int(raw.get("correct", 0))))
    return ErrorTotals(rows, float(raw.get("abs_err", 0.0)), float(raw.get("sq_err", 0.0)))


def waiting_parts(record: dict[str, Any], waiting_from_s: float | None) -> dict[str, list[dict[str, Any]]]:
    """Each version's totals in one checkpoint line that count as waiting rows: those whose events are
    not older than `waiting_from_s` (the oldest waiting row's timestamp).

    A checkpoint joins the rows whose labels came since the one before, and labels come late: the
    first checkpoints after the oldest waiting row's time hold rows served before it, already learned.
    A line with `event_buckets` (the joiner's rows by their events' time) gives only the buckets that
    start at or after `waiting_from_s`; the bucket the oldest waiting row falls in is left out with its
    learned rows (at most `width_ms` of waiting rows). A line without them (a joiner from before they
    were written) counts whole: its rows are assumed to be waiting, as the caller took only lines
    checkpointed since the oldest waiting row's time."""
    buckets = record.get("event_buckets")
    if waiting_from_s is None or not isinstance(buckets, dict):
        return {v: [raw] for v, raw in record.get("versions", {}).items()}
    start_ms = waiting_from_s * 1000.0
    return {
        v: [raw for start, raw in by_start.items() if float(start) >= start_ms]
        for v, by_start in buckets.get("versions", {}).items()
    }


def live_windows(
    records: list[dict[str, Any]], versions: Collection[str], task: str, waiting_from_s: float | None = None
) -> list[ErrorTotals]:
    """The totals of `versions` per label-join checkpoint (the lines' per-version deltas, summed per
    line), oldest first, of the rows whose events are not older than `waiting_from_s` (`waiting_parts`;
    None: every row of each line). A checkpoint can hold two versions' rows (the scorer swapped
    champions while it filled): they are one point of the series, which the rule reads in checkpoint
    order. A checkpoint left with no such rows is no point."""
    windows = []
    for record in records:
        merged = None
        for version, parts in waiting_parts(record, waiting_from_s).items():
            if version not in versions:
                continue
            for raw in parts:
                delta = _totals(raw, task)
                if delta is not None:
                    merged = delta if merged is None else merged + delta
        if merged is not None:
            windows.append(merged)
    return windows


def early_cut(
    registry: ModelRegistry, spec: StreamSpec, next_offsets: dict[int, int], oldest_waiting_s: float, now: float
) -> CutPlan | CutDecision:
    """Whether to cut the waiting batch (starting at `next_offsets`, oldest row at `oldest_waiting_s`)
    now: a `CutPlan`, or the `CutDecision` that says why not.

    The live totals per checkpoint of the rows served from the oldest waiting row on (by their events'
    timestamps, `waiting_parts`: not the rows joined since its time), of every champion of the serving
    lineage (`serving_lineage`: the champions the gate promoted one after another since the last drift
    action or alias change that was not a promotion), are read against the batch before (its totals
    under the champion that served it): the waiting rows are one model's evidence even when the gate
    promoted in between, and a retrain or rollback starts the evidence afresh. The benchmark's rule
    `_cutslopefreesure2`: `should_cut_sloped`; a cut only if the drift decision on the series plus the
    would-be short batch is a retrain (`confirmed`); at most one cooldown-free cut retrain per cooldown
    (`cut_allowed`); and in the batch right after a first cut's retrain, `should_cut_again` against the
    short batch's totals that retrain's action record carries."""
    name = spec.name
    champion = registry.champion(name)
    versions = registry.versions(name)
    if champion is None or not versions:
        return CutDecision(False, "no champion serves yet")
    actions = action_history(registry.decisions(name))
    lineage = serving_lineage(registry.champion_history(name), actions, champion)
    if lineage is None:
        return CutDecision(False, f"champion {champion} does not continue the lineage the last drift action began")
    armed = actions.armed(lineage.versions, next_offsets)
    policy = DecisionConfig.from_spec(spec.drift, spec.promotion.significance)
    if armed is None and not cut_allowed(now, actions.last_cut_retrain, policy.cooldown_s):
        return CutDecision(False, f"a cut's retrain ran less than drift.cooldown_s {policy.cooldown_s:g} s ago")
    # No line checkpointed before both can hold a waiting row of the lineage; within the lines, only
    # rows whose events are not older than the oldest waiting row count (`waiting_parts`).
    since = max(oldest_waiting_s, lineage.since)
    records = read_records(registry.root, name, since=since)
    windows = live_windows(records, lineage.versions, spec.task, oldest_waiting_s)
    if armed is not None:
        short = ErrorTotals(int(armed["short"]["rows"]), float(armed["short"]["errors"]))
        waiting = sum(windows[1:], windows[0]) if windows else ErrorTotals(0, 0.0)
        decision = should_cut_again(short, waiting, spec.batch.rows)
    else:
        scored = [v for v in versions if not v.meta.get("retrain")]
        before = served_totals(scored[-1], spec.task) if scored else None
        if before is None:
            return CutDecision(False, "no batch before with metrics to compare with")
        decision = should_cut_sloped(before, windows, spec.batch.rows)
    if not decision.cut:
        return decision
    waiting_rows = sum(w.rows for w in windows)
    errors = sum(w.errors for w in windows)
    short_point: SeriesPoint = (errors / waiting_rows, waiting_rows, len(versions), now)
    series = detector_series(versions, spec.task, actions.since, actions.seed_version)
    _, retrain = drift_decision(
        [*series, short_point],
        spec.task,
        spec.drift.detector,
        dict(spec.drift.detector_params),
        now,
        actions.anchor,
        policy,
        actions.answered,
    )
    decision = confirmed(decision, retrain)
    if not decision.cut:
        return decision
    checkpoints = f" ({len(windows)} label-join checkpoints since {record_at(records[0]) if records else since:.0f})"
    return CutPlan(decision.reason + checkpoints, second=armed is not None)
