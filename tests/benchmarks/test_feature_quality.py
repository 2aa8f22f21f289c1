"""The feature-quality benchmark learns each stream through the product's path, with and without its new features."""

from __future__ import annotations

from benchmarks import feature_quality


def test_each_stream_learns_better_with_the_features_its_ground_truth_needs() -> None:
    result = feature_quality.run(quick=True)
    for stream in ("census", "sensors"):
        r = result[stream]
        assert r["streamfit"] > r["streamfit_without"] + 0.05, r  # the generators' labels depend on them
        assert r["streamfit"] > r["majority_rate"], r
        assert 0.5 < r["river_onehot_logreg"] <= 1.0, r
    assert len(feature_quality.table(result)) == 3
