"""The drift sensor's decision table: each action, each suppression, and the reasons given."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from dagster_project.registry.significance import PairedTest, delong, mcnemar_counts, paired_bootstrap
from dagster_project.spec import DriftSpec
from monitors.decisions import ChampionComparison, Decision, DecisionConfig, LastAction, decide
from monitors.detectors import ChangeResult
from monitors.drift import DriftReport, feature_drift
from monitors.profiles import profile_features

NOW = 100_000.0
NAMES = ["x", "y"]
CONFIG = DecisionConfig(cooldown_s=600, hysteresis=3, regression_margin=0.02, rollback_window_s=3600)


@pytest.fixture(scope="module")
def reference() -> dict:
    return profile_features(np.random.default_rng(0).normal(size=(1000, 2)), NAMES)


def _report(reference: dict, drifted: bool, at: float, seed: int = 1) -> DriftReport:
    X = np.random.default_rng(seed).normal(size=(500, 2))
    if drifted:
        X[:, 1] += 1.5
    report = feature_drift(reference, X, NAMES, at=at)
    assert report.drifted == drifted
    return report


def _reports(reference: dict, pattern: str, end: float = NOW) -> list[DriftReport]:
    """One report per character, oldest first, 60 s apart: D drifted, . not."""
    n = len(pattern)
    return [_report(reference, c == "D", end - 60 * (n - 1 - i), seed=i) for i, c in enumerate(pattern)]


def _change(at: float | None = NOW - 30) -> ChangeResult:
    return ChangeResult(
        metric="error_rate",
        detector="adwin",
        params={"delta": 0.002},
        index=42,
        n=50,
        mean_before=0.101,
        value_at=0.312,
        at=at,
    )


def _mcnemar(champion_value: float, predecessor_value: float, rows: int) -> PairedTest:
    """The McNemar test behind such a comparison: 20 rows only the champion gets right, the rest
    of the accuracy gap in rows only the predecessor (test side A) gets right."""
    return mcnemar_counts(20 + round((predecessor_value - champion_value) * rows), 20, rows)


def _comparison(champion_value: float = 0.70, promoted_ago: float = 300, rows: int = 500) -> ChampionComparison:
    return ChampionComparison(
        champion="v7",
        predecessor="v6",
        metric="accuracy",
        champion_value=champion_value,
        predecessor_value=0.85,
        rows=rows,
        promoted_at=NOW - promoted_ago,
        test=_mcnemar(champion_value, 0.85, rows),
    )


def _decide(**kwargs) -> Decision:
    decision = decide(now=NOW, config=CONFIG, **kwargs)
    json.dumps(decision.to_dict())  # recorded as an event: must serialize
    return decision


def test_nothing_to_do(reference: dict) -> None:
    decision = _decide(drift_reports=_reports(reference, "...."))
    assert decision.action == "none" and decision.rollback_to is None
    assert decision.reasons == ["no drift, no change detected and no regression"]


def test_retrain_on_concept_drift() -> None:
    decision = _decide(changes=[_change()])
    assert decision.action == "retrain"
    assert decision.reasons == [
        "concept drift: error_rate: adwin(delta=0.002) detected an increase at index 42 of 50 "
        "(value 0.3120 vs mean 0.1010 before)"
    ]
    assert decision.evidence["concept_drift"][0]["index"] == 42


def test_retrain_on_data_drift_after_hysteresis(reference: dict) -> None:
    decision = _decide(drift_reports=_reports(reference, "..DDD"))
    assert decision.action == "retrain"
    assert decision.reasons[0].startswith(
        "data drift in 3 consecutive evaluations >= hysteresis 3: features ['y'] (y: psi: "
    )
    assert ">= 0.25" in decision.reasons[0]
    assert decision.evidence["data_drift"]["consecutive_drifted"] == 3


@pytest.mark.parametrize("pattern, consecutive", [("...DD", 2), ("DD.DD", 2), ("DDD.", 0), ("D", 1)])
def test_hysteresis_suppresses_unconfirmed_data_drift(reference: dict, pattern: str, consecutive: int) -> None:
    decision = _decide(drift_reports=_reports(reference, pattern))
    assert decision.action == "none"
    assert decision.evidence["data_drift"]["consecutive_drifted"] == consecutive
    if consecutive:
        assert decision.reasons[0].startswith(
            f"data drift not yet confirmed: {consecutive} consecutive drifted evaluation(s) < hysteresis 3 (y: psi: "
        )


def test_rollback_when_the_new_champion_regressed() -> None:
    decision = _decide(comparison=_comparison(champion_value=0.70))
    assert decision.action == "rollback" and decision.rollback_to == "v6"
    p = decision.evidence["rollback"]["p_value"]
    assert p == _mcnemar(0.70, 0.85, 500).p_value and p < 1e-10
    assert decision.reasons == [
        "regression: champion v7 accuracy 0.7000 vs predecessor v6 0.8500 on the same 500 rows "
        f"(higher is better), worse by 0.1500 > margin 0.02 (McNemar mid-p p={p:.1e} < 0.0304 at look 1 of 0.05 "
        "spent over looks)"
    ]
    assert decision.evidence["rollback"]["regression"] == pytest.approx(0.15)


def _near_chance_auc_pair(seed: int, rows: int, champion_signal: float):
    """Labels and two correlated weak scorers: the predecessor's signal 0.3 (AUC about 0.58)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, rows)
    common = rng.normal(size=rows)
    champion = champion_signal * y + common + rng.normal(size=rows)
    predecessor = 0.3 * y + common + rng.normal(size=rows)
    return y, champion, predecessor


