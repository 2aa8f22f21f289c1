"""An MLP regressor that learns its labels standardized and predicts them in their own units.

Why: the pipeline's scaler standardizes the inputs, not the label, and scikit-learn's MLPRegressor
learns the label as it comes. Its weights start near zero and Adam moves each by at most about its
step (0.03) per update, so labels around 1e3 need thousands of updates to reach even their level:
over six batches of 400 rows the MAE went 1008 -> 985 -> 1009 -> 1177 -> 1192 with predictions
near 100-200, and labels around 1e9 stayed 1e9 off. Every version passed parity and was promoted.
SGD and the windowed learners learned the same data.

Here the labels fix an offset and a scale (their mean and standard deviation), the network learns
``(y - offset) / scale`` and predictions are mapped back. Until `UNITS_FROM_LABELS` labels have
been seen the units follow the running mean and spread of every label so far, and each change
re-expresses the network in the new units (`_reexpress`: the same predictions, a fresh optimiser).
Units fixed by a first batch of two labels 0.01 apart (a slow stream's batch cut by
``batch.max_wait_s``, or one whose labels were mostly missing) had a scale of 0.005, and the MAE
stayed at that of predicting the mean (about 80) for good; now it falls as from a full first batch.
After that the units stay fixed: Adam's state and the weights are in them, and a label whose level
or spread later moves by a few hundredfold is still a target the network reaches, unlike 1e3 from
zero. ONNX serves a plain MLPRegressor whose last layer has the mapping folded in
(`served_estimator`), which skl2onnx converts as it always did.
Poisson loss would be learned unscaled (its exp output needs the labels' own positive units), but
skl2onnx cannot export it, so `streamfit check` refuses it (learning/exportable.py).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from sklearn.neural_network import MLPRegressor

# Labels whose spread is less than this against their level hold no spread (a constant; rounding
# gives it ~1e-15): their level, or 1 at level 0, is the scale instead, so later spread is not
# divided by ~0. Relative only: labels around 1e-9 that do spread are standardized like any others.
NO_SPREAD = 1e-9

# Labels after which the units are fixed for good. n labels' mean and spread are off by about
# 1/sqrt(n) and 1/sqrt(2n) of the true spread (0.07 and 0.05 at 200): the network then learns a
# target of level within 0.07 and spread 0.95-1.05, as well as a standardized one, so more labels
# would buy nothing but keep re-expressing a network under way. A first batch of 200 labels or
# more (batch.rows defaults to 1,000) fixes them at once, as before.
UNITS_FROM_LABELS = 200


def scaling_of(mean: float, spread: float) -> tuple[float, float]:
    """The offset and scale of labels of this mean and standard deviation: those two, or the level
    (1 at level 0) when they have no spread."""
    if spread <= NO_SPREAD * abs(mean) or spread < np.finfo(np.float64).tiny:
        return mean, abs(mean) or 1.0
    return mean, spread


def target_scaling(y: np.ndarray) -> tuple[float, float]:
    """The offset and scale these labels fix (`scaling_of` their finite ones; (0, 1) for none)."""
    y = np.asarray(y, dtype=np.float64)
    finite = y[np.isfinite(y)]
    if not len(finite):
        return 0.0, 1.0
    return scaling_of(float(np.mean(finite)), float(np.std(finite)))


@contextmanager
def target_held(estimator: Any) -> Iterator[Any]:
    """Within it a target-scaled estimator's ``partial_fit`` learns no label units: the batch's labels
    were counted once already (by an earlier pass over them, or by scale-out's whole batch before its
    groups copied the model: a copy counting its own rows would average networks in other units)."""
    if not hasattr(estimator, "learn_target") or getattr(estimator, "target_held_", False):
        yield estimator
        return
    estimator.target_held_ = True
    try:
        yield estimator
    finally:
        estimator.__dict__.pop("target_held_", None)


class TargetScaledMLPRegressor(MLPRegressor):
    """MLPRegressor on standardized labels (the module says why); its parameters are MLPRegressor's."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A model pickled before the units followed the labels had them fixed by its first batch:
        it keeps them (counted as fixed), as it learned."""
        super().__setstate__(state)
        if "target_scale_" in self.__dict__ and "target_fixed_" not in self.__dict__:
            self.target_fixed_ = True
            self.target_labels_, self.target_mean_, self.target_m2_ = 0, float(self.target_offset_), 0.0

    def learn_target(self, y: Any) -> None:
        """Fold these labels into the units while fewer than `UNITS_FROM_LABELS` were seen (their
        running mean and spread, Chan's merge of Welford's moments), re-expressing the network if
        they change; a no-op once fixed. Scale-out calls it on the whole batch before its groups
        copy the model, and the copies learn none (`target_held`): every copy has the same units."""
        if getattr(self, "target_fixed_", False):
            return
        if self.loss == "poisson":  # its exp output needs the labels' own positive units
            self._reexpress(0.0, 1.0)
            self.target_labels_, self.target_mean_, self.target_m2_, self.target_fixed_ = 0, 0.0, 0.0, True
            return
        y = np.asarray(y, dtype=np.float64).ravel()
        finite = y[np.isfinite(y)]
        n0, mean0, m20 = (
            getattr(self, "target_labels_", 0),
            getattr(self, "target_mean_", 0.0),
            getattr(self, "target_m2_", 0.0),
        )
        n, mean, m2 = n0, mean0, m20
        if len(finite):
            k, batch_mean = len(finite), float(np.mean(finite))
            n = n0 + k
            delta = batch_mean - mean0
            mean = mean0 + delta * k / n
            m2 = m20 + float(np.sum((finite - batch_mean) ** 2)) + delta * delta * n0 * k / n
        self.target_labels_, self.target_mean_, self.target_m2_ = n, mean, m2
        self._reexpress(*(scaling_of(mean, (m2 / n) ** 0.5) if n else (0.0, 1.0)))
        self.target_fixed_ = n >= UNITS_FROM_LABELS

    def _reexpress(self, offset: float, scale: float) -> None:
        """Adopt new units, the network re-expressed in them so it predicts exactly as before.

        The last layer maps as ``w * s_old / s_new`` and ``(b * s_old + o_old - o_new) / s_new``; the
        recorded losses scale by ``(s_old / s_new) ** 2``. The optimiser starts over (scikit-learn
        makes a fresh one at the next ``partial_fit``): its moments are gradients in the old units,
        and this happens only while the units are open, in the network's first few steps. Rescaling
        them instead (first moments by ``r = s_old / s_new`` for the last layer and ``r**2`` before
        it, where the error and the last weights both scale; second moments by the squares) learned
        slightly worse over 12 streams (MAE of the first 400-row batches 71, 47, 41 against 54, 39,
        34 after 2 then 4 x 50 labels), and resetting one layer's moments is wrong: scikit-learn's one
        step count would skip their bias correction (steps up to ~10x Adam's size).
        """
        old_offset, old_scale = getattr(self, "target_offset_", None), getattr(self, "target_scale_", None)
        if old_offset is not None and old_scale is not None and hasattr(self, "coefs_"):
            if (old_offset, old_scale) == (offset, scale):
                return
            r = old_scale / scale
            self.coefs_[-1] = self.coefs_[-1] * r
            self.intercepts_[-1] = (self.intercepts_[-1] * old_scale + (old_offset - offset)) / scale
            self.__dict__.pop("_optimizer", None)
            if getattr(self, "loss_", None) is not None:
                self.loss_ = self.loss_ * r * r
            if getattr(self, "best_loss_", None) is not None:
                self.best_loss_ = self.best_loss_ * r * r
            if getattr(self, "loss_curve_", None):
                self.loss_curve_ = [value * r * r for value in self.loss_curve_]
        self.target_offset_, self.target_scale_ = offset, scale

    def _scaled(self, y: Any) -> np.ndarray:
        return (np.asarray(y, dtype=np.float64) - self.target_offset_) / self.target_scale_

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> TargetScaledMLPRegressor:
        """A fit from scratch learns the units from its own labels."""
        for name in [k for k in self.__dict__ if k.startswith("target_")]:
            del self.__dict__[name]
        self.learn_target(y)
        return super().fit(X, self._scaled(y), sample_weight=sample_weight)

    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> TargetScaledMLPRegressor:
        """Learn a batch in standardized units, its labels counted towards them first (unless held)."""
        if not getattr(self, "target_held_", False):
            self.learn_target(y)
        return super().partial_fit(X, self._scaled(y), sample_weight=sample_weight)

    def predict(self, X: Any) -> np.ndarray:
        """The network's output in the labels' units."""
        return super().predict(X) * self.target_scale_ + self.target_offset_

    def served_estimator(self) -> MLPRegressor:
        """A plain MLPRegressor predicting the same: the scaling folded into the last layer (identity
        output), so skl2onnx converts it as any MLPRegressor and the graph gives the labels' units."""
        plain = MLPRegressor(**self.get_params())
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("target_")}
        plain.__dict__.update(copy.deepcopy(state))
        if self.target_scale_ != 1.0 or self.target_offset_ != 0.0:
            plain.coefs_[-1] = plain.coefs_[-1] * self.target_scale_
            plain.intercepts_[-1] = plain.intercepts_[-1] * self.target_scale_ + self.target_offset_
        return plain
