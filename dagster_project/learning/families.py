"""Several model families learning one stream; the gate picks which one serves.

Every family (say the incremental SGD pipeline and a windowed gradient-boosting model) learns
every batch, so a family that loses today keeps learning and can win later. The *leader* is what
the version exports and serves. It changes only on evidence: on the batch's tail, which no family
has learned, the best family replaces the leader when it is better by more than
`promotion.margin` and a one-sided paired test on those rows says so at `promotion.significance`
(the margin alone when the test is off or cannot be computed). The version's own promotion gate
then compares the version (its leader) with the champion as for any version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dagster_project.spec import StreamSpec

LOWER_IS_BETTER = {"log_loss", "mae", "rmse"}


class CandidateSet:
    """The families of one stream and the one that serves; predictions are the leader's."""

    def __init__(self, members: dict[str, Any], leader: str) -> None:
        if leader not in members:
            raise ValueError(f"leader {leader!r} is not one of the families {sorted(members)}")
        self.members = members
        self.leader = leader
        self.choice: dict[str, Any] = {}  # the latest leader decision, with every family's numbers

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.members[self.leader].predict(X)

    @property
    def predict_proba(self) -> Callable[[np.ndarray], np.ndarray]:
        return self.members[self.leader].predict_proba

    @property
    def decision_function(self) -> Callable[[np.ndarray], np.ndarray]:
        return self.members[self.leader].decision_function

    def describe(self, members: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return {"leader": self.leader, "members": members, "choice": self.choice}


@dataclass
class LeaderChoice:
    leader: str
    previous: str
    metric: str
    values: dict[str, float | None]  # every family's metric on the tail
    metrics: dict[str, dict[str, Any]]  # every family's metrics on the tail
    rows: int
    test: dict[str, Any] | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "leader": self.leader,
            "previous": self.previous,
            "metric": self.metric,
            "values": self.values,
            "metrics": self.metrics,
            "rows": self.rows,
            "test": self.test,
            "reason": self.reason,
        }


def choose_leader(model: CandidateSet, spec: StreamSpec, metric: str, X: np.ndarray, y: np.ndarray) -> LeaderChoice:
    """Score every family on rows none has learned; switch the leader to the best only on evidence.

    Sets `model.leader` and `model.choice` and returns the decision.
    """
    from dagster_project.learning.prequential import evaluate, row_outputs
    from dagster_project.registry.significance import paired_test

    previous = model.leader
    metrics: dict[str, dict[str, Any]] = {}
    for label, member in model.members.items():
        try:
            metrics[label] = spec_metrics(evaluate(member, spec, X, y).as_metadata())
        except ValueError:  # a windowed family not fitted yet cannot score
            metrics[label] = {}
    values = {label: m.get(metric) for label, m in metrics.items()}
    scored = {label: v for label, v in values.items() if v is not None}
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    rows = len(y)
    test = None
    if len(y) < spec.promotion.min_rows or previous not in scored or len(scored) < 2:
        reason = f"{previous} stays leader: " + (
            f"{rows} unseen rows < promotion.min_rows {spec.promotion.min_rows}"
            if len(y) < spec.promotion.min_rows
            else "not every family could be scored"
        )
        leader = previous
    else:
        best = max(scored, key=lambda label: sign * scored[label])
        gain = sign * (scored[best] - scored[previous])
        numbers = ", ".join(f"{label} {v:.4f}" for label, v in sorted(scored.items()))
        if best == previous:
            leader, reason = previous, f"{previous} stays leader: best {metric} on {rows} unseen rows ({numbers})"
        else:
            paired = paired_test(
                metric, y, row_outputs(model.members[best], spec, X), row_outputs(model.members[previous], spec, X)
            )
            test = paired.to_dict()
            level = spec.promotion.significance
            significant = not level or paired.p_value is None or paired.p_value < level
            if gain > spec.promotion.margin and significant:
                leader = best
                reason = (
                    f"{best} leads: {metric} better than {previous} by {gain:.4f} > margin {spec.promotion.margin:g}"
                )
            else:
                leader = previous
                why = (
                    f"ahead by {gain:.4f} <= margin {spec.promotion.margin:g}"
                    if gain <= spec.promotion.margin
                    else f"ahead by {gain:.4f} but not significant"
                )
                reason = f"{previous} stays leader: {best} {why}"
            reason += f" ({paired.describe()})"
            reason += f" on {rows} unseen rows ({numbers})"
    model.leader = leader
    choice = LeaderChoice(leader, previous, metric, values, metrics, rows, test, reason)
    model.choice = choice.as_dict()
    return choice


def spec_metrics(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k != "rows"}
