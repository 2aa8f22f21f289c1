"""Several model families learning one stream; the gate picks which one serves.

Every family (say the incremental SGD pipeline and a windowed gradient-boosting model) learns
every batch, so a family that loses today keeps learning and can win later. The *leader* is what
the version exports and serves. It changes only on evidence: each batch's tail, which no family has
learned, adds every challenger's paired outcome against the leader to its *record* (the tails since
the leader last changed, at most `RECORD_TAILS`), and a challenger replaces the leader when it is
better by more than `promotion.margin` and a one-sided paired test says so at
`promotion.significance` (the margin alone when the test is off or cannot be computed), either on
this tail alone (a change shows at once) or pooled over its record (a lead of a point or two, which
one 200-row tail cannot show, but which holds). A pooled-only rule was measured and dropped: after a
change the leader's record from before it outweighed the new evidence for batches (issue 17, part 13).
A drift retrain's set is different: every family was just refit on the same window, so nobody has
a record and the inherited leader means nothing; its leader is the best on rows it has not learned
(`choose_leader(..., refit=True)`). The version's own promotion gate then compares the version (its
leader) with the champion as for any version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dagster_project.registry.contract import settings_changed
from dagster_project.registry.promotion import difference_text, margin_for, margin_text, noise_floor
from dagster_project.spec import StreamSpec

LOWER_IS_BETTER = {"log_loss", "mae", "rmse"}
# Tails a challenger's record keeps: enough pooled rows (10 tails of 200: 2,000) to tell families a
# point or two apart, while evidence older than that describes models that have since learned as
# many batches; a drift retrain starts a new record (its families are new fits).
RECORD_TAILS = 10


class CandidateSet:
    """The families of one stream and the one that serves; predictions are the leader's."""

    def __init__(
        self,
        members: dict[str, Any],
        leader: str,
        record: dict[str, list[dict]] | None = None,
        estimators: dict[str, str] | None = None,
    ) -> None:
        if leader not in members:
            raise ValueError(f"leader {leader!r} is not one of the families {sorted(members)}")
        self.members = members
        self.leader = leader
        # family label -> the settings its member was built with (contract.settings_of; before, the
        # estimator's name): a spec may change them, and a continued member keeps the old ones
        self.estimators = estimators or {}
        self.choice: dict[str, Any] = {}  # the latest leader decision, with every family's numbers
        # challenger -> its paired tests against the leader on the tails since the leader changed
        self.record: dict[str, list[dict]] = record if record is not None else {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Versions pickled before the leader kept records or choices load with empty ones."""
        state.setdefault("choice", {})
        state.setdefault("record", {})
        state.setdefault("estimators", {})
        self.__dict__.update(state)

    def member_of(self, family: Any) -> Any:
        """The member that continues `family` (a ModelSpec), or None when it is new or its estimator,
        parameters or scaling changed under the same label (continuing it learned with the old ones
        under the new name)."""
        if settings_changed(self.estimators.get(family.label), family):
            return None
        return self.members.get(family.label)

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


def choose_leader(
    model: CandidateSet, spec: StreamSpec, metric: str, X: np.ndarray, y: np.ndarray, refit: bool = False
) -> LeaderChoice:
    """Score every family on rows none has learned; switch the leader only on evidence.

    The rows' paired outcomes join each challenger's record; a challenger leads when ahead by more
    than the margin with a significant test on these rows or pooled over its record. With `refit` (a
    drift retrain's set: every family just refit) the best family on these rows leads outright.
    Sets `model.leader`, `model.record` and `model.choice` and returns the decision.
    """
    from dagster_project.learning.prequential import evaluate

    previous = model.leader
    metrics: dict[str, dict[str, Any]] = {}
    for label, member in model.members.items():
        try:
            metrics[label] = spec_metrics(evaluate(member, spec, X, y).as_metadata())
        except ValueError:  # a windowed family not fitted yet cannot score
            metrics[label] = {}
    values = {label: m.get(metric) for label, m in metrics.items()}
    scored = {label: v for label, v in values.items() if v is not None}
    rows = len(y)
    if rows < spec.promotion.min_rows or previous not in scored or len(scored) < 2:
        reason = f"{previous} stays leader: " + (
            f"{rows} unseen rows < promotion.min_rows {spec.promotion.min_rows}"
            if rows < spec.promotion.min_rows
            else "not every family could be scored"
        )
        leader, test = previous, None
    elif refit:
        leader, test, reason = _refit_leader(model, spec, metric, X, y, scored)
    else:
        leader, test, reason = _held_lead(model, spec, metric, X, y, scored)
    numbers = ", ".join(f"{label} {v:.4f}" for label, v in sorted(scored.items()))
    reason += f" on {rows} unseen rows ({numbers})" if numbers else ""
    if leader != previous or refit:
        model.record = {}  # a new leader (or new fits) starts a new record
    model.leader = leader
    choice = LeaderChoice(leader, previous, metric, values, metrics, rows, test, reason)
    model.choice = choice.as_dict()
    return choice


def _paired(model: CandidateSet, spec: StreamSpec, metric: str, X, y, challenger: str, leader: str):
    from dagster_project.learning.prequential import row_outputs
    from dagster_project.registry.significance import paired_test

    return paired_test(
        metric, y, row_outputs(model.members[challenger], spec, X), row_outputs(model.members[leader], spec, X)
    )


def _held_lead(model: CandidateSet, spec: StreamSpec, metric: str, X, y, scored: dict[str, float]):
    """Add this tail to every challenger's record; a challenger leads when it passes the margin and
    the test on this tail alone (a change shows at once) or pooled over its record (a lead too small
    for one tail that holds); the one with the largest passing gain. Two looks a tail: each at the
    spec's level, so a tie switches on noise at most about twice as often as on the tail alone."""
    from dagster_project.registry.significance import PairedTest, combine

    leader = model.leader
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    margin, level = spec.promotion.margin, spec.promotion.significance
    # RMSE and MAE: a fraction of the leader's; never below float noise against the labels' scale
    allowed = max(margin_for(metric, margin, scored.get(leader)), noise_floor(metric, y))
    record = {k: list(v) for k, v in model.record.items()}
    looks: list[tuple[bool, float, str, PairedTest | None, int]] = []  # (passes, gain, challenger, test, tails)
    for label in scored:
        if label == leader:
            continue
        test = _paired(model, spec, metric, X, y, label, leader)
        entry = {"rows": len(y), "gain": sign * (scored[label] - scored[leader]), "test": test.to_dict()}
        tails = (record.get(label, []) + [entry])[-RECORD_TAILS:]
        record[label] = tails
        rows = sum(t["rows"] for t in tails)
        pooled = sum(t["gain"] * t["rows"] for t in tails) / rows
        looks.append((_passes(entry["gain"], test, allowed, level), entry["gain"], label, test, 1))
        if len(tails) > 1:
            combined = combine([PairedTest.from_dict(t["test"]) for t in tails])
            looks.append((_passes(pooled, combined, allowed, level), pooled, label, combined, len(tails)))
    model.record = record
    passes, gain, best, test, tails = max(looks, key=lambda look: (look[0], look[1]))
    evidence = f"{test.describe() if test else 'no test'} {'on this tail' if tails == 1 else f'over {tails} tails'}"
    stated = margin_text(metric, margin, scored.get(leader))
    if passes:
        return (
            best,
            _dict(test),
            f"{best} leads: {metric} better than {leader} by {difference_text(metric, gain)} > margin {stated} "
            f"({evidence})",
        )
    ahead = f"ahead by {difference_text(metric, gain)}"
    why = f"{ahead} <= margin {stated}" if gain <= allowed else f"{ahead} but not significant"
    return leader, _dict(test), f"{leader} stays leader: best challenger {best} {why} ({evidence})"


def _passes(gain: float, test, margin: float, level: float | None) -> bool:
    """Beyond the margin, and significant at `level` (the margin alone when off or not computable)."""
    return gain > margin and (not level or test is None or test.p_value is None or test.p_value < level)


def _dict(test) -> dict[str, Any] | None:
    return test.to_dict() if test is not None else None


def _refit_leader(model: CandidateSet, spec: StreamSpec, metric: str, X, y, scored: dict[str, float]):
    """Every family was just refit on one window: none has a record, so the best on these rows leads
    (ties keep the inherited leader); the test against the inherited leader is recorded, not required."""
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    inherited = model.leader
    best = max(scored, key=lambda label: (sign * scored[label], label == inherited))
    if best == inherited:
        return inherited, None, f"refit families: {inherited} stays leader, the best {metric}"
    test = _paired(model, spec, metric, X, y, best, inherited)
    gain = sign * (scored[best] - scored[inherited])
    reason = f"refit families: {best} leads, {metric} better than {inherited} by {gain:.4f} ({test.describe()})"
    return best, test.to_dict(), reason


def spec_metrics(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k != "rows"}
