"""The drift sensor's decision: retrain, roll back, or do nothing, with its reasons.

Pure logic: no clock, no I/O. The sensor gathers the evidence (drift reports of recent batches
against the champion's reference profile, change detections on the prequential metric series,
champion vs predecessor on the same recent rows, the last action) and records the returned
`Decision` with its reasons and evidence.

Rules, in order:

1. **Rollback** when the champion was promoted within ``rollback_window_s``, has been compared with
   its predecessor on at least ``min_comparison_rows`` of the same recent rows, is worse by more
   than ``regression_margin`` (in the metric's units; for RMSE and MAE a fraction of the predecessor's
   error, `registry.promotion.margin_for`) and, unless ``significance`` is
   None or 0, a one-sided paired test on those rows (`dagster_project.registry.significance`) shows
   it worse at that level: a noise-sized difference between two weak models is no regression. The
   sensor re-tests the champion's accumulated checks after each batch, so the k-th look is tested
   at ``significance * 6 / (pi^2 k^2)`` (`significance.spent_level`): the chance that noise rolls a
   champion back at any look of its window stays below ``significance``. No action when the test
   could not be computed. Never when the predecessor is the version the last
   rollback moved away from (that would undo it: flapping).
2. **Retrain** on concept drift (any change detection) or on data drift seen in at least
   ``hysteresis`` consecutive evaluations (the most recent ones). Rollback wins over retrain: a
   regressed champion is fixed first, and retraining can follow after the cooldown.
3. **Cooldown**: no action within ``cooldown_s`` of the last action; the would-be action and the
   cooldown are stated in the reasons.
4. Evidence from before the last action (drift reports and detections whose ``at`` is not after
   it) is ignored: the action already answered it, so it can't trigger a second action later.
   Evidence without a time is taken as current; the sensor should then only pass evidence gathered
   since the last action.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from dagster_project.registry.promotion import difference_text, margin_for, margin_text
from dagster_project.registry.significance import PairedTest, significant, spent_level
from monitors.detectors import ChangeResult
from monitors.drift import DriftReport

Action = Literal["none", "retrain", "rollback"]


@dataclass(frozen=True)
class DecisionConfig:
    """The self-healing policy of one stream (`dagster_project.spec.DriftSpec` holds it)."""

    cooldown_s: float = 900.0
    hysteresis: int = 3
    regression_margin: float = 0.02
    rollback_window_s: float = 3600.0
    min_comparison_rows: int = 200
    significance: float | None = 0.05  # the paired test's level (promotion.significance); None/0: off

    def __post_init__(self) -> None:
        if self.cooldown_s < 0 or self.rollback_window_s < 0 or self.regression_margin < 0:
            raise ValueError("cooldown_s, rollback_window_s and regression_margin must be >= 0")
        if self.significance is not None and not 0 <= self.significance < 1:
            raise ValueError(f"significance must be in [0, 1) or None (test off), got {self.significance}")
        if self.hysteresis < 1 or self.min_comparison_rows < 1:
            raise ValueError("hysteresis and min_comparison_rows must be >= 1")

    @classmethod
    def from_spec(cls, drift_spec: Any, significance: float | None = 0.05) -> DecisionConfig:
        """From a `dagster_project.spec.DriftSpec` (or anything with the same attributes) and the
        stream's ``promotion.significance``: promotion and rollback use one level."""
        return cls(
            cooldown_s=drift_spec.cooldown_s,
            hysteresis=drift_spec.hysteresis,
            regression_margin=drift_spec.regression_margin,
            rollback_window_s=drift_spec.rollback_window_s,
            min_comparison_rows=drift_spec.min_comparison_rows,
            significance=significance,
        )


@dataclass(frozen=True)
class LastAction:
    """The last retrain or rollback of the stream (epoch seconds; versions for rollbacks)."""

    action: Literal["retrain", "rollback"]
    at: float
    from_version: str | None = None
    to_version: str | None = None


