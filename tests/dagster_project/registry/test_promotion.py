"""The promotion gate's rule: the margin as a table (test off), then margin and paired test."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from dagster_project.registry.promotion import default_metric, gate
from dagster_project.registry.significance import delong


@pytest.mark.parametrize(
    ("metric", "candidate", "champion", "rows", "promote", "says"),
    [
        ("roc_auc", 0.95, 0.94, 500, True, "promoted"),
        ("roc_auc", 0.935, 0.94, 500, True, "within margin"),
        ("roc_auc", 0.90, 0.94, 500, False, "worse by 0.0400"),
        ("rmse", 1.0, 1.005, 500, True, "promoted"),
        ("rmse", 1.2, 1.0, 500, False, "worse by 0.2000"),
        ("log_loss", 0.30, 0.25, 500, False, "worse by 0.0500"),
        ("roc_auc", 0.99, 0.50, 10, False, "deferred"),
        ("roc_auc", None, 0.94, 500, False, "not computable"),
    ],
)
def test_gate(metric, candidate, champion, rows, promote, says):
    cand = {} if candidate is None else {metric: candidate}
    result = gate(metric, 0.01, 50, "v3", cand, "v2", {metric: champion}, rows)
    assert result.promote is promote
    assert says in result.reason
    assert result.evidence()["candidate"] == "v3" and result.evidence()["champion"] == "v2"


def test_default_metric_follows_the_task():
    assert default_metric("classification", 2) == "roc_auc"
    assert default_metric("classification", 3) == "accuracy"
    assert default_metric("regression", 0) == "rmse"


def _weak_scores(seed: int, rows: int, candidate_signal: float):
    """Labels and two correlated scorers near chance: the champion's signal 0.3 (AUC about 0.58)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, rows)
    common = rng.normal(size=rows)
    return y, candidate_signal * y + common + rng.normal(size=rows), 0.3 * y + common + rng.normal(size=rows)


def _gate_on(y, candidate, champion, significance=0.05):
    test = delong(y == 1, candidate, champion)
    cand, champ = {"roc_auc": roc_auc_score(y, candidate)}, {"roc_auc": roc_auc_score(y, champion)}
    return gate("roc_auc", 0.01, 50, "v7", cand, "v6", champ, len(y), test=test, significance=significance)


def test_the_gate_refuses_a_noisy_difference_between_equally_weak_models():
    # Seed 59: equally good models, but the candidate looks 0.04 better on these 500 rows.
    y, champion, candidate = _weak_scores(59, 500, candidate_signal=0.3)  # swapped: the better-looking one
    result = _gate_on(y, candidate, champion)
    assert not result.promote
    assert result.reason == (
        f"kept v6 (v7 stays a candidate): v7 roc_auc 0.5906 vs v6 0.5503 on 500 unseen rows, "
        f"difference not significant (DeLong p={result.p_value:.3f} >= 0.05)"
    )
    assert result.evidence()["test"]["test"] == "DeLong" and result.evidence()["test"]["rows"] == 500
    assert _gate_on(y, candidate, champion, significance=None).promote, "the margin alone promotes this noise"


def test_the_gate_accepts_a_real_improvement_with_its_p_value():
    y, candidate, champion = _weak_scores(1, 250, candidate_signal=1.2)
    result = _gate_on(y, candidate, champion)
    assert result.promote and result.p_value < 0.001
    assert result.reason.startswith("v7 promoted: v7 roc_auc 0.")
    assert result.reason.endswith(f"on 250 unseen rows (DeLong p={result.p_value:.1e} < 0.05)")


def test_no_promotion_when_the_test_cannot_be_computed():
    y = np.ones(100, int)
    s = np.arange(100.0)
    result = gate("roc_auc", 0.01, 50, "v7", {"roc_auc": 0.9}, "v6", {"roc_auc": 0.8}, 100, delong(y == 1, s, s), 0.05)
    assert not result.promote and result.reason.endswith(
        "DeLong not computable: 100 positive and 0 negative rows: needs 2 of each; no action"
    )
    assert not gate("roc_auc", 0.01, 50, "v7", {"roc_auc": 0.9}, "v6", {"roc_auc": 0.8}, 100, None, 0.05).promote
