"""Parity at every label scale: a regressor's atol is a fraction of its outputs' root mean square."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from dagster_project.learning.estimator_table import CLASSIFIERS, ESTIMATORS, entry
from dagster_project.learning.estimators import build_model, partial_fit
from dagster_project.onnx import export
from dagster_project.onnx.export import OnnxModel, check_parity, compare_outputs, export_onnx, sklearn_scores
from dagster_project.onnx.tolerance import SMALLEST_SCALE, output_scale
from dagster_project.spec import StreamSpec

REGRESSORS = tuple(e for e in ESTIMATORS if e not in CLASSIFIERS)
ATOL = RTOL = 1e-4  # the spec's defaults
WEIGHTS = np.array([1.0, 2.0, -1.0, 0.5])


def _fitted(estimator: str, scale: float, seed: int = 0):
    """`estimator`'s pipeline fit on a linear concept whose labels are about `scale`, with its rows."""
    spec = StreamSpec(
        name="tol", task="regression", features=[{"name": f"f{i}"} for i in range(4)], model={"estimator": estimator}
    )
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(500, 4))
    y = (X @ WEIGHTS + rng.normal(0.0, 0.1, 500)) * scale
    model = build_model(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if entry(estimator).windowed:
            model.fit(X, y)
        else:
            for _ in range(3):
                model = partial_fit(model, X, y, None)
    return model, X


@pytest.mark.parametrize("scale", [1e-9, 1.0, 1e9])
@pytest.mark.parametrize("estimator", REGRESSORS)
def test_every_regressor_s_honest_export_passes_parity_at_every_label_scale(estimator: str, scale: float) -> None:
    model, X = _fitted(estimator, scale)
    result = check_parity(model, export_onnx(model, 4), X, ATOL, RTOL)
    assert result.passed, result.reason
    assert result.scale == pytest.approx(float(np.sqrt(np.mean(sklearn_scores(model, X) ** 2))))


@pytest.mark.parametrize("wrong", ["doubled", "zeros"])
def test_a_wrong_onnx_output_fails_parity_on_labels_around_1e_9(monkeypatch, wrong: str) -> None:
    """With an absolute atol of 1e-4 every output within 1e-4 of scikit-learn's passed: on labels
    around 1e-9 a graph serving twice the prediction, or zeros, was registered."""
    model, X = _fitted("sgd_regressor", 1e-9)
    onnx_bytes = export_onnx(model, 4)
    predict = OnnxModel.predict

    def defective(self, rows):
        prediction = predict(self, rows)
        values = prediction.values * 2.0 if wrong == "doubled" else np.zeros_like(prediction.values)
        return export.Prediction(labels=values, values=values)

    monkeypatch.setattr(export.OnnxModel, "predict", defective)
    result = check_parity(model, onnx_bytes, X, ATOL, RTOL)

    assert not result.passed and result.max_abs_diff < 1e-7  # far inside the old absolute 1e-4
    assert result.scale == pytest.approx(output_scale(sklearn_scores(model, X)))
    assert f"rows differ beyond atol=0.0001*{result.scale:.3g}" in result.reason, result.reason
    assert "root mean square of scikit-learn's outputs" in result.reason
    assert "Fix: if the export is at fault, choose another estimator" in result.reason
    assert "produce the labels in other units" in result.reason and "raise parity.atol" in result.reason


def test_the_same_defect_on_unit_labels_is_judged_as_before() -> None:
    """At unit scale the tolerance is the absolute one it was: no existing stream changes."""
    sk = np.array([1.0, -1.0, 1.0, -1.0])  # root mean square exactly 1
    assert output_scale(sk) == 1.0
    for offset, passes in ((1.9e-4, True), (2.1e-4, False)):  # the bound is 1e-4 + 1e-4 * |1|
        onnx_out = sk + np.array([offset, 0.0, 0.0, 0.0])
        before = compare_outputs(sk, onnx_out, None, None, ATOL, RTOL)
        now = compare_outputs(sk, onnx_out, None, None, ATOL, RTOL, output_scale(sk))
        assert before.passed is now.passed is passes


def test_honest_float32_rounding_passes_on_labels_around_1e9() -> None:
    """Rows whose output is near zero among labels of 1e9: float32 rounds the terms that cancel there
    by about 1e9 * 6e-8, which the absolute 1e-4 (+ 1e-4 of an output near zero) refused."""
    model, X = _fitted("sgd_regressor", 1e9)
    scaler, estimator = model.steps[0][1], model.steps[-1][1]
    slope = estimator.coef_[0] / scaler.scale_[0]  # the output's change per unit of f0
    near_zero = X[:50].copy()
    near_zero[:, 0] -= model.predict(near_zero) / slope  # each row's output moved to about zero
    rows = np.vstack([X, near_zero])
    onnx_bytes = export_onnx(model, 4)
    sk = sklearn_scores(model, rows)
    assert np.max(np.abs(sk[-50:])) < 1e-3 * output_scale(sk)

    absolute = compare_outputs(sk, OnnxModel(onnx_bytes).predict(rows).values, None, None, ATOL, RTOL)
    assert not absolute.passed  # what the absolute atol said of an honest export
    result = check_parity(model, onnx_bytes, rows, ATOL, RTOL)
    assert result.passed, result.reason
    assert 1e8 < result.scale < 1e10 and result.max_abs_diff > 1.0


def test_the_scale_ignores_non_finite_outputs_and_never_reaches_zero() -> None:
    assert output_scale(np.zeros(5)) == SMALLEST_SCALE  # an all-zero model must be matched exactly
    assert output_scale(np.array([np.nan, np.inf])) == SMALLEST_SCALE
    assert output_scale(np.array([3.0, np.nan, -4.0])) == pytest.approx(np.sqrt(12.5))
    assert output_scale(np.array([1e200, -1e200])) == pytest.approx(1e200)  # squares would overflow


def test_classifiers_keep_an_absolute_tolerance() -> None:
    """Probabilities and decision scores have no label units: scale 1, as before."""
    features = [{"name": f"f{i}"} for i in range(4)]
    spec = StreamSpec(name="tol", task="classification", features=features, label={"classes": [0, 1]})
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    model = partial_fit(build_model(spec), X, (X @ WEIGHTS > 0).astype(int), np.array([0, 1]))
    result = check_parity(model, export_onnx(model, 4), X, ATOL, RTOL)
    assert result.passed and result.scale == 1.0


def test_one_extreme_output_does_not_let_every_other_row_pass() -> None:
    """One row predicted at 1e6 among 499 unit-scale rows made the root mean square 4.5e4, so atol of
    it (4.5) passed an ONNX graph off by 3 on every other row (an intercept dropped), which the absolute
    1e-4 refused. The scale is capped by the outputs' typical (median) magnitude."""
    rng = np.random.default_rng(0)
    sk = rng.normal(size=500)
    sk[0] = 1e6
    onnx_out = sk + 3.0
    onnx_out[0] = sk[0]
    result = compare_outputs(sk, onnx_out, None, None, ATOL, RTOL, output_scale(sk))
    assert not result.passed, result.scale
    honest = compare_outputs(sk, sk.astype(np.float32).astype(np.float64), None, None, ATOL, RTOL, output_scale(sk))
    assert honest.passed, honest.reason
