"""A classifier's predicted classes from the class scores already computed: one scoring pass, not two.

Each batch is scored by `predict_proba` (metrics, the ONNX parity check) and `predict` (accuracy,
label parity); at 100 k rows each is a full pass through the pipeline (~13 ms). A scikit-learn
classifier's `predict` is the class with the highest decision score, and its probabilities (or the
widened binary decision `[-d, d]`) rise with that score, so a row whose top class score is strictly
the highest gets the same class from either. Rows where the top two tie (float rounding can tie
scores that differ, and clipped probabilities such as `modified_huber`'s tie by design) or are not
finite are asked of `predict` itself, so the result always equals `model.predict(X)`.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def predicted_classes(model: Any, X: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """`model.predict(X)`, from `scores` (rows x classes, in `model.classes_` order) where unambiguous."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or len(scores) != len(X):
        raise ValueError(f"scores must have shape ({len(X)}, classes), got {scores.shape}")
    classes = getattr(model, "classes_", None)
    if classes is None:  # a wrapper (candidate set, windowed model): fitted on class indices 0..k-1
        classes = np.arange(scores.shape[1])
    if scores.shape[1] == 2:  # binary: two column comparisons (np.partition per row costs as much as predict)
        first, second = scores[:, 0], scores[:, 1]
        predicted = np.asarray(classes)[(second > first).astype(np.intp)]
        ambiguous = (first == second) | ~(np.isfinite(first) & np.isfinite(second))
    elif scores.shape[1] > 2:
        predicted = np.asarray(classes)[np.argmax(scores, axis=1)]
        top_two = np.partition(scores, scores.shape[1] - 2, axis=1)[:, -2:]
        ambiguous = (top_two[:, 0] == top_two[:, 1]) | ~np.isfinite(top_two).all(axis=1)
    else:
        predicted = np.asarray(classes)[np.zeros(len(scores), dtype=np.intp)]
        ambiguous = ~np.isfinite(scores[:, 0])
    if ambiguous.any():
        rows = np.flatnonzero(ambiguous)
        predicted[rows] = model.predict(np.asarray(X)[rows])
    return predicted
