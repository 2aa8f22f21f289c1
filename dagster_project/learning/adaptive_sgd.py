"""SGD that picks its own step per batch: copies at several steps learn every batch, the best serves.

Why (benchmarks/README.md, parts 19-20): with a constant step the accuracy of an SGD micro-batch
learner is set by its total step per batch (passes x eta0), and which total is right depends on the
stream, not on the batch size: a quarter of the default's step closes the gap to River's logistic
regression on noisy-label streams (Agrawal, Hyperplane) and loses on clean or clustered ones (STAGGER,
RBF). Running both as two families through the promotion gate (`sgd_gate2`) picked well, but judges
them on the gate's held-out tail of each batch only, retrains them as two families, and cost 3-5x.

Here every copy is scored on each batch *before* it learns it (test-then-train inside the estimator,
so each score is on rows no copy has seen), the scores are summed with a half-life in rows, and
predictions come from the copy with the lowest recent loss. A classifier counts its errors by default:
log loss picked the sharper eight-pass copy on Hyperplane while it made more errors, and the errors
criterion was the one that held on held-out streams (part 21). Every copy then learns the batch, so a
copy that loses now can win later (after a change, say). The served model is always one plain
`SGDClassifier`/`SGDRegressor`; ONNX export converts that copy (`served_estimator`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.linear_model import SGDClassifier, SGDRegressor

from dagster_project.learning.estimators import fit_estimator

# Passes over each batch of the copies, at the same eta0: the default's eight and a quarter of it.
PASSES_OPTIONS = (8, 2)
# `max_passes`: a copy's step above this many passes is taken as this many passes at a proportionally
# larger eta0 (with 8, a 32-pass step is 8 passes at 4x eta0), so a large step costs no more than the
# default's passes. None (the default): every copy runs its passes at eta0.
MAX_PASSES: int | None = None
# How many rows back a copy's loss still counts half: long enough that the paired difference of two
# similar linear models rises above its noise, short enough to follow a change within a few batches.
HALFLIFE_ROWS = 2_000
_PROBA_FLOOR = 1e-7  # log loss of a probability clipped here (one confident miss cannot decide alone)


class _AdaptiveSGD(BaseEstimator):
    """The shared logic; the task's mixin and copy class come from the subclasses below."""

    _copy_class: type = SGDClassifier
    _criteria: tuple[str, ...] = ()

    def __init__(
        self,
        loss: str = "log_loss",
        learning_rate: str = "constant",
        eta0: float = 0.005,
        penalty: str | None = None,
        random_state: int | None = None,
        passes_options: tuple[int, ...] = PASSES_OPTIONS,
        halflife_rows: int = HALFLIFE_ROWS,
        criterion: str = "errors",
        max_passes: int | None = MAX_PASSES,
    ) -> None:
        self.loss = loss
        self.learning_rate = learning_rate
        self.eta0 = eta0
        self.penalty = penalty
        self.random_state = random_state
        self.passes_options = passes_options
        self.halflife_rows = halflife_rows
        self.criterion = criterion
        self.max_passes = max_passes

    def _validate_params(self) -> None:
        """Refuse settings a spec got wrong, naming the value (the copies' SGD parameters included)."""
        self._new_copies()

    def _new_copies(self) -> list[Any]:
        options = self.passes_options
        if not options or not all(isinstance(p, int) and p >= 1 for p in options):
            raise ValueError(f"passes_options must be passes of at least 1, got {options!r}")
        if not isinstance(self.halflife_rows, int | float) or self.halflife_rows <= 0:
            raise ValueError(f"halflife_rows must be positive, got {self.halflife_rows!r}")
        if self.criterion not in self._criteria:
            raise ValueError(f"criterion must be one of {self._criteria}, got {self.criterion!r}")
        if self.max_passes is not None and (not isinstance(self.max_passes, int) or self.max_passes < 1):
            raise ValueError(f"max_passes must be at least 1 (or null: no cap), got {self.max_passes!r}")
        copies = [
            self._copy_class(
                loss=self.loss,
                learning_rate=self.learning_rate,
                eta0=self.eta0 * max(1.0, passes / (self.max_passes or passes)),
                penalty=self.penalty,
                random_state=self.random_state,
            )
            for passes in options
        ]
        for copy in copies:
            copy._validate_params()
        return copies

    def _passes_run(self, passes: int) -> int:
        """The passes a copy really makes over a batch (its step beyond `max_passes` is in its eta0)."""
        return passes if self.max_passes is None else min(passes, self.max_passes)

    def partial_fit(self, X: Any, y: Any, classes: Any = None, sample_weight: Any = None) -> _AdaptiveSGD:
        """Score every copy on the batch, then let every copy learn it at its own passes."""
        if sample_weight is not None:
            raise ValueError("adaptive SGD takes no sample_weight")
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y)
        if not hasattr(self, "copies_"):
            self.copies_ = self._new_copies()
            self.recent_loss_ = np.zeros(len(self.copies_))
            self.rows_scored_ = 0
            self.served_ = 0
        else:
            decay = 0.5 ** (len(X) / self.halflife_rows)
            self.recent_loss_ = self.recent_loss_ * decay + [self._batch_loss(c, X, y) for c in self.copies_]
            self.rows_scored_ += len(X)
            self.served_ = int(np.argmin(self.recent_loss_))  # ties: the first (the default's step)
        for copy, passes in zip(self.copies_, self.passes_options, strict=True):
            fit_estimator(copy, X, y, classes, self._passes_run(passes))
        return self

    def fit(self, X: Any, y: Any, classes: Any = None) -> _AdaptiveSGD:
        """Forget everything, then learn `X` as one batch (scikit-learn's estimator contract)."""
        for name in ("copies_", "recent_loss_", "rows_scored_", "served_"):
            self.__dict__.pop(name, None)
        if classes is None and isinstance(self, ClassifierMixin):
            classes = np.unique(y)
        return self.partial_fit(X, y, classes)

    def _batch_loss(self, copy: Any, X: np.ndarray, y: np.ndarray) -> float:
        raise NotImplementedError

    def measure(self) -> str:
        """What the copies are scored by (the criterion, unless the loss gives no probabilities)."""
        return self.criterion

    def describe(self) -> dict[str, Any]:
        """Which step serves and why: every copy's passes and recent loss. The `model` asset's
        metadata shows it, so a user sees the step a stream settled on (empty before a batch)."""
        if not hasattr(self, "copies_"):
            return {}
        return {
            "serving_passes": self.passes_options[self.served_],
            "recent_loss": {
                f"{p}_passes": float(v) for p, v in zip(self.passes_options, self.recent_loss_, strict=True)
            },
            "measure": self.measure(),
            "halflife_rows": self.halflife_rows,
            "rows_scored": self.rows_scored_,
            **({"max_passes": self.max_passes} if self.max_passes is not None else {}),
        }

    def served_estimator(self) -> Any:
        """The copy that serves now: what predictions, ONNX export and parity use."""
        if not hasattr(self, "copies_"):
            raise AttributeError("adaptive SGD has not learned a batch yet")
        return self.copies_[self.served_]

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "copies_")

    def predict(self, X: Any) -> np.ndarray:
        return self.served_estimator().predict(X)

    # The serving copy's weights, read and written through (what a plain SGD model exposes).
    @property
    def coef_(self) -> np.ndarray:
        return self.served_estimator().coef_

    @coef_.setter
    def coef_(self, value: np.ndarray) -> None:
        self.served_estimator().coef_ = value

    @property
    def intercept_(self) -> np.ndarray:
        return self.served_estimator().intercept_

    @intercept_.setter
    def intercept_(self, value: np.ndarray) -> None:
        self.served_estimator().intercept_ = value


