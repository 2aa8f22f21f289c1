"""The promotion gate: a candidate replaces the champion only if it is not measurably worse.

Both models are scored on the same held-out rows: the batch that has just arrived, before
anything learns from it. No rows are withheld from training, and the comparison is as honest as
the prequential metric itself. Every decision, promote or not, is recorded with its numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

HIGHER_IS_BETTER = {"accuracy": True, "roc_auc": True, "log_loss": False, "mae": False, "rmse": False}


def default_metric(task: str, n_classes: int) -> str:
    if task == "regression":
        return "rmse"
    return "roc_auc" if n_classes == 2 else "accuracy"


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
) -> GateResult:
    """Promote when the candidate is within `margin` of the champion (or better) on `metric`."""
    cand, champ = candidate_metrics.get(metric), champion_metrics.get(metric)

    def result(promote: bool, reason: str) -> GateResult:
        return GateResult(candidate, champion, metric, cand, champ, margin, rows, promote, reason)

    if rows < min_rows:
        return result(False, f"only {rows} held-out rows (< promotion.min_rows {min_rows}); decision deferred")
    if cand is None or champ is None:
        return result(False, f"{metric} not computable on this batch (e.g. a single class); decision deferred")
    higher = HIGHER_IS_BETTER[metric]
    shortfall = (champ - cand) if higher else (cand - champ)
    verdict = f"{metric} {cand:.4f} vs champion {champion} {champ:.4f} on {rows} held-out rows"
    if shortfall <= margin:
        return result(True, f"promoted: {verdict} (within margin {margin:g})")
    return result(False, f"kept as candidate: {verdict} is worse by {shortfall:.4f} > margin {margin:g}")
