"""The one table of estimators a spec may name: class, online defaults, task, export and scale-out.

Everything that needs to know about estimators reads this table: the spec validates names and
tasks against it, `estimators.build_model` builds from it, `scale_out` picks its combiner from it
and the contract test runs every entry. It imports no scikit-learn, so loading a spec stays cheap.

Why these defaults: they are chosen to learn well online (small ordered micro-batches, one pass).
- sgd_*: a constant small step keeps adapting as the stream goes on ("optimal" and "invscaling"
  decay with the samples seen and stall a long-running stream); no penalty, as there is no fixed
  training set to over-fit. Eight passes over each micro-batch at half the step (0.005): one pass
  at 0.01 serves a model that has barely moved from the last batch's, and the micro-batch cannot
  learn row by row as River does; several smaller steps get closer to the batch's own optimum and
  still track change. Over the 34 streams of `benchmarks/learning_quality.py` (in 6,000-row,
  20,000-row and 500-row-batch runs) every multi-pass setting beat one pass, and a smaller step
  with more passes beat a larger one (mean rank 8 x 0.005: 3.3-3.9 of 7; 1 x 0.01: 5.8-6.1).
- adaptive_sgd_* (the default classifier): the sgd_* learner at two steps per batch, eight passes and
  two, both learning every batch; the copy with the fewest recent errors (squared error for regression)
  on rows it had not learned yet serves. The right step depends on the stream (the quarter step on
  noisy labels, the full one on clean or clustered concepts), so it is chosen per stream. Over 32
  held-out streams at batches of 1,000 / 500 / 250 / 100 it was significantly below River's logistic
  regression on 13 / 5 / 4 / 2 against plain SGD's 13 / 8 / 8 / 10, for 1.4x its cost per row.
- passive_aggressive: scikit-learn 1.8 deprecated PassiveAggressiveClassifier; this SGDClassifier
  configuration is its documented replacement (PA-I with C = eta0).
- bernoulli_nb: binarize at 0.0, which after the scaler is each feature's running mean.
- mlp_*: one small hidden layer, Adam steps of 50 rows and a first step of 0.03 (scikit-learn:
  200 rows, 0.001), because partial_fit makes one pass over each micro-batch: 20 steps per 1,000
  rows instead of 5. Over the 34 streams of `benchmarks/learning_quality.py` this beat the
  previous (32,)/0.01/200 on every stream and a step of 0.1 at 200 rows on 25 (MAE on Friedman
  2.6-3.1 vs 10.4); a layer of 64 helped less than the step size. mlp_regressor learns its labels
  standardized by the mean and spread of its first 200 (learning/scaled_mlp.py): as scikit-learn's
  MLPRegressor learns them, labels around 1e3 or more were never reached.
- windowed (hist_gradient_boosting_*, random_forest_*, extra_trees_*): batch learners refit on a
  sliding window of recent rows (learning/windowed.py), single-threaded (the trainer shares its
  host) and with a bounded size whatever the window: forests get 50 trees of at most 256 leaves,
  so a fit, its ONNX graph and the scorer's memory do not grow with `window_rows`. The forest
  regressors learn each window's labels standardized (learning/scaled_trees.py): scikit-learn calls a
  node whose label variance is below machine epsilon pure, so labels around 1e-9 were never split.
- k_neighbors_* (windowed): a vote of the 11 nearest rows of the window, on standardized inputs
  (distances need comparable scales; the scaler is fit on the window). Strong where classes are
  clouds around centres (RBF) and it recovers from a change as soon as its window holds new rows.
  Uniform weights: skl2onnx's distance weighting does not match scikit-learn's (probabilities off
  by up to 0.06 on 68 % of rows); an odd k leaves no binary vote tied. Brute force, as the ONNX graph
  computes it. The model is its window, so the window is capped at `KNN_MAX_WINDOW_ROWS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

TaskName = Literal["classification", "regression"]
# How scale-out combines models fitted on partition groups: parameters averaged by rows, or the
# sufficient statistics merged exactly (dagster_project/learning/scale_out.py).
Combiner = Literal["sgd_average", "adaptive_sgd_average", "mlp_average", "gaussian_nb_exact", "bernoulli_nb_exact"]


@dataclass(frozen=True)
class EstimatorEntry:
    """One estimator a spec may name."""

    name: str
    class_path: str  # "module:Class", imported only when a model is built
    task: TaskName
    defaults: Callable[[int], dict[str, Any]]  # seed -> scikit-learn parameters
    combiner: Combiner | None  # None: scale-out cannot combine it
    has_predict_proba: bool  # False: ONNX "probabilities" are decision scores
    windowed: bool = False  # True: no partial_fit; refit on a window of recent rows (learning/windowed.py)
    passes: int = 1  # partial_fit passes over each micro-batch (the scaler learns it once)
    own_passes: bool = False  # True: the estimator sets its passes itself (adaptive SGD); model.passes is refused
    scaled: bool = True  # numeric inputs standardized first (spec `model.scale`); False: scale-free trees
    # Windowed only: the most rows its window may hold (None: `spec.WINDOW_ROWS_MAX`). For a model
    # whose size and scoring cost grow with the rows it was fit on (kNN keeps them all).
    max_window_rows: int | None = None

    def estimator_class(self) -> type:
        module, _, name = self.class_path.partition(":")
        return getattr(importlib.import_module(module), name)


def _sgd(loss: str) -> Callable[[int], dict[str, Any]]:
    return lambda seed: {
        "loss": loss,
        "learning_rate": "constant",
        "eta0": 0.005,
        "penalty": None,
        "random_state": seed,
    }


SGD_PASSES = 8


def _mlp(seed: int) -> dict[str, Any]:
    return {"hidden_layer_sizes": (32,), "learning_rate_init": 0.03, "batch_size": 50, "random_state": seed}


def _forest(seed: int) -> dict[str, Any]:
    return {"n_estimators": 50, "max_leaf_nodes": 256, "n_jobs": 1, "random_state": seed}


def _boosting(seed: int) -> dict[str, Any]:
    return {"random_state": seed}


def _neighbors(seed: int) -> dict[str, Any]:
    return {"n_neighbors": 11, "weights": "uniform", "algorithm": "brute", "n_jobs": 1}


# A kNN model is its window: the ONNX graph embeds every row (4 bytes a value) and scores each
# query row against all of them, so the window is capped here, below the default window.
KNN_MAX_WINDOW_ROWS = 5_000


def _windowed(
    name: str,
    class_path: str,
    task: TaskName,
    defaults: Callable[[int], dict[str, Any]],
    scaled: bool = False,
    max_window_rows: int | None = None,
) -> EstimatorEntry:
    return EstimatorEntry(
        name,
        class_path,
        task,
        defaults,
        None,
        task == "classification",
        windowed=True,
        scaled=scaled,
        max_window_rows=max_window_rows,
    )


ESTIMATORS: dict[str, EstimatorEntry] = {
    entry.name: entry
    for entry in (
        EstimatorEntry(
            "sgd_classifier",
            "sklearn.linear_model:SGDClassifier",
            "classification",
            _sgd("log_loss"),
            "sgd_average",
            True,
            passes=SGD_PASSES,
        ),
        EstimatorEntry(
            "sgd_regressor",
            "sklearn.linear_model:SGDRegressor",
            "regression",
            _sgd("squared_error"),
            "sgd_average",
            False,
            passes=SGD_PASSES,
        ),
        # SGD copies at 8 and 2 passes learning every batch; the fewest recent errors serve
        # (learning/adaptive_sgd.py). The default classifier since part 21.
        EstimatorEntry(
            "adaptive_sgd_classifier",
            "dagster_project.learning.adaptive_sgd:AdaptiveSGDClassifier",
            "classification",
            lambda seed: {"random_state": seed},
            "adaptive_sgd_average",
            True,
            own_passes=True,
        ),
        EstimatorEntry(
            "adaptive_sgd_regressor",
            "dagster_project.learning.adaptive_sgd:AdaptiveSGDRegressor",
            "regression",
            lambda seed: {"random_state": seed},
            "adaptive_sgd_average",
            False,
            own_passes=True,
        ),
        EstimatorEntry(
            "gaussian_nb",
            "sklearn.naive_bayes:GaussianNB",
            "classification",
            lambda seed: {},
            "gaussian_nb_exact",
            True,
        ),
        EstimatorEntry(
            "bernoulli_nb",
            "sklearn.naive_bayes:BernoulliNB",
            "classification",
            lambda seed: {"binarize": 0.0},
            "bernoulli_nb_exact",
            True,
        ),
        EstimatorEntry(
            "passive_aggressive",
            "sklearn.linear_model:SGDClassifier",
            "classification",
            lambda seed: {
                "loss": "hinge",
                "penalty": None,
                "learning_rate": "pa1",
                "eta0": 1.0,
                "random_state": seed,
            },
            "sgd_average",
            False,
        ),
        EstimatorEntry(
            "mlp_classifier", "sklearn.neural_network:MLPClassifier", "classification", _mlp, "mlp_average", True
        ),
        EstimatorEntry(
            "mlp_regressor",
            # MLPRegressor learning standardized labels: raw, labels near 1e3 were never learned
            "dagster_project.learning.scaled_mlp:TargetScaledMLPRegressor",
            "regression",
            _mlp,
            "mlp_average",
            False,
        ),
        _windowed(
            "hist_gradient_boosting_classifier",
            "sklearn.ensemble:HistGradientBoostingClassifier",
            "classification",
            _boosting,
        ),
        _windowed(
            "hist_gradient_boosting_regressor",
            "sklearn.ensemble:HistGradientBoostingRegressor",
            "regression",
            _boosting,
        ),
        _windowed("random_forest_classifier", "sklearn.ensemble:RandomForestClassifier", "classification", _forest),
        # Forests learning standardized labels: raw, labels near 1e-9 were never split (learning/scaled_trees.py)
        _windowed(
            "random_forest_regressor",
            "dagster_project.learning.scaled_trees:TargetScaledRandomForestRegressor",
            "regression",
            _forest,
        ),
        _windowed("extra_trees_classifier", "sklearn.ensemble:ExtraTreesClassifier", "classification", _forest),
        _windowed(
            "extra_trees_regressor",
            "dagster_project.learning.scaled_trees:TargetScaledExtraTreesRegressor",
            "regression",
            _forest,
        ),
        _windowed(
            "k_neighbors_classifier",
            "sklearn.neighbors:KNeighborsClassifier",
            "classification",
            _neighbors,
            scaled=True,
            max_window_rows=KNN_MAX_WINDOW_ROWS,
        ),
        _windowed(
            "k_neighbors_regressor",
            "sklearn.neighbors:KNeighborsRegressor",
            "regression",
            _neighbors,
            scaled=True,
            max_window_rows=KNN_MAX_WINDOW_ROWS,
        ),
    )
}

# What a model (or candidate) that names no estimator learns with, by the stream's task. Adaptive SGD
# for both (benchmarks/README.md, parts 21-22): for classification it is the rule's winner over 66
# streams; for regression it had the lower MAE on 12, 12 and 10 of 12 Friedman streams at batches of
# 100, 250 and 500 (0.8 %, 0.2 % and 0.01 % lower at the median; level at 1,000): one generator family,
# so thin evidence, but without a default a regression spec failed on a classifier it never named.
DEFAULT_ESTIMATORS: dict[TaskName, str] = {
    "classification": "adaptive_sgd_classifier",
    "regression": "adaptive_sgd_regressor",
}
# The defaults before DEFAULTS_CHANGED_ON: a stream upgraded from then that names no estimator gets
# the new one (a fresh model), and messages name the pin that keeps its model.
FORMER_DEFAULT_ESTIMATORS: dict[TaskName, str] = {"classification": "sgd_classifier", "regression": "sgd_regressor"}
DEFAULTS_CHANGED_ON = "2026-12-04"


def former_default_of(estimator: str) -> str | None:
    """The default `estimator` replaced on DEFAULTS_CHANGED_ON (None: it is no task's default)."""
    return next((FORMER_DEFAULT_ESTIMATORS[t] for t, now in DEFAULT_ESTIMATORS.items() if now == estimator), None)


# The families a spec gets with `model: {candidates: recommended}` (opt-in; the default stays the
# single SGD pipeline, 20-70x cheaper a row). Chosen from
# `benchmarks/learning_quality.py` over 34 streams (linear, rule-based, RBF, regression, real):
# SGD and windowed gradient boosting competing through the gate had the best mean rank of every
# Streamfit configuration, never far behind SGD on linear streams and far ahead on non-linear ones.
# Adding windowed kNN (part 11) gained up to 0.021 on RBF streams but lost up to 0.016 on two others at
# batches of 1,000, so it is not in the set (benchmarks/README.md, "Part 11"); after parts 13-14 it still
# loses 0.0092 on one stream, on the batch holding a change that no family has learned yet (not its window).
RECOMMENDED_CANDIDATES: dict[TaskName, list[dict[str, str]]] = {
    "classification": [
        {"estimator": "sgd_classifier", "name": "sgd"},
        {"estimator": "hist_gradient_boosting_classifier", "name": "hgb"},
    ],
    "regression": [
        {"estimator": "sgd_regressor", "name": "sgd"},
        {"estimator": "hist_gradient_boosting_regressor", "name": "hgb"},
    ],
}

CLASSIFIERS = frozenset(name for name, entry in ESTIMATORS.items() if entry.task == "classification")
SCALE_OUT_ESTIMATORS = tuple(name for name, entry in ESTIMATORS.items() if entry.combiner is not None)
WINDOWED_ESTIMATORS = frozenset(name for name, entry in ESTIMATORS.items() if entry.windowed)


def entry(name: str) -> EstimatorEntry:
    """The table's entry, or an error that lists the names a spec may use."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; known: {sorted(ESTIMATORS)}")
    return ESTIMATORS[name]
