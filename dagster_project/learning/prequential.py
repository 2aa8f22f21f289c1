"""Prequential ("test-then-train") training on one micro-batch.

Each batch is first scored by the model as it stood before the batch (an honest out-of-sample
estimate, since the model has never seen these rows), and only then learned from. The metrics are
attached to the Dagster materialization so quality can be plotted over time.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score
from sklearn.pipeline import Pipeline

from dagster_project.learning import scale_out
from dagster_project.learning.estimators import build_model, partial_fit
from dagster_project.learning.metrics import binary_roc_auc, log_loss, macro_roc_auc
from dagster_project.learning.outputs import predicted_classes
from dagster_project.learning.scale_out import ScaleOutReport
from dagster_project.spec import StreamSpec


@dataclass(frozen=True)
class BatchMetrics:
    """Quality of the pre-batch model on one batch; task metrics are None when not computable."""

    rows: int
    accuracy: float | None = None
    roc_auc: float | None = None
    log_loss: float | None = None
    mae: float | None = None
    rmse: float | None = None

    @classmethod
    def from_record(cls, values: dict[str, Any]) -> BatchMetrics:
        """The metrics out of a family's record, which also holds how the family learns."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def as_metadata(self) -> dict[str, float | int]:
        """Only the numeric values that exist, under stable keys, for Dagster's metadata plots."""
        out: dict[str, float | int] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value
        return out


def test_then_train(
    model: Pipeline | None, spec: StreamSpec, X: np.ndarray, y: np.ndarray
) -> tuple[Pipeline, BatchMetrics, np.ndarray | None]:
    """Score the batch with the current model, then learn from it.

    Returns ``(new_model, metrics, scores)``. ``model`` is never mutated: it is deep-copied first,
    because the caller keeps it as the parent version. With no prior model a fresh one is built and
    the batch is only learned from (metrics are then just ``rows``, scores None).

    ``scores`` are the pre-fit outputs: for binary classifiers the positive-class score (probability,
    or the decision value for models without ``predict_proba`` such as hinge loss); for multi-class
    the full probability (or decision) matrix; for regressors the predictions.
    ``y`` holds class indices 0..k-1 for classification.
    """
    new_model, metrics, scores, _ = _test_then_fit(model, spec, X, y, None)
    return new_model, metrics, scores


def test_then_train_partitioned(
    model: Pipeline | None, spec: StreamSpec, X: np.ndarray, y: np.ndarray, partitions: np.ndarray
) -> tuple[Pipeline, BatchMetrics, np.ndarray | None, ScaleOutReport]:
    """``test_then_train`` that learns per partition group when ``spec.model.scale_out`` asks for it.

    Scoring is unchanged (the whole batch, by the parent model). ``partitions`` is each row's Kafka
    partition; the fourth value says how the batch was learned (workers, rows per group, seconds).
    """
    return _test_then_fit(model, spec, X, y, np.asarray(partitions))


def _test_then_fit(
    model: Pipeline | None, spec: StreamSpec, X: np.ndarray, y: np.ndarray, partitions: np.ndarray | None
) -> tuple[Pipeline, BatchMetrics, np.ndarray | None, ScaleOutReport | None]:
    if spec.model.windowed or spec.model.candidates:
        raise ValueError(
            f"{spec.name}: windowed estimators and candidate families learn through "
            "dagster_project.learning.learner.test_then_learn (a refit reads its window back)"
        )
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    if X.ndim != 2 or X.shape[1] != len(spec.inputs):
        raise ValueError(f"X must have shape (rows, {len(spec.inputs)}), got {X.shape}")
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
    if len(X) == 0:
        raise ValueError("cannot train on an empty batch")

    new_model, metrics, scores, classes = test(model, spec, X, y)
    if partitions is None:
        partial_fit(new_model, X, y, classes, spec.model.passes_per_batch, spec.model.clip_sigmas)
        return new_model, metrics, scores, None
    new_model, report = scale_out.fit(new_model, spec, X, y, partitions, classes)
    return new_model, metrics, scores, report


