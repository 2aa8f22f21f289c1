"""Outliers while learning: a value far outside what a feature (or a regressor's label) has shown
is clipped before the model learns it, so one hostile value cannot ruin the model for the rest of
its stream. The served model scores every value as sent.

Bounds are the learned mean ± ``model.clip_sigmas`` learned standard deviations, widened to the
range already learned; a feature without spread, and a batch where outliers are not rare (a regime
change), are left alone. README.md, "Outliers", has the measurements (``benchmarks.outliers``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.preprocessing import StandardScaler

# Clipping waits until the scaler has seen this many rows: a handful of rows says little about a
# feature's spread, and a legitimate value would be clipped against it.
CLIP_AFTER_ROWS = 100


def learned_scaler(model: Any) -> tuple[StandardScaler, list[int]] | None:
    """A pipeline's fitted numeric scaler and the input columns it scales (None: nothing scaled yet,
    or not a pipeline: a windowed model)."""
    steps = getattr(model, "steps", [])
    step = steps[0][1] if len(steps) > 1 else None
    if isinstance(step, StandardScaler):
        scaler, columns = step, list(range(getattr(step, "n_features_in_", 0)))
    elif isinstance(step, ColumnTransformer) and hasattr(step, "transformers_"):
        numeric = [(t, c) for name, t, c in step.transformers_ if name == "numeric" and isinstance(t, StandardScaler)]
        if not numeric:
            return None
        ((scaler, columns),) = numeric
    else:
        return None
    return (scaler, list(columns)) if hasattr(scaler, "mean_") else None


# An outlier is rare. When more of a batch's values of a feature (or its labels) than this share (and
# more than one) lie outside the bounds, the feature's regime changed and none is clipped: a spread
# grown a hundredfold, clipped, taught the model values it was never served (MAE x56 over the 2,000
# rows after the change, recovering slower the longer the history). A burst of bad values that large
# is for the features' min/max to refuse.
RARE_SHARE = 0.05


def _rare(outside: np.ndarray, rows: int) -> np.ndarray:
    """Per column (or for the labels): whether the values outside the bounds are few enough to clip."""
    return np.count_nonzero(outside, axis=0) <= max(1.0, RARE_SHARE * rows)


# A spread this small against a feature's mean is rounding, not spread (the running variance of a
# constant 20.7 is 8.5e-30, of 20.0 exactly 0): such a feature has nothing to judge by and is never
# clipped (judged by that spread, a constant sensor that starts to vary was frozen at its old value).
NO_SPREAD = 1e-9


def clip_bounds(
    mean: np.ndarray, std: np.ndarray, sigmas: float, seen_low: np.ndarray | None, seen_high: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean ± ``sigmas`` standard deviations, widened to the range already learned.

    The range matters for rare values: a 0/1 flag set on 1 row in 200 has its 1 at 14 standard
    deviations; clipped, the scaler learned a smaller spread, which clipped it further (the flag's
    learned spread fell from 0.07 to 0.015 and kept falling). A value inside what was learned before
    is never an outlier.
    """
    spread = np.where(std <= NO_SPREAD * np.maximum(1.0, np.abs(mean)), np.inf, sigmas * std)
    low, high = mean - spread, mean + spread
    if seen_low is not None and seen_high is not None:
        low, high = np.fmin(low, seen_low), np.fmax(high, seen_high)  # a range of NaN (no value yet) widens nothing
    return low, high


@dataclass(frozen=True)
class Outliers:
    """Values of a batch beyond a feature's `clip_bounds`."""

    columns: list[int]  # the scaled input columns
    low: np.ndarray  # per scaled column
    high: np.ndarray
    outside: np.ndarray  # rows x scaled columns

    @property
    def count(self) -> int:
        return int(np.count_nonzero(self.outside))


def outliers(model: Any, X: np.ndarray, sigmas: float | None) -> Outliers | None:
    """What `clip_outliers` clips in ``X`` (None: nothing). Off until the scaler has seen
    `CLIP_AFTER_ROWS` rows."""
    learned = learned_scaler(model) if sigmas is not None and len(X) else None
    if learned is None:
        return None
    scaler, columns = learned
    if np.min(scaler.n_samples_seen_) < CLIP_AFTER_ROWS:
        return None
    seen = getattr(model, "feature_range_", None)
    if seen is None:  # learned by a release before ranges were kept: `learn_feature_range` says why
        return None
    low, high = clip_bounds(scaler.mean_, np.sqrt(scaler.var_), sigmas, *seen)
    values = X[:, columns]
    outside = (values < low) | (values > high)
    clipped = _rare(outside, len(X))
    outside &= clipped
    low, high = np.where(clipped, low, -np.inf), np.where(clipped, high, np.inf)
    return Outliers(columns, low, high, outside) if outside.any() else None


def clip_outliers(model: Any, X: np.ndarray, sigmas: float | None) -> tuple[np.ndarray, int]:
    """``X`` with each scaled feature clipped to its `clip_bounds` (the learned mean ± ``sigmas``
    learned standard deviations, or the range learned if wider), and how many values were clipped.

    Why: the scaler's running moments and SGD's steps weigh a value by its size, so one in-range
    outlier (a sensor's 1e9, within the ±1e37 the contract accepts) inflated a feature's variance
    until every ordinary row scaled to about zero: one value 1,000 standard deviations out made SEA's
    accuracy over the 15,000 rows after it 0.9860 instead of 0.9945, and a Friedman regression's MAE
    was 8e8 for the rest of the stream before `estimators.stable_step_weights` (2.15 with it, 2.07
    clipped; `benchmarks.outliers`). Clipped, such a row weighs as a value ``sigmas`` out would. Learning
    only: the served model scores every value as sent.
    """
    found = outliers(model, X, sigmas)
    if found is None:
        return X, 0
    X = X.copy()
    X[:, found.columns] = np.clip(X[:, found.columns], found.low, found.high)
    return X, found.count


