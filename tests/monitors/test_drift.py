"""Data and prediction drift: PSI, KS and the per-feature report, on seeded synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dagster_project.spec import DriftSpec, StreamSpec
from monitors.drift import (
    DriftThresholds,
    feature_drift,
    ks_test,
    prediction_drift,
    psi,
    psi_from_counts,
    reference_bins,
)
from monitors.profiles import QUANTILES, SAMPLE_SIZE, bin_counts, profile_features, profile_labels

NAMES = ["a", "b", "c", "d", "flag"]


def _data(seed: int, rows: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = np.column_stack(
        [
            rng.normal(0.0, 1.0, rows),
            rng.normal(5.0, 2.0, rows),
            rng.exponential(1.0, rows),
            rng.integers(0, 5, rows).astype(float),
            (rng.random(rows) < 0.3).astype(float),
        ]
    )
    return X


@pytest.fixture(scope="module")
def reference() -> dict:
    return profile_features(_data(0), NAMES)


def test_profile_keeps_old_keys_and_adds_histogram_and_sample(reference: dict) -> None:
    a = reference["a"]
    assert {"count", "null_fraction", "mean", "std", "quantiles"} <= set(a)
    assert len(a["quantiles"]) == len(QUANTILES)
    assert len(a["histogram"]["counts"]) == len(a["histogram"]["edges"]) + 1 == 10
    assert sum(a["histogram"]["counts"]) == 2000
    assert len(a["sample"]) == SAMPLE_SIZE and a["sample"] == sorted(a["sample"])
    # boolean feature: edges are its own values, not interpolated deciles
    assert reference["flag"]["histogram"]["edges"] == [0.0, 1.0]
    assert reference["flag"]["histogram"]["counts"][2] == 0
    # deterministic and JSON-serializable (it goes into meta.json)
    assert json.dumps(profile_features(_data(0), NAMES)) == json.dumps(reference)


def test_profile_handles_nulls_and_empty_columns() -> None:
    X = np.array([[np.nan, 1.0], [np.nan, 2.0], [np.nan, np.nan]])
    profile = profile_features(X, ["empty", "some"])
    assert profile["empty"] == {"count": 3, "null_fraction": 1.0}
    assert profile["some"]["null_fraction"] == pytest.approx(1 / 3)
    assert profile["some"]["sample"] == [1.0, 2.0]


def test_regression_label_profile_keeps_its_keys() -> None:
    y = np.array([1.0, 2.0, np.nan, 4.0])
    label = profile_labels(y, "regression")
    assert label["count"] == 3 and label["mean"] == pytest.approx(7 / 3)
    assert "histogram" in label and "null_fraction" not in label
    assert profile_labels(np.array([0.0, 1.0, 1.0]), "classification") == {"counts": {"0": 1, "1": 2}}


def test_bin_counts_uses_open_outer_bins() -> None:
    counts = bin_counts([0.0, 1.0], np.array([-5.0, 0.0, 0.5, 1.0, 7.0, np.nan]))
    assert counts.tolist() == [2, 2, 1]


def test_psi_is_near_zero_on_the_same_distribution(reference: dict) -> None:
    values = [psi(reference["a"], _data(seed)[:, 0]) for seed in range(1, 11)]
    # sampling noise alone: about (bins - 1) * (1/2000 + 1/2000) = 0.009
    assert max(values) < 0.05


def test_psi_is_major_on_a_shifted_mean_and_monotone_in_the_shift(reference: dict) -> None:
    current = _data(1)[:, 0]
    shifts = [0.0, 0.25, 0.5, 1.0, 2.0]
    values = [psi(reference["a"], current + s) for s in shifts]
    assert values == sorted(values) and len(set(values)) == len(values)
    assert values[0] < 0.1
    assert values[3] > 0.25  # one standard deviation


def test_psi_stays_finite_when_all_values_leave_the_reference_range(reference: dict) -> None:
    value = psi(reference["a"], np.full(500, 100.0))
    assert np.isfinite(value) and value > 5
    assert psi_from_counts([1, 1], [1, 1]) == 0.0
    with pytest.raises(ValueError):
        psi_from_counts([1, 1], [1, 1, 1])


def test_psi_falls_back_to_quantiles_for_older_profiles(reference: dict) -> None:
    old = {k: v for k, v in reference["a"].items() if k not in ("histogram", "sample")}
    current = _data(1)[:, 0]
    assert psi(old, current) < 0.05
    assert psi(old, current + 1.0) == pytest.approx(psi(reference["a"], current + 1.0), rel=0.25)
    tied = {k: v for k, v in reference["flag"].items() if k not in ("histogram", "sample")}
    with pytest.raises(ValueError, match="tied"):
        reference_bins(tied)


def test_ks_p_values_are_not_small_under_no_drift_and_tiny_under_drift(reference: dict) -> None:
    p_values = [ks_test(reference["a"], _data(seed)[:, 0]).pvalue for seed in range(1, 21)]
    # uniform under the null: about 1 of 20 below 0.05 expected
    assert sum(p < 0.05 for p in p_values) <= 3
    shifted = ks_test(reference["a"], _data(1)[:, 0] + 0.5)
    assert shifted.pvalue < 1e-6 and shifted.statistic > 0.15
    assert shifted.reference_size == SAMPLE_SIZE and shifted.size == 2000
    # a plain sample works too; a profile without a sample is refused, not approximated
    assert ks_test(reference["a"]["sample"], _data(1)[:, 0]).pvalue > 0.001
    with pytest.raises(ValueError, match="no sample"):
        ks_test({"quantiles": reference["a"]["quantiles"]}, _data(1)[:, 0])


def test_feature_drift_flags_exactly_the_shifted_feature(reference: dict) -> None:
    for seed in range(1, 6):
        X = _data(seed, rows=1000)
        assert feature_drift(reference, X, NAMES).drifted_features == ()
        X[:, 1] += 2.0  # one standard deviation of feature b
        report = feature_drift(reference, X, NAMES, at=123.0)
        assert report.drifted_features == ("b",)
        b = report.feature("b")
        assert b.psi_level == "major" and b.psi == report.psi_max
        assert {rule.split(":")[0] for rule in b.rules} == {"psi", "ks"}
        assert any(f"{b.psi:.4f} >= 0.25" in rule for rule in b.rules)
        assert report.reasons()[0].startswith("b: psi: ")
        assert report.at == 123.0 and report.rows == 1000
    json.dumps(report.to_dict())


def test_feature_drift_on_boolean_and_null_changes(reference: dict) -> None:
    rng = np.random.default_rng(7)
    X = _data(7, rows=1000)
    X[:, 4] = (rng.random(1000) < 0.6).astype(float)  # flag rate 0.3 -> 0.6
    X[:300, 2] = np.nan  # 30 % nulls on c
    report = feature_drift(reference, X, NAMES)
    assert report.drifted_features == ("c", "flag")
    assert report.feature("c").rules == ("nulls: null fraction 0.300 vs reference 0.000, |delta| 0.300 >= 0.1",)


def test_feature_drift_does_not_judge_tiny_batches_and_checks_schema(reference: dict) -> None:
    X = _data(1, rows=20) + 10.0
    report = feature_drift(reference, X, NAMES)
    assert not report.drifted and report.psi_max is None
    assert "20 present values < min_rows 50" in report.feature("a").notes[0]
    with pytest.raises(KeyError, match="not in the reference"):
        feature_drift(reference, X[:, :2], ["a", "zzz"])
    with pytest.raises(ValueError, match="shape"):
        feature_drift(reference, X, NAMES[:2])


def test_thresholds_come_from_the_stream_spec() -> None:
    spec = StreamSpec(name="s", features=[{"name": "x"}], label={"classes": [0, 1]})
    assert spec.drift == DriftSpec()
    assert DriftThresholds.from_spec(spec.drift) == DriftThresholds()
    custom = DriftThresholds.from_spec(DriftSpec(psi_major=0.5, pvalue=0.01))
    assert custom.psi_major == 0.5 and custom.pvalue == 0.01
    with pytest.raises(ValueError):
        DriftSpec(psi_moderate=0.3, psi_major=0.2)


def test_prediction_drift_on_classes() -> None:
    rng = np.random.default_rng(3)
    reference = profile_labels((rng.random(2000) < 0.3).astype(float), "classification")
    same = prediction_drift(reference, (rng.random(1000) < 0.3).astype(float))
    assert same.kind == "classes" and not same.drifted and same.chi2_pvalue > 0.001
    shifted = prediction_drift(reference, (rng.random(1000) < 0.55).astype(float))
    assert shifted.drifted
    assert any(rule.startswith("prediction chi2: p-value") and ">= 0.1" in rule for rule in shifted.rules)
    assert shifted.proportions["1"] == pytest.approx(0.55, abs=0.05)
    # a class the reference never saw is counted, not a crash
    unseen = prediction_drift(reference, np.r_[np.zeros(500), np.full(500, 2.0)])
    assert unseen.drifted and unseen.reference_proportions["2"] == 0.0
    small = prediction_drift(reference, np.ones(10))
    assert not small.drifted and "min_rows" in small.notes[0]


def test_prediction_drift_on_values() -> None:
    rng = np.random.default_rng(4)
    reference = profile_labels(rng.normal(10.0, 2.0, 2000), "regression")
    assert not prediction_drift(reference, rng.normal(10.0, 2.0, 1000)).drifted
    shifted = prediction_drift(reference, rng.normal(13.0, 2.0, 1000))
    assert shifted.kind == "values" and shifted.drifted and shifted.psi > 0.25
    assert [r.split(":")[0] for r in shifted.rules] == ["prediction psi", "prediction ks"]