@dataclass(frozen=True)
class ChampionComparison:
    """The champion and its predecessor scored on the same recent rows."""

    champion: str
    predecessor: str
    metric: str
    champion_value: float
    predecessor_value: float
    rows: int
    promoted_at: float  # when the champion became champion (epoch seconds)
    higher_is_better: bool = True
    test: PairedTest | None = None  # one-sided: the predecessor (A) is better than the champion (B)
    looks: int = 1  # champion checks accumulated in `test`: this is the k-th test of the same two models

    @property
    def regression(self) -> float:
        """How much worse the champion is than its predecessor (negative: better), in metric units."""
        if self.higher_is_better:
            return self.predecessor_value - self.champion_value
        return self.champion_value - self.predecessor_value


@dataclass(frozen=True)
class Decision:
    action: Action
    reasons: list[str]
    evidence: dict[str, Any] = field(default_factory=dict)
    rollback_to: str | None = None  # the version to make champion when action == "rollback"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fresh(at: float | None, last_action: LastAction | None) -> bool:
    return last_action is None or at is None or at > last_action.at


def _rollback(
    now: float, comparison: ChampionComparison | None, last_action: LastAction | None, config: DecisionConfig
) -> tuple[bool, list[str], dict[str, Any]]:
    if comparison is None:
        return False, [], {"considered": False, "why": "no predecessor comparison"}
    c = comparison
    evidence: dict[str, Any] = {"considered": True, **asdict(c), "regression": c.regression}
    evidence["margin"] = config.regression_margin
    evidence["margin_allowed"] = margin_for(c.metric, config.regression_margin, c.predecessor_value)
    evidence["significance"] = config.significance
    evidence["p_value"] = c.test.p_value if c.test else None
    age = now - c.promoted_at
    if age > config.rollback_window_s:
        why = (
            f"rollback not considered: champion {c.champion} was promoted {age:.0f} s ago "
            f"> rollback window {config.rollback_window_s:.0f} s"
        )
        return False, [why], evidence
    if c.rows < config.min_comparison_rows:
        why = (
            f"rollback not considered: champion {c.champion} vs {c.predecessor} compared on {c.rows} rows "
            f"< min_comparison_rows {config.min_comparison_rows}"
        )
        return False, [why], evidence
    direction = "higher" if c.higher_is_better else "lower"
    numbers = (
        f"{c.metric} {difference_text(c.metric, c.champion_value)} vs predecessor {c.predecessor} "
        f"{difference_text(c.metric, c.predecessor_value)} "
        f"on the same {c.rows} rows ({direction} is better)"
    )
    allowed = margin_for(c.metric, config.regression_margin, c.predecessor_value)  # RMSE, MAE: relative
    stated = margin_text(c.metric, config.regression_margin, c.predecessor_value)
    if c.regression <= allowed:
        return (
            False,
            [
                f"no regression: champion {c.champion} {numbers}, worse by "
                f"{difference_text(c.metric, c.regression)} <= margin {stated}"
            ],
            evidence,
        )
    worse = f"worse by {difference_text(c.metric, c.regression)} > margin {stated}"
    if config.significance and (c.test is None or c.test.p_value is None):
        why = c.test.describe() if c.test is not None else "no paired test recorded"
        return False, [f"kept {c.champion}: {numbers}, {worse}, but {why}; no action"], evidence
    level = spent_level(config.significance, max(1, c.looks))
    spent = f" at look {max(1, c.looks)} of {config.significance:g} spent over looks" if config.significance else ""
    if not significant(c.test, level):
        return (
            False,
            [
                f"kept {c.champion}: {numbers}, {worse}, difference not significant "
                f"({c.test.describe()} >= {level:.3g}{spent})"
            ],
            evidence,
        )
    tested = f" ({c.test.describe()} < {level:.3g}{spent})" if config.significance and c.test else ""
    reason = f"regression: champion {c.champion} {numbers}, {worse}{tested}"
    if last_action is not None and last_action.action == "rollback" and last_action.from_version == c.predecessor:
        why = (
            f"rollback suppressed (flapping): predecessor {c.predecessor} is the version the rollback at "
            f"{last_action.at:.0f} moved away from; {reason}"
        )
        return False, [why], evidence
    return True, [reason], evidence