def learn_feature_range(model: Any, X: np.ndarray) -> None:
    """Widen the model's learned range of each scaled feature (``feature_range_``: lows, highs) to
    a batch's (clipped) rows, once its scaler has learned them.

    A model whose scaler learned rows before it had a range (pickled by a release without clipping)
    gets the whole real line: what it learned is unknown, and a range begun now would miss a rare
    legitimate value (a 0/1 flag on 1 row in 300, whose 1 is 17 standard deviations out), clip it
    and learn it clipped for good (its rows' error rose from 0.26 to 16.8). Its features are not
    clipped, as they were not before; a retrain starts a model that is.
    """
    learned = learned_scaler(model)
    if learned is None or not len(X):
        return
    scaler, columns = learned
    values = X[:, columns]
    low, high = np.fmin.reduce(values, axis=0), np.fmax.reduce(values, axis=0)  # NaN never wins
    seen = getattr(model, "feature_range_", None)
    if seen is None and np.min(scaler.n_samples_seen_) > len(X):  # it learned before this batch
        low, high = np.full(len(columns), -np.inf), np.full(len(columns), np.inf)
    if seen is not None and len(seen[0]) == len(low):
        low, high = np.fmin(low, seen[0]), np.fmax(high, seen[1])
    model.feature_range_ = (low, high)


@dataclass
class LabelMoments:
    """A regression model's running count, mean, sum of squared deviations and range of the labels it
    learned (kept on the pipeline as ``label_moments_``, pickled with it): what `clip_labels` judges by."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    low: float = np.inf
    high: float = -np.inf

    def update(self, y: np.ndarray) -> None:
        """Fold a batch's labels in (Chan et al.'s parallel formula: the same as one pass over all)."""
        if not len(y):
            return
        n, mean = len(y), float(np.mean(y))
        m2 = float(np.sum((y - mean) ** 2))
        total = self.n + n
        delta = mean - self.mean
        self.m2 += m2 + delta * delta * self.n * n / total
        self.mean += delta * n / total
        self.n = total
        self.low, self.high = float(np.fmin(self.low, np.fmin.reduce(y))), float(np.fmax(self.high, np.fmax.reduce(y)))

    @property
    def std(self) -> float:
        return (self.m2 / self.n) ** 0.5 if self.n else 0.0


def label_bounds(model: Any, sigmas: float | None) -> tuple[float, float] | None:
    """The labels' `clip_bounds` (None: no clipping yet: fewer than `CLIP_AFTER_ROWS` learned)."""
    moments = getattr(model, "label_moments_", None)
    if sigmas is None or moments is None or moments.n < CLIP_AFTER_ROWS:
        return None
    low, high = clip_bounds(
        np.float64(moments.mean), np.float64(moments.std), sigmas, np.float64(moments.low), np.float64(moments.high)
    )
    return (float(low), float(high)) if np.isfinite(low) or np.isfinite(high) else None


def label_outliers(model: Any, y: np.ndarray, sigmas: float | None) -> tuple[tuple[float, float], np.ndarray] | None:
    """The label bounds and which of a batch's labels `clip_labels` clips (None: none)."""
    bounds = label_bounds(model, sigmas)
    if bounds is None or not len(y):
        return None
    outside = (y < bounds[0]) | (y > bounds[1])
    return (bounds, outside) if outside.any() and _rare(outside, len(y)) else None


def clip_labels(model: Any, y: np.ndarray, sigmas: float | None) -> tuple[np.ndarray, int]:
    """A regression batch's labels clipped to `label_bounds`, and how many were (as `clip_outliers`
    does for features).

    Why: SGD's step grows with the error, so one label in the wrong unit (1e6 standard deviations
    out) made Friedman's MAE 1,234 instead of 2.07 for the rest of the stream, with no drift retrain.
    """
    found = label_outliers(model, y, sigmas)
    if found is None:
        return y, 0
    return np.clip(y, *found[0]), int(np.count_nonzero(found[1]))


def learn_labels(model: Any, y: np.ndarray, sigmas: float | None) -> np.ndarray:
    """A regression batch's labels clipped (`clip_labels`), then folded into the model's
    `LabelMoments`: what learning sees. One function for the sequential and the fanned-out path."""
    y, _ = clip_labels(model, np.asarray(y, dtype=np.float64), sigmas)
    moments = getattr(model, "label_moments_", None)
    if moments is None:  # a model that learned labels before they were kept: all of them count as learned
        moments = model.label_moments_ = LabelMoments(*(() if _unfitted(model) else (0, 0.0, 0.0, -np.inf, np.inf)))
    moments.update(y)
    return y


def _unfitted(model: Any) -> bool:
    """Whether the model's estimator has learned nothing yet."""
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(model.steps[-1][1] if hasattr(model, "steps") else model)
    except NotFittedError:
        return True
    return False
