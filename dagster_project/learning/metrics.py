"""Batch metrics in plain numpy: the values scikit-learn's functions give, without their validation.

Every batch is scored twice (test-then-train, then the promotion gate), and at 100 k rows
`roc_auc_score` and `log_loss` cost ~45 and ~30 ms each, mostly input checks and a Python-level
threshold walk. The inputs here are already checked: labels are class indices, scores come from
the model.
"""

from __future__ import annotations

import numpy as np


def binary_roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of `scores` for the positive class 1 of `y` (0/1), both classes present.

    The Mann-Whitney form: the mean rank of the positives, ties at their average rank, equals the
    area under the trapezoidal ROC curve that `sklearn.metrics.roc_auc_score` integrates.
    """
    positive = np.asarray(y) == 1
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC needs both classes in the batch")
    return float(
        (_positive_rank_sum(positive, np.asarray(scores, dtype=np.float64)) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    )


def macro_roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """Multi-class ROC AUC: the unweighted mean over classes of each class's one-vs-rest AUC.

    Column ``c`` of `scores` (probabilities or decision values: only their order within the column
    counts) ranks class ``c`` against all others; every class weighs the same however rare, the value
    `sklearn.metrics.roc_auc_score(y, proba, multi_class="ovr", average="macro")` gives.
    """
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y)
    if scores.ndim != 2 or scores.shape[0] != len(y):
        raise ValueError(f"scores must have shape ({len(y)}, classes), got {scores.shape}")
    return float(np.mean([binary_roc_auc(y == c, scores[:, c]) for c in range(scores.shape[1])]))


def _positive_rank_sum(positive: np.ndarray, scores: np.ndarray) -> float:
    """The sum of the 1-based ranks of the positive rows, tied scores at their average rank.

    `scipy.stats.rankdata`'s values, with numpy's default sort instead of its stable one (ties get
    one average rank, so their order does not matter): 4 instead of 11 ms at 100 k rows.
    """
    order = np.argsort(scores)
    ordered = scores[order]
    if len(ordered) and np.isnan(ordered[-1]):  # NaN sorts last; a diverged model's AUC is NaN, as scipy's
        return float("nan")
    new_value = np.empty(len(ordered), dtype=bool)
    new_value[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new_value[1:])
    bounds = np.append(np.flatnonzero(new_value), len(ordered))  # where each run of equal scores starts
    average = (bounds[:-1] + bounds[1:] + 1) / 2.0  # ranks start..end-1, 1-based: their mean
    return float(average[np.cumsum(new_value) - 1][positive[order]].sum())


def log_loss(y: np.ndarray, proba: np.ndarray) -> float:
    """Mean negative log-likelihood of the class indices `y` under `proba` (rows of class
    probabilities), clipped to [eps, 1 - eps] as `sklearn.metrics.log_loss` clips them."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[0] != len(y):
        raise ValueError(f"proba must have shape ({len(y)}, classes), got {proba.shape}")
    eps = np.finfo(proba.dtype).eps
    picked = proba[np.arange(len(y)), np.asarray(y, dtype=np.int64)]
    return float(-np.mean(np.log(np.clip(picked, eps, 1 - eps))))