def _auc_comparison(y, champion, predecessor) -> ChampionComparison:
    test = delong(y == 1, predecessor, champion)  # A: the predecessor, is it better?
    return ChampionComparison(
        "v7",
        "v6",
        "roc_auc",
        roc_auc_score(y, champion),
        roc_auc_score(y, predecessor),
        len(y),
        NOW - 300,
        test=test,
    )


def test_a_noise_level_regression_between_near_chance_models_is_no_rollback() -> None:
    # Equally good models (same signal), 500 rows: 0.5503 vs 0.5906 is noise, though past the margin.
    comparison = _auc_comparison(*_near_chance_auc_pair(59, 500, champion_signal=0.3))
    assert comparison.regression > CONFIG.regression_margin
    decision = _decide(comparison=comparison)
    assert decision.action == "none"
    p = comparison.test.p_value
    assert 0.05 <= p == decision.evidence["rollback"]["p_value"]
    assert decision.reasons[0] == (
        "kept v7: roc_auc 0.5503 vs predecessor v6 0.5906 on the same 500 rows (higher is better), "
        f"worse by 0.0402 > margin 0.02, difference not significant (DeLong p={p:.3f} >= 0.0304 at look 1 of 0.05 "
        "spent over looks)"
    )
    margin_only = decide(now=NOW, config=replace(CONFIG, significance=None), comparison=comparison)
    assert margin_only.action == "rollback", "the margin alone acts on this noise"


def test_a_real_regression_between_weak_models_is_rolled_back() -> None:
    comparison = _auc_comparison(*_near_chance_auc_pair(59, 2000, champion_signal=-0.2))
    decision = _decide(comparison=comparison)
    assert decision.action == "rollback" and decision.evidence["rollback"]["p_value"] < 0.001
    assert "(DeLong p=" in decision.reasons[0]


def test_no_rollback_when_the_test_cannot_be_computed() -> None:
    untested = replace(_comparison(), test=None)
    decision = _decide(comparison=untested)
    assert decision.action == "none"
    assert decision.reasons[0].endswith("but no paired test recorded; no action")
    one_class = replace(_comparison(), test=delong(np.ones(500, bool), np.arange(500), np.arange(500)))
    assert (
        _decide(comparison=one_class)
        .reasons[0]
        .endswith("but DeLong not computable: 500 positive and 0 negative rows: needs 2 of each; no action")
    )


def test_rollback_for_a_lower_is_better_metric() -> None:
    losses = np.random.default_rng(0).exponential(size=400)
    test = paired_bootstrap(losses, losses + 0.3, "mae")  # A, the predecessor, errs 0.3 less per row
    comparison = ChampionComparison("v7", "v6", "mae", 1.30, 1.00, 400, NOW - 10, higher_is_better=False, test=test)
    decision = _decide(comparison=comparison)
    assert (
        decision.action == "rollback"
        and "(lower is better), worse by 0.3 > margin 0.02 (2% of 1)" in decision.reasons[0]
    )


def test_a_regression_rollback_margin_is_a_fraction_of_the_predecessor_s_error() -> None:
    """On targets near 0.001 an absolute margin of 0.02 hid a champion with 5x its predecessor's MAE."""
    losses = np.random.default_rng(0).exponential(scale=0.001, size=400)
    test = paired_bootstrap(losses, losses * 5, "mae")
    comparison = ChampionComparison("v7", "v6", "mae", 0.005, 0.001, 400, NOW - 10, higher_is_better=False, test=test)
    decision = _decide(comparison=comparison)
    assert decision.action == "rollback" and "worse by 0.004 > margin 2e-05 (2% of 0.001)" in decision.reasons[0]


@pytest.mark.parametrize(
    "comparison, reason",
    [
        (_comparison(champion_value=0.84), "no regression: champion v7 accuracy 0.8400 vs predecessor v6 0.8500"),
        (_comparison(promoted_ago=7200), "rollback not considered: champion v7 was promoted 7200 s ago > rollback"),
        (_comparison(rows=50), "rollback not considered: champion v7 vs v6 compared on 50 rows < min_comparison_rows"),
    ],
)
def test_no_rollback_within_margin_when_old_or_on_few_rows(comparison: ChampionComparison, reason: str) -> None:
    decision = _decide(comparison=comparison)
    assert decision.action == "none"
    assert decision.reasons[0].startswith(reason)


