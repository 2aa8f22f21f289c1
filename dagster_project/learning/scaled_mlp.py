"""An MLP regressor that learns its labels standardized and predicts them in their own units.

Why: the pipeline's scaler standardizes the inputs, not the label, and scikit-learn's MLPRegressor
learns the label as it comes. Its weights start near zero and Adam moves each by at most about its
step (0.03) per update, so labels around 1e3 need thousands of updates to reach even their level:
over six batches of 400 rows the MAE went 1008 -> 985 -> 1009 -> 1177 -> 1192 with predictions
near 100-200, and labels around 1e9 stayed 1e9 off. Every version passed parity and was promoted.
SGD and the windowed learners learned the same data.

Here the first batch fixes an offset and a scale (its labels' mean and standard deviation), the
network learns ``(y - offset) / scale`` and predictions are mapped back. They stay fixed afterwards:
Adam's state and the weights are in those units, and a label whose level or spread later moves by a
few hundredfold is still a target the network reaches, unlike 1e3 from zero. ONNX serves a plain
MLPRegressor whose last layer has the mapping folded in (`served_estimator`), which skl2onnx converts
as it always did. Poisson loss would be learned unscaled (its exp output needs the labels' own positive units), but
skl2onnx cannot export it, so `streamfit check` refuses it (learning/exportable.py).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from sklearn.neural_network import MLPRegressor

# A first batch whose labels spread less than this against their level holds no spread (a constant;
# rounding gives it ~1e-15): its level, or 1 at level 0, is the scale instead, so later spread is not
# divided by ~0. Relative only: labels around 1e-9 that do spread are standardized like any others.
NO_SPREAD = 1e-9


def target_scaling(y: np.ndarray) -> tuple[float, float]:
    """The offset and scale a first batch's labels fix: their mean and standard deviation, or their
    level (1 at level 0) when they have no spread."""
    y = np.asarray(y, dtype=np.float64)
    finite = y[np.isfinite(y)]
    if not len(finite):
        return 0.0, 1.0
    offset, spread = float(np.mean(finite)), float(np.std(finite))
    if spread <= NO_SPREAD * abs(offset) or spread < np.finfo(np.float64).tiny:
        return offset, abs(offset) or 1.0
    return offset, spread


class TargetScaledMLPRegressor(MLPRegressor):
    """MLPRegressor on standardized labels (the module says why); its parameters are MLPRegressor's."""

    def fix_target(self, y: Any) -> None:
        """Fix the offset and scale from these labels, unless fixed already (scale-out fixes them from
        the whole batch before its groups learn, so the groups' networks are averaged in one unit)."""
        if hasattr(self, "target_scale_"):
            return
        if self.loss == "poisson":  # its exp output needs the labels' own positive units
            self.target_offset_, self.target_scale_ = 0.0, 1.0
        else:
            self.target_offset_, self.target_scale_ = target_scaling(y)

    def _scaled(self, y: Any) -> np.ndarray:
        return (np.asarray(y, dtype=np.float64) - self.target_offset_) / self.target_scale_

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> TargetScaledMLPRegressor:
        """A fit from scratch fixes the scaling from its own labels."""
        for name in ("target_offset_", "target_scale_"):
            self.__dict__.pop(name, None)
        self.fix_target(y)
        return super().fit(X, self._scaled(y), sample_weight=sample_weight)

    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> TargetScaledMLPRegressor:
        """Learn a batch in standardized units (the first batch fixes them)."""
        self.fix_target(y)
        return super().partial_fit(X, self._scaled(y), sample_weight=sample_weight)

    def predict(self, X: Any) -> np.ndarray:
        """The network's output in the labels' units."""
        return super().predict(X) * self.target_scale_ + self.target_offset_

    def served_estimator(self) -> MLPRegressor:
        """A plain MLPRegressor predicting the same: the scaling folded into the last layer (identity
        output), so skl2onnx converts it as any MLPRegressor and the graph gives the labels' units."""
        plain = MLPRegressor(**self.get_params())
        state = {k: v for k, v in self.__dict__.items() if k not in ("target_offset_", "target_scale_")}
        plain.__dict__.update(copy.deepcopy(state))
        if self.target_scale_ != 1.0 or self.target_offset_ != 0.0:
            plain.coefs_[-1] = plain.coefs_[-1] * self.target_scale_
            plain.intercepts_[-1] = plain.intercepts_[-1] * self.target_scale_ + self.target_offset_
        return plain
