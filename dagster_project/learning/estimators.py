"""Estimator factory and incremental fitting for stream models.

Every stream model is a scikit-learn ``Pipeline`` of an optional ``StandardScaler`` followed by an
estimator that supports ``partial_fit``. The defaults below are chosen to learn well ONLINE (small,
ordered micro-batches, a single pass), not to match scikit-learn's batch-oriented defaults; any of
them can be overridden per stream through ``spec.model.params``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, is_classifier
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import SGDClassifier, SGDRegressor
from sklearn.naive_bayes import BernoulliNB, GaussianNB
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from dagster_project.spec import StreamSpec

# Online-learning defaults per estimator name; ``seed`` feeds ``random_state`` where it exists.
# - sgd_*: a constant, small step size keeps adapting as the stream goes on (the "optimal" and
#   "invscaling" schedules decay with the number of samples seen and stall a long-running stream);
#   no penalty because there is no fixed training set to over-fit.
# - passive_aggressive: scikit-learn 1.8 deprecated PassiveAggressiveClassifier; this SGDClassifier
#   configuration is its documented replacement (PA-I with C = eta0).
# - bernoulli_nb: binarize at 0.0, which after the scaler is each feature's running mean.
# - mlp_*: one small hidden layer; a larger initial step than the default 0.001 because
#   partial_fit makes only one pass (one Adam step per 200 rows) over each micro-batch.
_DEFAULTS: dict[str, Callable[[int], dict[str, Any]]] = {
    "sgd_classifier": lambda seed: {
        "loss": "log_loss",
        "learning_rate": "constant",
        "eta0": 0.01,
        "penalty": None,
        "random_state": seed,
    },
    "sgd_regressor": lambda seed: {
        "loss": "squared_error",
        "learning_rate": "constant",
        "eta0": 0.01,
        "penalty": None,
        "random_state": seed,
    },
    "passive_aggressive": lambda seed: {
        "loss": "hinge",
        "penalty": None,
        "learning_rate": "pa1",
        "eta0": 1.0,
        "random_state": seed,
    },
    "gaussian_nb": lambda seed: {},
    "bernoulli_nb": lambda seed: {"binarize": 0.0},
    "mlp_classifier": lambda seed: {
        "hidden_layer_sizes": (32,),
        "learning_rate_init": 0.01,
        "random_state": seed,
    },
    "mlp_regressor": lambda seed: {
        "hidden_layer_sizes": (32,),
        "learning_rate_init": 0.01,
        "random_state": seed,
    },
}

_CLASSES: dict[str, type[BaseEstimator]] = {
    "sgd_classifier": SGDClassifier,
    "sgd_regressor": SGDRegressor,
    "passive_aggressive": SGDClassifier,
    "gaussian_nb": GaussianNB,
    "bernoulli_nb": BernoulliNB,
    "mlp_classifier": MLPClassifier,
    "mlp_regressor": MLPRegressor,
}


def default_params(estimator: str, seed: int = 0) -> dict[str, Any]:
    """The online-learning defaults for an estimator name (before spec overrides)."""
    if estimator not in _DEFAULTS:
        raise ValueError(f"unknown estimator {estimator!r}; known: {sorted(_DEFAULTS)}")
    return _DEFAULTS[estimator](seed)


def build_model(spec: StreamSpec) -> Pipeline:
    """A fresh, unfitted pipeline for the stream: optional scaler, then the configured estimator.

    ``spec.model.params`` override the online defaults key by key, so a spec only states what differs.
    """
    name = spec.model.estimator
    params = {**default_params(name, spec.model.seed), **spec.model.params}
    estimator = _CLASSES[name](**params)
    steps: list[tuple[str, Any]] = []
    if spec.model.scale:
        steps.append(("scaler", StandardScaler()))
    steps.append(("estimator", estimator))
    return Pipeline(steps)


def partial_fit(model: Pipeline, X: np.ndarray, y: np.ndarray, classes: np.ndarray | None) -> Pipeline:
    """Update ``model`` in place with one micro-batch and return it.

    ``Pipeline`` has no ``partial_fit``, so each step is updated in turn: the scaler first (so this
    batch already counts towards the running mean/variance), then the estimator on the transformed
    rows. ``classes`` (all class indices, needed up front because a batch may lack some) is passed to
    classifiers only. Works on fresh and previously fitted pipelines alike.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D, got shape {X.shape}")
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
    if len(X) == 0:
        raise ValueError("cannot partial_fit an empty batch")
    Xt = X
    for _, step in model.steps[:-1]:
        step.partial_fit(Xt)
        Xt = step.transform(Xt)
    estimator = model.steps[-1][1]
    if is_classifier(estimator):
        if classes is None:
            raise ValueError("classifiers need the full list of class indices for partial_fit")
        estimator.partial_fit(Xt, y, classes=np.asarray(classes))
    else:
        estimator.partial_fit(Xt, y)
    return model


def is_fitted(model: Pipeline) -> bool:
    """True once every step of the pipeline has seen at least one batch."""
    for _, step in model.steps:
        try:
            check_is_fitted(step)
        except NotFittedError:
            return False
    return True