def test_rollback_that_would_undo_the_last_rollback_is_suppressed() -> None:
    # v6 was rolled back from an hour ago; v7 (its predecessor in the alias history) is champion again
    last = LastAction("rollback", at=NOW - 3000, from_version="v6", to_version="v7")
    comparison = ChampionComparison(
        "v7", "v6", "accuracy", 0.70, 0.85, 500, promoted_at=NOW - 3000, test=_mcnemar(0.70, 0.85, 500)
    )
    decision = _decide(comparison=comparison, last_action=last)
    assert decision.action == "none"
    assert decision.reasons[0].startswith(
        "rollback suppressed (flapping): predecessor v6 is the version the rollback at 97000 moved away from"
    )


def test_rollback_comes_before_retrain(reference: dict) -> None:
    decision = _decide(comparison=_comparison(), changes=[_change()], drift_reports=_reports(reference, "DDD"))
    assert decision.action == "rollback"
    assert decision.reasons[-1] == "retrain deferred: rollback of the regressed champion comes first"
    assert any(r.startswith("concept drift: ") for r in decision.reasons)


@pytest.mark.parametrize("would_be", ["retrain", "rollback"])
def test_cooldown_suppresses_any_action(would_be: str) -> None:
    kwargs = {"changes": [_change()]} if would_be == "retrain" else {"comparison": _comparison()}
    last = LastAction("retrain", at=NOW - 120)
    decision = _decide(last_action=last, **kwargs)
    assert decision.action == "none" and decision.rollback_to is None
    assert (
        decision.reasons[0] == f"{would_be} suppressed by cooldown: last action retrain was 120 s ago < cooldown 600 s"
    )
    assert decision.evidence["suppressed"] == would_be
    assert decision.evidence["cooldown_remaining_s"] == pytest.approx(480)
    # the same evidence after the cooldown acts
    assert _decide(last_action=LastAction("retrain", at=NOW - 601), **kwargs).action == would_be


def test_evidence_from_before_the_last_action_is_ignored(reference: dict) -> None:
    last = LastAction("retrain", at=NOW - 1000)
    stale_change = _change(at=NOW - 1500)
    reports = _reports(reference, "DDDDD", end=NOW - 1100) + _reports(reference, "DD", end=NOW)
    decision = _decide(changes=[stale_change], drift_reports=reports, last_action=last)
    assert decision.action == "none"
    assert "ignored 1 change detection(s) from before the last action" in decision.reasons
    assert "ignored 5 drift evaluation(s) from before the last action" in decision.reasons
    assert decision.evidence["data_drift"]["consecutive_drifted"] == 2


def test_config_comes_from_the_stream_spec() -> None:
    assert DecisionConfig.from_spec(DriftSpec()) == DecisionConfig()
    assert DecisionConfig.from_spec(DriftSpec(cooldown_s=60, hysteresis=1)).hysteresis == 1
    with pytest.raises(ValueError):
        DecisionConfig(hysteresis=0)


def test_repeated_looks_at_the_same_two_models_spend_the_significance_level() -> None:
    """The sensor re-tests a champion after every batch; each look is held to a smaller share of
    `significance`, so the same p-value that rolls back at the first look does not at the tenth,
    while a clear regression still does."""
    borderline = replace(_comparison(), test=replace(_comparison().test, p_value=0.02))
    assert _decide(comparison=borderline).action == "rollback"
    tenth = _decide(comparison=replace(borderline, looks=10))
    assert tenth.action == "none"
    assert "p=0.020 >= 0.000304 at look 10 of 0.05 spent over looks" in tenth.reasons[0]
    assert _decide(comparison=replace(_comparison(), looks=10)).action == "rollback", "p=2e-13 is no noise"


def test_noise_rolls_back_at_most_significance_over_a_whole_window_of_looks() -> None:
    """Equal models, re-tested on accumulating rows for 20 looks: the share of windows with any
    rollback stays near the level (testing every look at 0.05 would act far more often)."""
    rng = np.random.default_rng(5)
    spent = unspent = 0
    windows = 400
    for _ in range(windows):
        a_only = b_only = 0
        acted_spent = acted_unspent = False
        for look in range(1, 21):  # 250 rows per check; each row is discordant with probability 0.1
            discordant = rng.binomial(250, 0.1)
            a = rng.binomial(discordant, 0.5)
            a_only, b_only = a_only + a, b_only + discordant - a
            comparison = replace(
                _comparison(champion_value=0.80),
                rows=250 * look,
                test=mcnemar_counts(a_only, b_only, 250 * look),
                looks=look,
            )
            acted_spent |= _decide(comparison=comparison).action == "rollback"
            unspent_config = replace(CONFIG, significance=0.05)
            acted_unspent |= comparison.test.p_value < unspent_config.significance
        spent += acted_spent
        unspent += acted_unspent
    assert spent / windows <= 0.06, spent / windows
    assert unspent / windows >= 2 * spent / windows, (unspent, spent)
