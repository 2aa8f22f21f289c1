"""The promotion gate's rule, as a table."""

from __future__ import annotations

import pytest

from dagster_project.registry.promotion import default_metric, gate


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