def test(
    model: Pipeline | None, spec: StreamSpec, X: np.ndarray, y: np.ndarray
) -> tuple[Pipeline, BatchMetrics, np.ndarray | None, np.ndarray | None]:
    """The "test" half: score the batch with ``model`` and return a copy to learn into (or a fresh
    model), the metrics, the scores and the class indices (None for regression)."""
    classes = np.arange(len(spec.label.classes)) if spec.task == "classification" else None
    if model is None:
        return build_model(spec), BatchMetrics(rows=len(X)), None, classes
    new_model = copy.deepcopy(model)
    if classes is not None:
        metrics, scores = _score_classifier(new_model, np.asarray(X, dtype=np.float64), np.asarray(y), classes)
    else:
        metrics, scores = _score_regressor(new_model, np.asarray(X, dtype=np.float64), np.asarray(y))
    return new_model, metrics, scores, classes


def evaluate(model: Pipeline, spec: StreamSpec, X: np.ndarray, y: np.ndarray) -> BatchMetrics:
    """Score a fitted model on labelled rows without learning from them (champion/challenger)."""
    X = np.asarray(X, dtype=np.float64)
    if spec.task == "classification":
        return _score_classifier(model, X, np.asarray(y), np.arange(len(spec.label.classes)))[0]
    return _score_regressor(model, X, np.asarray(y))[0]


def row_outputs(model: Pipeline, spec: StreamSpec, X: np.ndarray) -> dict[str, np.ndarray | None]:
    """Per-row outputs the paired tests need (`registry.significance.paired_test`): ``predicted``,
    plus ``proba`` (classifiers with probabilities) and ``scores``, the values ROC AUC ranks: one
    positive-class score per row for binary classifiers, a column per class for multi-class ones."""
    X = np.asarray(X, dtype=np.float64)
    out: dict[str, np.ndarray | None] = {"predicted": model.predict(X), "proba": None, "scores": None}
    if spec.task != "classification":
        return out
    if hasattr(model, "predict_proba"):
        out["proba"] = model.predict_proba(X)
    if out["proba"] is not None:
        out["scores"] = out["proba"][:, 1] if len(spec.label.classes) == 2 else out["proba"]
    elif hasattr(model, "decision_function"):
        out["scores"] = model.decision_function(X)  # 1-D for binary, a column per class otherwise
    return out


# Not a test, despite the name: keeps pytest from collecting it when a test module imports it.
test_then_train.__test__ = False  # type: ignore[attr-defined]
test_then_train_partitioned.__test__ = False  # type: ignore[attr-defined]
test.__test__ = False  # type: ignore[attr-defined]


def _score_classifier(
    model: Pipeline, X: np.ndarray, y: np.ndarray, classes: np.ndarray
) -> tuple[BatchMetrics, np.ndarray]:
    """Accuracy, ROC AUC (binary, or macro one-vs-rest for several classes) and log loss on a batch."""
    proba = model.predict_proba(X) if hasattr(model, "predict_proba") else None
    binary = len(classes) == 2
    if proba is not None:
        scores = proba[:, 1] if binary else proba
        predicted = predicted_classes(model, X, proba)  # one pass through the model, not two
    else:
        scores = model.decision_function(X)  # 1-D for binary: positive-class margin
        predicted = model.predict(X)
    roc_auc = None
    # every class in the batch (y holds class indices): each has its one-vs-rest AUC
    every_class = len(y) > 0 and bool(np.all(np.bincount(np.asarray(y, np.int64), minlength=len(classes)) > 0))
    if binary and every_class:
        roc_auc = binary_roc_auc(y, scores)
    elif every_class and np.ndim(scores) == 2 and scores.shape[1] == len(classes):
        roc_auc = macro_roc_auc(y, scores)
    loss = log_loss(y, proba) if proba is not None else None
    # accuracy_score's value; its input checks sort the labels twice (~10 ms at 100 k rows)
    accuracy = float(np.mean(np.asarray(predicted) == y)) if len(y) else float(accuracy_score(y, predicted))
    metrics = BatchMetrics(rows=len(X), accuracy=accuracy, roc_auc=roc_auc, log_loss=loss)
    return metrics, scores


def _score_regressor(model: Pipeline, X: np.ndarray, y: np.ndarray) -> tuple[BatchMetrics, np.ndarray]:
    """MAE and RMSE of the current model on a batch."""
    predicted = model.predict(X)
    err = predicted - y.astype(np.float64)
    metrics = BatchMetrics(rows=len(X), mae=float(np.mean(np.abs(err))), rmse=float(np.sqrt(np.mean(err**2))))
    return metrics, predicted
