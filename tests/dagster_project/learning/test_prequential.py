"""Prequential test-then-train: metrics semantics, immutability, and quality on a real stream."""

from __future__ import annotations

import typing

import numpy as np
import pytest
from river import datasets, linear_model, preprocessing
from sklearn.metrics import accuracy_score, roc_auc_score

from dagster_project.learning import prequential as training
from dagster_project.learning.estimator_table import CLASSIFIERS
from dagster_project.spec import StreamSpec


def make_spec(estimator: str = "sgd_classifier", **model: typing.Any) -> StreamSpec:
    task = "classification" if estimator in CLASSIFIERS else "regression"
    return StreamSpec(
        name="training",
        task=task,
        features=[{"name": f"f{i}"} for i in range(4)],
        label={"classes": [0, 1]} if task == "classification" else {},
        model={"estimator": estimator, **model},
    )


def make_batch(task: str, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 4))
    if task == "classification":
        return X, (X @ np.array([2.0, -1.0, 1.0, 0.0]) + 0.3 * rng.normal(size=rows) > 0).astype(int)
    return X, 1.0 + X @ np.array([2.0, -1.0, 1.0, 0.0]) + 0.1 * rng.normal(size=rows)


def test_first_batch_builds_model_without_metrics() -> None:
    X, y = make_batch("classification", 40, seed=0)
    model, metrics, scores = training.test_then_train(None, make_spec(), X, y)
    assert scores is None
    assert metrics == training.BatchMetrics(rows=40)
    assert metrics.as_metadata() == {"rows": 40}
    assert model.predict(X).shape == (40,)


def test_classification_metrics_and_scores() -> None:
    spec = make_spec()
    model, _, _ = training.test_then_train(None, spec, *make_batch("classification", 200, seed=0))
    X, y = make_batch("classification", 100, seed=1)
    new_model, metrics, scores = training.test_then_train(model, spec, X, y)
    assert scores is not None and scores.shape == (100,)
    np.testing.assert_allclose(scores, model.predict_proba(X)[:, 1])  # scored by the PRE-fit model
    assert metrics.rows == 100 and metrics.mae is None and metrics.rmse is None
    assert 0.5 < metrics.accuracy <= 1.0 and 0.5 < metrics.roc_auc <= 1.0 and metrics.log_loss > 0
    assert set(metrics.as_metadata()) == {"rows", "accuracy", "roc_auc", "log_loss"}
    assert all(isinstance(v, int | float) for v in metrics.as_metadata().values())
    assert new_model is not model


@pytest.mark.parametrize("labels", ["float", "int"])  # the parser hands float class indices over
def test_batch_metrics_are_sklearns(labels: str) -> None:
    spec = make_spec()
    model, _, _ = training.test_then_train(None, spec, *make_batch("classification", 200, seed=0))
    X, y = make_batch("classification", 300, seed=2)
    y = y.astype(np.float64 if labels == "float" else np.int64)
    metrics = training.evaluate(model, spec, X, y)
    assert metrics.accuracy == accuracy_score(y, model.predict(X))
    assert metrics.roc_auc == pytest.approx(roc_auc_score(y, model.predict_proba(X)[:, 1]), abs=1e-12)
    assert training.evaluate(model, spec, X[y == 0], y[y == 0]).roc_auc is None  # one class: no AUC


def test_input_model_is_not_mutated() -> None:
    spec = make_spec()
    model, _, _ = training.test_then_train(None, spec, *make_batch("classification", 50, seed=0))
    coef = model.named_steps["estimator"].coef_.copy()
    seen = model.named_steps["scaler"].n_samples_seen_
    new_model, _, _ = training.test_then_train(model, spec, *make_batch("classification", 50, seed=1))
    np.testing.assert_array_equal(model.named_steps["estimator"].coef_, coef)
    assert model.named_steps["scaler"].n_samples_seen_ == seen
    assert new_model.named_steps["scaler"].n_samples_seen_ == seen + 50
    assert not np.array_equal(new_model.named_steps["estimator"].coef_, coef)


def test_single_class_batch_has_no_roc_auc() -> None:
    spec = make_spec()
    model, _, _ = training.test_then_train(None, spec, *make_batch("classification", 100, seed=0))
    X, y = make_batch("classification", 100, seed=1)
    _, metrics, _ = training.test_then_train(model, spec, X[y == 1], y[y == 1])
    assert metrics.roc_auc is None and metrics.accuracy is not None and metrics.log_loss is not None
    assert "roc_auc" not in metrics.as_metadata()