def _retrain(
    drift_reports: Sequence[DriftReport],
    changes: Sequence[ChangeResult],
    last_action: LastAction | None,
    config: DecisionConfig,
) -> tuple[bool, list[str], dict[str, Any]]:
    reasons: list[str] = []
    fresh_changes = [c for c in changes if _fresh(c.at, last_action)]
    stale_changes = len(changes) - len(fresh_changes)
    for c in fresh_changes:
        reasons.append(f"concept drift: {c.describe()}")
    if stale_changes:
        reasons.append(f"ignored {stale_changes} change detection(s) from before the last action")

    reports = [r for r in drift_reports if _fresh(r.at, last_action)]
    stale_reports = len(drift_reports) - len(reports)
    consecutive = 0
    for report in reversed(reports):
        if not report.drifted:
            break
        consecutive += 1
    data_drift = consecutive >= config.hysteresis
    if reports and reports[-1].drifted:
        latest = reports[-1]
        detail = "; ".join(latest.reasons())
        if data_drift:
            reasons.append(
                f"data drift in {consecutive} consecutive evaluations >= hysteresis {config.hysteresis}: "
                f"features {list(latest.drifted_features)} ({detail})"
            )
        else:
            reasons.append(
                f"data drift not yet confirmed: {consecutive} consecutive drifted evaluation(s) "
                f"< hysteresis {config.hysteresis} ({detail})"
            )
    if stale_reports:
        reasons.append(f"ignored {stale_reports} drift evaluation(s) from before the last action")
    evidence = {
        "concept_drift": [c.to_dict() for c in fresh_changes],
        "ignored_changes": stale_changes,
        "data_drift": {
            "evaluations": len(reports),
            "ignored_evaluations": stale_reports,
            "consecutive_drifted": consecutive,
            "hysteresis": config.hysteresis,
            "latest_drifted_features": list(reports[-1].drifted_features) if reports else [],
            "latest_psi_max": reports[-1].psi_max if reports else None,
        },
    }
    return bool(fresh_changes) or data_drift, reasons, evidence


def decide(
    *,
    now: float,
    drift_reports: Sequence[DriftReport] = (),
    changes: Sequence[ChangeResult] = (),
    comparison: ChampionComparison | None = None,
    last_action: LastAction | None = None,
    config: DecisionConfig | None = None,
) -> Decision:
    """Retrain, roll back or nothing, from the evidence (see the module docstring for the rules).

    `drift_reports` are the recent evaluations in time order (oldest first); `changes` the change
    detections on the prequential metric series; `comparison` the champion against its predecessor.
    """
    config = config or DecisionConfig()
    roll, roll_reasons, roll_evidence = _rollback(now, comparison, last_action, config)
    retrain, retrain_reasons, retrain_evidence = _retrain(drift_reports, changes, last_action, config)
    action: Action = "rollback" if roll else "retrain" if retrain else "none"
    reasons = roll_reasons + retrain_reasons
    if roll and retrain:
        reasons.append("retrain deferred: rollback of the regressed champion comes first")
    evidence: dict[str, Any] = {
        "now": now,
        "config": asdict(config),
        "last_action": asdict(last_action) if last_action else None,
        "rollback": roll_evidence,
        **retrain_evidence,
    }
    if action != "none" and last_action is not None:
        elapsed = now - last_action.at
        if elapsed < config.cooldown_s:
            evidence["suppressed"] = action
            evidence["cooldown_remaining_s"] = config.cooldown_s - elapsed
            reasons.insert(
                0,
                f"{action} suppressed by cooldown: last action {last_action.action} was {elapsed:.0f} s ago "
                f"< cooldown {config.cooldown_s:.0f} s",
            )
            return Decision("none", reasons, evidence)
    if action == "none" and not reasons:
        reasons.append("no drift, no change detected and no regression")
    rollback_to = comparison.predecessor if action == "rollback" and comparison else None
    return Decision(action, reasons, evidence, rollback_to)
