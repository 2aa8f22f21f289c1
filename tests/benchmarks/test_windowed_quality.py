"""The windowed-quality benchmark: every configuration learns through the product's path."""

from __future__ import annotations

from benchmarks import windowed_quality


def test_windowed_boosting_beats_the_linear_default_and_a_drift_retrain_recovers() -> None:
    X, y = windowed_quality.agrawal(6_000, seed=3)
    change = 3_000
    results = {config: windowed_quality.run(config, X, y, batch=500) for config in ("sgd", "hgb", "hgb_drift", "gate")}
    summary = {config: windowed_quality.summary(r, change) for config, r in results.items()}
    assert summary["hgb"]["before"] > summary["sgd"]["before"] + 0.15, summary  # a rule-based concept
    assert results["hgb_drift"].retrains and results["hgb_drift"].retrains[0] > change  # detected after it
    assert summary["hgb_drift"]["after"] > summary["hgb"]["after"], summary  # a refit on post-change rows
    assert set(results["gate"].leaders) <= {"sgd", "hgb"} and "hgb" in results["gate"].leaders
    assert summary["gate"]["accuracy"] > summary["sgd"]["accuracy"], summary


def test_refit_cost_quick_reports_every_windowed_classifier_and_its_scoring_cost() -> None:
    rows = windowed_quality.refit_cost(seed=1, quick=True)
    names = {r["estimator"] for r in rows}
    assert "k_neighbors_classifier" in names and "hist_gradient_boosting_classifier" in names
    for r in rows:
        assert r["rows"] == 1_000 and r["onnx_bytes"] > 0 and r["fit_s"] > 0
        assert r["ort_us_per_row"] > 0 and r["ort_ms_per_1k"] > 0
    knn = next(r for r in rows if r["estimator"] == "k_neighbors_classifier")
    assert knn["onnx_bytes"] > 1_000 * len(windowed_quality.FEATURES) * 4  # the graph holds its window