def test_hinge_uses_decision_function() -> None:
    spec = make_spec("passive_aggressive")
    model, _, _ = training.test_then_train(None, spec, *make_batch("classification", 100, seed=0))
    X, y = make_batch("classification", 100, seed=1)
    _, metrics, scores = training.test_then_train(model, spec, X, y)
    np.testing.assert_allclose(scores, model.decision_function(X))
    assert metrics.log_loss is None
    assert metrics.roc_auc == pytest.approx(roc_auc_score(y, model.decision_function(X)))
    assert metrics.roc_auc > 0.8


def test_regression_metrics() -> None:
    spec = make_spec("sgd_regressor")
    model, _, _ = training.test_then_train(None, spec, *make_batch("regression", 200, seed=0))
    X, y = make_batch("regression", 100, seed=1)
    _, metrics, scores = training.test_then_train(model, spec, X, y)
    np.testing.assert_allclose(scores, model.predict(X))
    assert metrics.mae == pytest.approx(np.mean(np.abs(scores - y)))
    assert metrics.rmse == pytest.approx(np.sqrt(np.mean((scores - y) ** 2)))
    assert set(metrics.as_metadata()) == {"rows", "mae", "rmse"}


def test_multiclass_scores_are_a_matrix() -> None:
    spec = StreamSpec(
        name="three",
        features=[{"name": f"f{i}"} for i in range(4)],
        label={"classes": ["a", "b", "c"]},
        model={"estimator": "gaussian_nb"},
    )
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 150)
    X = rng.normal(size=(150, 4)) + y[:, None]
    model, _, _ = training.test_then_train(None, spec, X[:100], y[:100])
    _, metrics, scores = training.test_then_train(model, spec, X[100:], y[100:])
    assert scores.shape == (50, 3) and metrics.accuracy > 0.5
    assert metrics.roc_auc == pytest.approx(roc_auc_score(y[100:], scores, multi_class="ovr", average="macro"))
    _, one_missing, _ = training.test_then_train(model, spec, X[100:][y[100:] != 2], y[100:][y[100:] != 2])
    assert one_missing.roc_auc is None, "a class absent from the batch has no one-vs-rest AUC"


def test_rejects_bad_shapes() -> None:
    X, y = make_batch("classification", 10, seed=0)
    with pytest.raises(ValueError, match="shape"):
        training.test_then_train(None, make_spec(), X[:, :3], y)
    with pytest.raises(ValueError, match="rows"):
        training.test_then_train(None, make_spec(), X, y[:3])
    with pytest.raises(ValueError, match="empty"):
        training.test_then_train(None, make_spec(), X[:0], y[:0])


def test_phishing_quality_matches_river() -> None:
    """Prequential ROC AUC on Phishing in arrival order, Streamfit (batch 50) vs River (one row at a time)."""
    rows = list(datasets.Phishing())
    names = list(rows[0][0])
    classes = [False, True]
    X = np.array([[x[n] for n in names] for x, _ in rows], dtype=np.float64)
    y = np.array([classes.index(label) for _, label in rows])
    spec = StreamSpec(
        name="phishing",
        features=[{"name": n} for n in names],
        label={"classes": classes},
        model={"estimator": "sgd_classifier"},
    )

    batch = 50
    model = None
    scored = np.zeros(len(y), dtype=bool)
    scores = np.zeros(len(y))
    for start in range(0, len(y), batch):
        rows_ = slice(start, start + batch)
        model, _, batch_scores = training.test_then_train(model, spec, X[rows_], y[rows_])
        if batch_scores is not None:
            scores[rows_] = batch_scores
            scored[rows_] = True
    streamfit_auc = roc_auc_score(y[scored], scores[scored])

    river_model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    river_scores = np.zeros(len(y))
    for i, (x, label) in enumerate(rows):
        river_scores[i] = river_model.predict_proba_one(x).get(True, 0.0)
        river_model.learn_one(x, label)
    river_auc = roc_auc_score(y[scored], river_scores[scored])  # same rows as Streamfit

    print(f"Phishing ROC AUC ({scored.sum()} rows): streamfit={streamfit_auc:.4f}, river={river_auc:.4f}")
    assert streamfit_auc >= river_auc - 0.01
    assert streamfit_auc >= 0.94
