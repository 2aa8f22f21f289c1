"""Adaptive SGD: each copy is judged on rows it has not learned, and the better step serves."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from dagster_project.learning.adaptive_sgd import AdaptiveSGDClassifier, AdaptiveSGDRegressor, step_of
from dagster_project.learning.estimators import partial_fit
from dagster_project.onnx.export import OnnxModel, export_onnx

CLASSES = np.array([0, 1])


def _pipeline(estimator) -> Pipeline:
    return Pipeline([("scaler", StandardScaler()), ("estimator", estimator)])


def _noisy_batches(seed: int, batches: int, rows: int, flip: float):
    """A fixed linear concept whose labels are flipped at random with probability `flip`."""
    rng = np.random.default_rng(seed)
    w = np.array([1.0, -2.0, 0.5, 0.0, 1.5])
    for _ in range(batches):
        X = rng.normal(size=(rows, 5))
        y = (X @ w > 0).astype(int)
        flipped = rng.random(rows) < flip
        yield X, np.where(flipped, 1 - y, y)


def test_noisy_labels_make_the_smaller_step_serve_and_clean_labels_the_larger() -> None:
    noisy = _pipeline(AdaptiveSGDClassifier(random_state=0))
    for X, y in _noisy_batches(seed=1, batches=40, rows=100, flip=0.3):
        partial_fit(noisy, X, y, CLASSES)
    clean = _pipeline(AdaptiveSGDClassifier(random_state=0))
    for X, y in _noisy_batches(seed=1, batches=40, rows=100, flip=0.0):
        partial_fit(clean, X, y, CLASSES)

    noisy_est, clean_est = noisy.steps[-1][1], clean.steps[-1][1]
    assert noisy_est.passes_options[noisy_est.served_] == 2, noisy_est.recent_loss_
    assert clean_est.passes_options[clean_est.served_] == 8, clean_est.recent_loss_


def _losses(criterion: str, copies: list, X: np.ndarray, y: np.ndarray) -> list[float]:
    if criterion == "errors":
        return [float(np.sum(c.predict(X) != y)) for c in copies]
    proba = [c.predict_proba(X) for c in copies]
    if criterion == "brier":
        return [float(((p - np.eye(2)[y]) ** 2).sum()) for p in proba]
    return [float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-7, 1)).sum()) for p in proba]


@pytest.mark.parametrize("criterion", ["errors", "log_loss", "brier"])
def test_each_copy_is_scored_on_the_batch_before_it_learns_it(criterion: str) -> None:
    model = _pipeline(AdaptiveSGDClassifier(random_state=0, criterion=criterion))
    batches = list(_noisy_batches(seed=2, batches=3, rows=200, flip=0.1))
    for X, y in batches[:2]:
        partial_fit(model, X, y, CLASSES)
    estimator = model.steps[-1][1]
    before = copy.deepcopy(estimator)
    X, y = batches[2]
    Xt = copy.deepcopy(model.steps[0][1]).partial_fit(X).transform(X)
    expected = _losses(criterion, before.copies_, Xt, y)

    partial_fit(model, X, y, CLASSES)

    decay = 0.5 ** (len(X) / estimator.halflife_rows)
    assert np.allclose(estimator.recent_loss_, before.recent_loss_ * decay + expected)
    assert estimator.served_ == int(np.argmin(estimator.recent_loss_))
    assert estimator.rows_scored_ == 400  # the first batch is learned unscored: no copy had a model yet


def test_predictions_and_the_onnx_graph_come_from_the_serving_copy() -> None:
    model = _pipeline(AdaptiveSGDClassifier(random_state=0))
    for X, y in _noisy_batches(seed=3, batches=30, rows=100, flip=0.3):
        partial_fit(model, X, y, CLASSES)
    estimator = model.steps[-1][1]
    served = estimator.served_estimator()
    other = estimator.copies_[1 - estimator.served_]
    Xt = model.steps[0][1].transform(X)
    assert np.array_equal(model.predict_proba(X), served.predict_proba(Xt))
    assert not np.allclose(served.predict_proba(Xt), other.predict_proba(Xt))

    scores = OnnxModel(export_onnx(model, 5)).predict(X.astype(np.float32)).scores
    assert np.allclose(scores, served.predict_proba(Xt), atol=1e-5)


def test_describe_names_the_serving_step_and_every_copys_recent_loss() -> None:
    estimator = AdaptiveSGDClassifier(random_state=0)
    assert estimator.describe() == {}  # nothing learned, nothing to say
    for X, y in _noisy_batches(seed=5, batches=6, rows=200, flip=0.3):
        estimator.partial_fit(X, y, CLASSES)
    step = estimator.describe()
    losses = list(step["recent_loss"].values())
    assert list(step["recent_loss"]) == ["8_passes", "2_passes"]
    assert step["serving_passes"] == (8, 2)[int(np.argmin(losses))] and min(losses) > 0
    assert (step["measure"], step["rows_scored"]) == ("errors", 5 * 200)  # the first batch is not scored
    assert AdaptiveSGDClassifier(loss="hinge", criterion="log_loss").measure() == "errors"  # no probabilities
    assert step_of(_pipeline(estimator)) == step and step_of(_pipeline(StandardScaler())) == {}


def test_regressor_serves_the_step_with_the_lower_squared_error() -> None:
    rng = np.random.default_rng(4)
    model = _pipeline(AdaptiveSGDRegressor(random_state=0))
    for _ in range(20):
        X = rng.normal(size=(200, 5))
        partial_fit(model, X, X @ np.arange(5.0) + rng.normal(size=200), None)
    estimator = model.steps[-1][1]
    assert estimator.served_ == int(np.argmin(estimator.recent_loss_))
    values = OnnxModel(export_onnx(model, 5)).predict(X.astype(np.float32)).values
    assert np.allclose(values, model.predict(X), atol=1e-3)


def test_a_step_beyond_max_passes_is_taken_as_max_passes_at_a_larger_eta0() -> None:
    X, y = next(_noisy_batches(seed=6, batches=1, rows=100, flip=0.0))
    model = AdaptiveSGDClassifier(random_state=0, passes_options=(8, 2, 32), max_passes=8).partial_fit(
        X, y, classes=CLASSES
    )
    assert [c.eta0 for c in model.copies_] == [0.005, 0.005, 0.02]
    # SGD counts its weight updates in t_ (one per row and pass, from 1): the 32-pass step ran 8 passes.
    assert [int(c.t_ - 1) for c in model.copies_] == [800, 200, 800]
    assert model.describe()["max_passes"] == 8  # the record says how a 32-pass step ran
    uncapped = AdaptiveSGDClassifier(random_state=0, passes_options=(8, 2, 32)).partial_fit(X, y, classes=CLASSES)
    assert [c.eta0 for c in uncapped.copies_] == [0.005] * 3  # no max_passes (the default): passes at eta0
    assert [int(c.t_ - 1) for c in uncapped.copies_] == [800, 200, 3200]
    assert "max_passes" not in uncapped.describe()


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"passes_options": ()}, r"passes_options .* got \(\)"),
        ({"passes_options": (8, 0)}, r"got \(8, 0\)"),
        ({"halflife_rows": 0}, "halflife_rows must be positive, got 0"),
        ({"max_passes": 0}, r"max_passes must be at least 1 \(or null: no cap\), got 0"),
    ],
)
def test_bad_settings_are_refused_with_their_value(bad: dict, named: str) -> None:
    X, y = next(_noisy_batches(seed=5, batches=1, rows=50, flip=0.0))
    with pytest.raises(ValueError, match=named):
        AdaptiveSGDClassifier(**bad).partial_fit(X, y, classes=CLASSES)
