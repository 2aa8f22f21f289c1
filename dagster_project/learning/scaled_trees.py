"""Forest regressors that learn their window's labels standardized, and serve plain forests.

Why: scikit-learn's tree builder treats a node whose impurity (the labels' variance) is below
machine epsilon (2.2e-16) as pure and never splits it. Labels around 1e-9 vary by ~1e-18, so
`random_forest_regressor` and `extra_trees_regressor` were single leaves predicting the window's
mean (relative MAE 1.00 at 1e-9 and 1e-12, 0.07-0.10 at 1 and 1e6, same data). Gradient boosting
fits gradients and kNN averages neighbours' labels: both learned every scale alike, and are unchanged.

Each fit (a windowed model refits from scratch) standardizes its own labels (`target_scaling`, as
`scaled_mlp` does for the MLP) and predictions are mapped back. ONNX serves a plain forest whose leaf
values have the mapping folded in (`served_estimator`): every tree's leaf maps alike and the forest
averages its trees, so the average maps too. The Poisson criterion needs positive labels: it is
scaled by their level alone (its splits do not change with a positive scale).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor

from dagster_project.learning.scaled_mlp import target_scaling


class _TargetScaledForest:
    """fit/predict on standardized labels; `served_estimator` is the plain forest with the scale folded in."""

    _plain: type  # the scikit-learn forest this one serves as

    def _fix_target(self, y: np.ndarray) -> None:
        if getattr(self, "criterion", None) == "poisson":  # labels must stay positive: scale, no offset
            level = float(np.mean(y[np.isfinite(y)])) if np.isfinite(y).any() else 1.0
            self.target_offset_, self.target_scale_ = 0.0, level if level > 0 else 1.0
        else:
            self.target_offset_, self.target_scale_ = target_scaling(y)

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> Any:
        """Fit on this window's labels standardized by their own mean and spread."""
        y = np.asarray(y, dtype=np.float64)
        self._fix_target(y)
        return super().fit(X, (y - self.target_offset_) / self.target_scale_, sample_weight=sample_weight)  # type: ignore[misc]

    def predict(self, X: Any) -> np.ndarray:
        """The forest's average in the labels' units."""
        return super().predict(X) * self.target_scale_ + self.target_offset_  # type: ignore[misc]

    def served_estimator(self) -> Any:
        """A plain forest predicting the same, each leaf's value mapped back (skl2onnx converts it as any forest)."""
        plain = self._plain(**self.get_params())  # type: ignore[attr-defined]
        state = {k: v for k, v in self.__dict__.items() if k not in ("target_offset_", "target_scale_")}
        plain.__dict__.update(copy.deepcopy(state))
        for tree in plain.estimators_:
            values = tree.tree_.value  # a writable view of the tree's leaf and node values
            values[...] = values * self.target_scale_ + self.target_offset_
        return plain


class TargetScaledRandomForestRegressor(_TargetScaledForest, RandomForestRegressor):
    """RandomForestRegressor on standardized labels (the module says why), with its parameters."""

    _plain = RandomForestRegressor


class TargetScaledExtraTreesRegressor(_TargetScaledForest, ExtraTreesRegressor):
    """ExtraTreesRegressor on standardized labels (the module says why), with its parameters."""

    _plain = ExtraTreesRegressor
