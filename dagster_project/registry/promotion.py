"""The promotion gate: a candidate replaces the champion only if it is measurably better.

Both models are scored on the same unseen rows: the tail of the batch the candidate was trained
on, which neither the candidate nor the champion has learned (`tail_split`). The candidate's
learned offsets end where the tail begins, so the next batch learns the tail: no row is thrown
away and none is learned twice. A candidate is promoted when it is within the margin of the
champion (or better) and a one-sided paired test on those rows (`significance`) shows it better at
the stream's level, so sampling noise alone cannot swap the served model. Every decision, promote
or not, is recorded with all the metrics of both models and the test's name, statistic and p-value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from dagster_project.kafka.offsets import Ranges
from dagster_project.registry.significance import PairedTest, significant

HIGHER_IS_BETTER = {"accuracy": True, "roc_auc": True, "log_loss": False, "mae": False, "rmse": False}


def default_metric(task: str, n_classes: int) -> str:
    if task == "regression":
        return "rmse"
    return "roc_auc" if n_classes == 2 else "accuracy"


def tail_split(ranges: Ranges, tail_rows: int, tail_fraction: float, min_rows: int) -> dict[int, int]:
    """Where each partition's learned rows end: ``end`` minus its share of the batch's tail.

    The tail is ``min(tail_rows, floor(tail_fraction * rows))`` offsets, shared between partitions
    in proportion to their rows (largest remainders get the rounding), or nothing when that is
    below ``min_rows``. Deterministic: the sensor, a retry and a re-execution agree.
    """
    sizes = {p: end - start for p, (start, end) in ranges.items()}
    total = sum(sizes.values())
    tail = min(tail_rows, int(tail_fraction * total))
    if tail < min_rows or total <= 0:
        return {p: end for p, (_, end) in ranges.items()}
    shares = {p: tail * n // total for p, n in sizes.items()}
    left = tail - sum(shares.values())
    by_remainder = sorted(sizes, key=lambda p: (-(tail * sizes[p] % total), p))
    for p in by_remainder:
        if left <= 0:
            break
        if shares[p] < sizes[p]:
            shares[p] += 1
            left -= 1
    return {p: end - shares[p] for p, (_, end) in ranges.items()}


def spec_tail_split(spec: object, ranges: Ranges) -> dict[int, int]:
    """`tail_split` with a stream spec's promotion settings."""
    promotion = spec.promotion  # type: ignore[attr-defined]
    return tail_split(ranges, promotion.tail_rows, promotion.tail_fraction, promotion.min_rows)


@dataclass(frozen=True)
class GateResult:
    candidate: str
    champion: str
    metric: str
    candidate_value: float | None
    champion_value: float | None
    margin: float
    rows: int
    promote: bool
    reason: str
    candidate_metrics: dict[str, Any] | None = None  # every metric of both models on the same rows
    champion_metrics: dict[str, Any] | None = None
    significance: float | None = None  # the test's level; None or 0: the margin alone decided
    test: dict[str, Any] | None = None  # `PairedTest.to_dict()`: candidate (A) vs champion (B)

    @property
    def p_value(self) -> float | None:
        return (self.test or {}).get("p_value")

    def evidence(self) -> dict[str, Any]:
        return asdict(self)


def gate(
    metric: str,
    margin: float,
    min_rows: int,
    candidate: str,
    candidate_metrics: dict[str, float],
    champion: str,
    champion_metrics: dict[str, float],
    rows: int,
    test: PairedTest | None = None,
    significance: float | None = None,
) -> GateResult:
    """Promote when the candidate is within `margin` of the champion (or better) on `metric` and,
    unless `significance` is None or 0, the paired `test` shows it better at that level."""
    cand, champ = candidate_metrics.get(metric), champion_metrics.get(metric)

    def result(promote: bool, reason: str) -> GateResult:
        return GateResult(
            candidate,
            champion,
            metric,
            cand,
            champ,
            margin,
            rows,
            promote,
            reason,
            dict(candidate_metrics),
            dict(champion_metrics),
            significance or None,
            test.to_dict() if test is not None else None,
        )

    if rows < min_rows:
        return result(False, f"only {rows} unseen rows (< promotion.min_rows {min_rows}); decision deferred")
    if cand is None or champ is None:
        return result(False, f"{metric} not computable on this batch (e.g. a single class); decision deferred")
    higher = HIGHER_IS_BETTER[metric]
    shortfall = (champ - cand) if higher else (cand - champ)
    numbers = f"{candidate} {metric} {cand:.4f} vs {champion} {champ:.4f} on {rows} unseen rows"
    kept = f"kept {champion} ({candidate} stays a candidate)"
    if shortfall > margin:
        return result(False, f"{kept}: {numbers} is worse by {shortfall:.4f} > margin {margin:g}")
    if not significance:
        return result(True, f"{candidate} promoted: {numbers} (within margin {margin:g}; significance test off)")
    if test is None or test.p_value is None:
        why = test.describe() if test is not None else "no paired test"
        return result(False, f"{kept}: {numbers}, {why}; no action")
    if not significant(test, significance):
        return result(False, f"{kept}: {numbers}, difference not significant ({test.describe()} >= {significance:g})")
    return result(True, f"{candidate} promoted: {numbers} ({test.describe()} < {significance:g})")
