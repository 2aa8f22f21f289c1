"""ONNX export, onnxruntime inference, and the parity gate (including proof that it can fail)."""

from __future__ import annotations

import typing

import numpy as np
import pytest

from dagster_project.learning import prequential as training
from dagster_project.learning.estimator_table import CLASSIFIERS, ESTIMATORS
from dagster_project.learning.estimators import build_model
from dagster_project.onnx.export import (
    TARGET_OPSET,
    OnnxModel,
    ParityResult,
    check_parity,
    compare_outputs,
    export_onnx,
    sklearn_scores,
)
from dagster_project.spec import StreamSpec

ESTIMATOR_NAMES = tuple(ESTIMATORS)


def make_spec(estimator: str, classes: list[typing.Any] | None = None) -> StreamSpec:
    task = "classification" if estimator in CLASSIFIERS else "regression"
    return StreamSpec(
        name="onnx",
        task=task,
        features=[{"name": f"f{i}"} for i in range(4)],
        label={"classes": classes or [0, 1]} if task == "classification" else {},
        model={"estimator": estimator},
    )


def make_batch(task: str, rows: int, seed: int, n_classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if task == "classification":
        y = rng.integers(0, n_classes, rows)
        return rng.normal(size=(rows, 4)) + y[:, None] * np.array([1.0, -1.0, 0.5, 0.0]) + 10.0, y
    X = rng.normal(size=(rows, 4))
    return X * 5.0 + 100.0, X @ np.array([1.0, 2.0, -1.0, 0.5]) + 50.0


def train(spec: StreamSpec, batches: int, seed: int = 0, n_classes: int = 2):
    if spec.model.windowed:  # what a windowed model exports: a fresh fit on its window's rows
        parts = [make_batch(spec.task, 50, seed + i, n_classes) for i in range(batches)]
        return build_model(spec).fit(np.concatenate([X for X, _ in parts]), np.concatenate([y for _, y in parts]))
    model = None
    for i in range(batches):
        model, _, _ = training.test_then_train(model, spec, *make_batch(spec.task, 50, seed + i, n_classes))
    return model


@pytest.fixture(scope="module")
def sgd_model():
    return train(make_spec("sgd_classifier"), batches=5)


def test_export_is_valid_onnx_with_array_probabilities(sgd_model) -> None:
    import onnx

    proto = onnx.load_from_string(export_onnx(sgd_model, n_features=4))
    onnx.checker.check_model(proto)
    assert {o.domain: o.version for o in proto.opset_import}[""] <= TARGET_OPSET
    assert [o.name for o in proto.graph.output] == ["label", "probabilities"]  # no ZipMap


def test_export_rejects_unfitted_model() -> None:
    from dagster_project.learning.estimators import build_model

    with pytest.raises(ValueError, match="unfitted"):
        export_onnx(build_model(make_spec("sgd_classifier")), n_features=4)


def test_onnx_model_predicts_classifier(sgd_model) -> None:
    X, _ = make_batch("classification", 30, seed=99)
    onnx_model = OnnxModel(export_onnx(sgd_model, 4))
    assert onnx_model.is_classifier and onnx_model.n_features == 4
    prediction = onnx_model.predict(X)
    assert prediction.values is None and prediction.scores.shape == (30, 2)
    assert prediction.scores.dtype == np.float32
    np.testing.assert_allclose(prediction.scores, sgd_model.predict_proba(X), atol=1e-5)
    np.testing.assert_array_equal(prediction.labels, sgd_model.predict(X))
    single = onnx_model.predict(X[0])  # one 1-D row
    assert single.labels.shape == (1,)
    with pytest.raises(ValueError, match="features"):
        onnx_model.predict(X[:, :3])


def test_onnx_model_predicts_regressor() -> None:
    model = train(make_spec("sgd_regressor"), batches=3)
    X, _ = make_batch("regression", 30, seed=99)
    prediction = OnnxModel(export_onnx(model, 4), intra_op_threads=2).predict(X)
    assert prediction.scores is None and prediction.values.shape == (30,)
    np.testing.assert_allclose(prediction.values, model.predict(X), rtol=1e-5)
    np.testing.assert_array_equal(prediction.labels, prediction.values)


def test_hinge_onnx_scores_are_signed_decision_values() -> None:
    """skl2onnx emits [-d, d] as 'probabilities' for a binary hinge model; parity compares like with like."""
    model = train(make_spec("passive_aggressive"), batches=3)
    X, _ = make_batch("classification", 30, seed=99)
    scores = OnnxModel(export_onnx(model, 4)).predict(X).scores
    decision = model.decision_function(X)
    np.testing.assert_allclose(scores[:, 1], decision, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores[:, 0], -decision, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sklearn_scores(model, X), np.column_stack([-decision, decision]))


@pytest.mark.parametrize("estimator", sorted(CLASSIFIERS))
def test_parity_multiclass(estimator: str) -> None:
    model = train(make_spec(estimator, classes=["a", "b", "c"]), batches=4, n_classes=3)
    X, _ = make_batch("classification", 100, seed=99, n_classes=3)
    result = check_parity(model, export_onnx(model, 4), X, atol=1e-4, rtol=1e-4)
    assert result.passed, result.reason


@pytest.mark.parametrize("estimator", ESTIMATOR_NAMES)
def test_parity_fails_for_bytes_of_a_different_model(estimator: str) -> None:
    spec = make_spec(estimator)
    parent = train(spec, batches=3)
    child = train(spec, batches=8) if spec.model.windowed else parent  # a refit on a longer window
    for i in range(0 if spec.model.windowed else 5):  # the same lineage, trained further
        child, _, _ = training.test_then_train(child, spec, *make_batch(spec.task, 50, seed=100 + i))
    X, _ = make_batch(spec.task, 100, seed=99)
    parent_bytes = export_onnx(parent, 4)

    assert check_parity(parent, parent_bytes, X, atol=1e-4, rtol=1e-4).passed
    result = check_parity(child, parent_bytes, X, atol=1e-4, rtol=1e-4)
    assert not result.passed
    assert result.max_abs_diff > 1e-4 and result.reason
    assert result.rows == 100 and (result.atol, result.rtol) == (1e-4, 1e-4)


def test_parity_fails_on_no_rows(sgd_model) -> None:
    X, _ = make_batch("classification", 1, seed=0)
    result = check_parity(sgd_model, export_onnx(sgd_model, 4), X[:0], atol=1e-4, rtol=1e-4)
    assert not result.passed and result.rows == 0 and "no rows" in result.reason


def test_tolerance_is_atol_plus_rtol_times_sklearn() -> None:
    sk = np.array([[0.0, 100.0]])
    ok = compare_outputs(sk, sk + [[1e-4, 100.0 * 1e-4 + 1e-4]], None, None, atol=1e-4, rtol=1e-4)
    assert ok.passed, ok.reason
    bad = compare_outputs(sk, sk + [[2e-4, 0.0]], None, None, atol=1e-4, rtol=1e-4)
    assert not bad.passed and bad.max_abs_diff == pytest.approx(2e-4) and "atol" in bad.reason
    nan = compare_outputs(sk, np.array([[np.nan, 100.0]]), None, None, atol=1e-4, rtol=1e-4)
    assert not nan.passed


def test_label_flip_tolerated_only_at_the_decision_boundary() -> None:
    # Binary probabilities: row 0 sits 5e-5 from p=0.5, row 1 sits 0.2 away.
    sk = np.array([[0.49995, 0.50005], [0.3, 0.7]])
    labels = np.array([1, 1])
    near = compare_outputs(sk, sk, labels, np.array([0, 1]), atol=1e-4, rtol=1e-4)
    assert near.passed and near.label_mismatches == 1
    far = compare_outputs(sk, sk, labels, np.array([1, 0]), atol=1e-4, rtol=1e-4)
    assert not far.passed and far.label_mismatches == 1 and "decision boundary" in far.reason
    # Binary decision values [-d, d]: |d| is the distance to the boundary.
    decision = np.array([[-5e-5, 5e-5], [-2.0, 2.0]])
    assert compare_outputs(decision, decision, labels, np.array([0, 1]), 1e-4, 1e-4).passed
    assert not compare_outputs(decision, decision, labels, np.array([1, 0]), 1e-4, 1e-4).passed


def test_parity_result_is_frozen() -> None:
    result = ParityResult(True, 0.0, 0, 1, 1e-4, 1e-4)
    with pytest.raises(AttributeError):
        result.passed = False  # type: ignore[misc]


def test_parity_fails_on_a_shape_mismatch() -> None:
    result = compare_outputs(np.zeros(3), np.zeros(4), None, None, atol=1e-4, rtol=1e-4)
    assert not result.passed and "shape" in result.reason


def test_parity_fails_for_a_regressor_checked_against_classifier_bytes(sgd_model) -> None:
    regressor = train(make_spec("sgd_regressor"), batches=2)
    X, _ = make_batch("classification", 10, seed=0)
    result = check_parity(regressor, export_onnx(sgd_model, 4), X, atol=1e-4, rtol=1e-4)
    assert not result.passed and "classifier" in result.reason


def test_onnx_schemas_are_read_once_and_the_export_is_unchanged(sgd_model, monkeypatch) -> None:
    import onnx
    from skl2onnx.common import _container

    from dagster_project.onnx.export import read_onnx_schemas_once

    original = getattr(_container.get_all_schemas_with_history, "__wrapped__", None)
    original = original or _container.get_all_schemas_with_history
    calls: list[int] = []

    def counting():
        calls.append(1)
        return original()

    monkeypatch.setattr(_container, "get_all_schemas_with_history", counting)
    first = onnx.load_from_string(export_onnx(sgd_model, 4))
    read_onnx_schemas_once()  # already done by the export: a second call changes nothing
    second = onnx.load_from_string(export_onnx(sgd_model, 4))

    assert len(calls) == 1
    monkeypatch.setattr(_container, "get_all_schemas_with_history", original)  # skl2onnx as shipped
    plain = onnx.load_from_string(export_onnx(sgd_model, 4))
    for graph in (first.graph, second.graph, plain.graph):
        graph.name = ""  # skl2onnx names each graph with a fresh uuid
    assert first == second == plain


@pytest.mark.parametrize("estimator", ["k_neighbors_classifier", "k_neighbors_regressor"])
def test_knn_distances_use_onnxruntime_cdist_not_a_scan_over_rows(estimator: str) -> None:
    # skl2onnx's default loops over the query rows with Scan: ~5 ms to score one row against a
    # 5,000-row window, ~100x CDist's cost. The scorer would serve kNN that slowly.
    import onnx

    graph = onnx.load_from_string(export_onnx(train(make_spec(estimator), batches=4), n_features=4)).graph
    ops = {node.op_type for node in graph.node}
    assert "CDist" in ops and "Scan" not in ops, sorted(ops)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_a_few_rows_that_overflow_float32_are_set_apart_and_many_still_fail(task: str) -> None:
    """A value far beyond a feature's spread overflows the float32 model (NaN out) where scikit-learn,
    in float64, stays finite: a scorer refuses such a row, so it must not fail the batch's parity.
    An export that gives NaN on ordinary rows still fails."""
    spec = make_spec("sgd_classifier" if task == "classification" else "sgd_regressor")
    model = None
    for seed in range(5):  # features whose spread is 1e-3: 1e37, scaled, is past float32's 3.4e38
        X, y = make_batch(task, 50, seed)
        model, _, _ = training.test_then_train(model, spec, (X - X.mean(axis=0)) * 1e-3, y)
    onnx_bytes = export_onnx(model, 4)
    X, _ = make_batch(task, 100, seed=9)
    X = (X - X.mean(axis=0)) * 1e-3
    X[7] = [1e37, -1e37, 1e37, -1e37]

    result = check_parity(model, onnx_bytes, X, 1e-4, 1e-4)
    assert np.isfinite(sklearn_scores(model, X[7:8])).all(), "the premise: float64 stays finite"
    assert result.passed and result.unscorable == (7,) and result.rows == 99, result

    X[:20] = [1e37, -1e37, 1e37, -1e37]  # 20 % of the rows: not a stray value
    crowded = check_parity(model, onnx_bytes, X, 1e-4, 1e-4)
    assert not crowded.passed and crowded.unscorable == () and crowded.rows == 100


def test_an_export_that_gives_nan_on_a_few_ordinary_rows_fails_parity(sgd_model, monkeypatch) -> None:
    """Only rows holding a value of OVERFLOW_MAGNITUDE or more are set apart: a defect (a reused
    template, a converter bug) that gives NaN on 4 % of ordinary rows passed as "unscorable"."""
    from dagster_project.onnx import export

    onnx_bytes = export_onnx(sgd_model, 4)
    X, _ = make_batch("classification", 100, seed=9)
    assert check_parity(sgd_model, onnx_bytes, X, 1e-4, 1e-4).passed
    predict = export.OnnxModel.predict

    def defective(self, rows):
        prediction = predict(self, rows)
        prediction.scores[rows[:, 0] > np.quantile(rows[:, 0], 0.96)] = np.nan
        return prediction

    monkeypatch.setattr(export.OnnxModel, "predict", defective)
    result = check_parity(sgd_model, onnx_bytes, X, 1e-4, 1e-4)
    assert not result.passed and result.unscorable == () and "4/100 rows differ" in result.reason
