"""The numpy batch metrics give scikit-learn's values: ties, extreme probabilities, many classes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss as sklearn_log_loss
from sklearn.metrics import roc_auc_score

from dagster_project.learning.metrics import binary_roc_auc, log_loss, macro_roc_auc


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("decimals", [None, 1, 3])  # rounded scores: many ties
def test_roc_auc_is_sklearns(seed: int, decimals: int | None) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 2_000).astype(np.float64)
    scores = rng.normal(size=2_000) + y * rng.random()
    if decimals is not None:
        scores = np.round(scores, decimals)
    assert binary_roc_auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)


def test_roc_auc_extremes_and_one_class() -> None:
    y = np.array([0.0, 0.0, 1.0, 1.0])
    assert binary_roc_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert binary_roc_auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert binary_roc_auc(y, np.full(4, 0.5)) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        binary_roc_auc(np.ones(3), np.array([0.1, 0.2, 0.3]))
    assert np.isnan(binary_roc_auc(y, np.array([0.1, np.nan, 0.8, 0.9])))  # a diverged model scores no AUC


@pytest.mark.parametrize("classes", [3, 7])
@pytest.mark.parametrize("decimals", [None, 1])
def test_macro_roc_auc_is_sklearns_one_vs_rest(classes: int, decimals: int | None) -> None:
    rng = np.random.default_rng(classes)
    y = rng.integers(0, classes, 2_000)
    proba = rng.dirichlet(np.ones(classes), 2_000) + 0.5 * np.eye(classes)[y]
    proba /= proba.sum(axis=1, keepdims=True)
    if decimals is not None:
        proba = np.round(proba, decimals)
        proba /= proba.sum(axis=1, keepdims=True)
    expected = roc_auc_score(y, proba, multi_class="ovr", average="macro")
    assert macro_roc_auc(y, proba) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="shape"):
        macro_roc_auc(y, proba[:10])


@pytest.mark.parametrize("classes", [2, 3, 7])
def test_log_loss_is_sklearns(classes: int) -> None:
    rng = np.random.default_rng(classes)
    y = rng.integers(0, classes, 3_000).astype(np.float64)
    proba = rng.dirichlet(np.ones(classes), size=3_000)
    proba[:5] = np.eye(classes)[(y[:5].astype(int) + 1) % classes]  # certain and wrong: clipped, finite
    proba[5:10] = np.eye(classes)[y[5:10].astype(int)]  # certain and right
    expected = sklearn_log_loss(y, proba, labels=np.arange(classes))
    assert log_loss(y, proba) == pytest.approx(expected, rel=1e-12)


def test_log_loss_refuses_a_wrong_shape() -> None:
    with pytest.raises(ValueError, match="shape"):
        log_loss(np.zeros(3), np.zeros((2, 2)))