class AdaptiveSGDClassifier(ClassifierMixin, _AdaptiveSGD):
    """Log-loss SGD copies at several steps per batch; predicts with the copy of fewest recent errors
    (or lowest recent Brier score or log loss: `criterion`)."""

    _copy_class = SGDClassifier
    _criteria = ("log_loss", "brier", "errors")

    def measure(self) -> str:
        probabilities = self.loss in ("log_loss", "modified_huber")
        return self.criterion if probabilities else "errors"  # no probabilities (hinge): errors

    def _batch_loss(self, copy: Any, X: np.ndarray, y: np.ndarray) -> float:
        if self.measure() == "errors":
            return float(np.sum(copy.predict(X) != y))
        proba = copy.predict_proba(X)
        if self.criterion == "brier":
            truth = copy.classes_[None, :] == np.asarray(y)[:, None]
            return float(((proba - truth) ** 2).sum())
        column = np.searchsorted(copy.classes_, y)
        column = np.clip(column, 0, len(copy.classes_) - 1)
        p = proba[np.arange(len(y)), column]
        p = np.where(copy.classes_[column] == y, p, 0.0)
        return float(-np.log(np.clip(p, _PROBA_FLOOR, 1.0)).sum())

    @property
    def classes_(self) -> np.ndarray:
        return self.served_estimator().classes_

    def predict_proba(self, X: Any) -> np.ndarray:
        return self.served_estimator().predict_proba(X)

    def decision_function(self, X: Any) -> np.ndarray:
        return self.served_estimator().decision_function(X)


class AdaptiveSGDRegressor(RegressorMixin, _AdaptiveSGD):
    """Squared-error SGD copies at several steps per batch; predicts with the lowest recent error."""

    _copy_class = SGDRegressor
    _criteria = ("squared_error",)

    def __init__(
        self,
        loss: str = "squared_error",
        learning_rate: str = "constant",
        eta0: float = 0.005,
        penalty: str | None = None,
        random_state: int | None = None,
        passes_options: tuple[int, ...] = PASSES_OPTIONS,
        halflife_rows: int = HALFLIFE_ROWS,
        criterion: str = "squared_error",
        max_passes: int | None = MAX_PASSES,
    ) -> None:
        super().__init__(
            loss, learning_rate, eta0, penalty, random_state, passes_options, halflife_rows, criterion, max_passes
        )

    def _batch_loss(self, copy: Any, X: np.ndarray, y: np.ndarray) -> float:
        return float(np.sum((copy.predict(X) - y) ** 2))


def step_of(model: Any) -> dict[str, Any]:
    """`describe()` of a pipeline's adaptive SGD (the step it serves and why); {} for any other model."""
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    return final.describe() if isinstance(final, _AdaptiveSGD) else {}
