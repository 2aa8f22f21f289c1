"""Predicted classes from already computed class scores equal scikit-learn's `predict`, ties included."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import SGDClassifier

from dagster_project.learning.estimator_table import CLASSIFIERS, ESTIMATORS
from dagster_project.learning.estimators import build_model, partial_fit
from dagster_project.learning.outputs import predicted_classes
from dagster_project.onnx.export import sklearn_scores
from dagster_project.spec import StreamSpec

INCREMENTAL_CLASSIFIERS = sorted(name for name in CLASSIFIERS if not ESTIMATORS[name].windowed)


def _spec(estimator: str, classes: int) -> StreamSpec:
    return StreamSpec(
        name="outputs",
        task="classification",
        features=[{"name": f"f{i}"} for i in range(3)],
        label={"classes": list(range(classes))},
        model={"estimator": estimator},
    )


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("estimator", INCREMENTAL_CLASSIFIERS)
def test_every_classifier_gets_the_classes_predict_gives(estimator: str, classes: int) -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2_000, 3))
    y = np.digitize(X @ np.array([1.5, -1.0, 0.5]) + 0.5 * rng.normal(size=2_000), [-0.5, 0.5][: classes - 1])
    model = build_model(_spec(estimator, classes))
    partial_fit(model, X, y, np.arange(classes))
    X_new = rng.normal(size=(3_000, 3))
    np.testing.assert_array_equal(predicted_classes(model, X_new, sklearn_scores(model, X_new)), model.predict(X_new))


def test_tied_scores_are_decided_by_predict() -> None:
    """modified_huber clips its probabilities: rows far from every boundary tie at the top, where
    the argmax of the probabilities and `predict` (the argmax of the decision) disagree."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(600, 2)) * 5
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0).astype(int)
    model = SGDClassifier(loss="modified_huber", random_state=0).fit(X, y)
    proba = model.predict_proba(X)
    top_two = np.sort(proba, axis=1)[:, -2:]
    tied = top_two[:, 0] == top_two[:, 1]
    assert tied.any(), "the fixture must produce tied probabilities"
    assert (model.classes_[proba.argmax(axis=1)] != model.predict(X))[tied].any(), "argmax alone must differ here"
    np.testing.assert_array_equal(predicted_classes(model, X, proba), model.predict(X))


def test_a_binary_tie_is_decided_by_predict() -> None:
    """A decision of 1e-20 is class 1 for `predict`, but both probabilities round to exactly 0.5."""
    model = SGDClassifier(loss="log_loss").fit(np.eye(4), [0, 1, 0, 1])
    model.coef_[:] = 0.0
    model.intercept_[:] = 1e-20
    X = np.zeros((3, 4))
    proba = model.predict_proba(X)
    assert (proba == 0.5).all() and (model.predict(X) == 1).all()
    np.testing.assert_array_equal(predicted_classes(model, X, proba), [1, 1, 1])


def test_scores_of_the_wrong_shape_are_refused() -> None:
    model = SGDClassifier(loss="log_loss").fit(np.eye(4), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="scores must have shape"):
        predicted_classes(model, np.eye(4), np.zeros(4))
