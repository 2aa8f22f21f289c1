"""Scale-out training: split a micro-batch into partition groups, fit each, combine them exactly as one.

Data parallelism as Dagster steps. A batch's partitions are split round-robin into
``workers`` groups (partition ``p`` goes to group ``p % workers``, so a partition keeps its group
from batch to batch). Then:

1. **Scaler, exactly.** Each group's feature moments (count, mean, M2) are merged into the parent's
   ``StandardScaler`` with Chan et al.'s parallel-variance formulas, which equal ``partial_fit`` on
   all rows (up to rounding); every group is transformed by that one merged scaler, so all learners
   work, and are averaged, in the same feature space.
2. **Estimator, per group.** Each group's step (``fit_group``) updates its own copy of the parent
   estimator with its group's rows (``partial_fit``, one pass, as the sequential path does).
3. **Combine**, by the estimator table's ``combiner``: SGD (incl. passive-aggressive) and MLP take
   row-weighted averages of parameters and optimiser state; naive Bayes merges sufficient
   statistics exactly, so it equals sequential fitting.

Where the groups run: ``split`` -> ``fit_group`` per group -> ``combine`` are three plain functions.
The training job runs them as Dagster steps (``assets/scale_out.py``: one step per group, distributed
by the multiprocess executor on one machine or ``k8s_job_executor`` on a cluster); ``fit`` runs the
same three in one process for callers outside a job (retraining replays, tests, benchmarks).

With ``workers == 1``, too few rows (``min_rows_per_worker``) or a single non-empty group, the
sequential ``estimators.partial_fit`` runs: one group holding the whole pipeline.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from dagster_project.learning.estimator_table import SCALE_OUT_ESTIMATORS, entry
from dagster_project.learning.estimators import fit_estimator, partial_fit
from dagster_project.learning.outliers import clip_outliers, learn_feature_range, learn_labels
from dagster_project.spec import StreamSpec


@dataclass(frozen=True)
class ScaleOutReport:
    """What one fit did: how many processes, on how many rows each, combined how, in how long."""

    workers: int  # groups fitted separately (1: the sequential path)
    method: str  # "sequential", "average" (SGD, MLP) or "exact" (naive Bayes)
    groups: list[list[int]] = field(default_factory=list)  # partitions per group
    group_rows: list[int] = field(default_factory=list)
    fit_seconds: float = 0.0  # scaler merge, the groups' fits (summed) and the combine
    group_fit_seconds: list[float] = field(default_factory=list)  # each group's own fit
    reason: str = ""

    def as_metadata(self) -> dict[str, Any]:
        """Numeric keys for Dagster's plots plus a readable summary."""
        return {
            "scale_out_workers": self.workers,
            "scale_out_fit_seconds": self.fit_seconds,
            "scale_out": {
                "method": self.method,
                "groups": [f"p{','.join(map(str, g))}" for g in self.groups],
                "group_rows": self.group_rows,
                "group_fit_seconds": [round(t, 4) for t in self.group_fit_seconds],
                "reason": self.reason,
            },
        }

    def metrics(self) -> dict[str, float | int]:
        """The numeric part, recorded with the version's metrics in meta.json."""
        return {"scale_out_workers": self.workers, "scale_out_fit_seconds": self.fit_seconds}


# ---------------------------------------------------------------------------------------------
# Planning


def partition_groups(partitions: np.ndarray, workers: int) -> list[tuple[list[int], np.ndarray]]:
    """Row indices per group of partitions (``p % workers``), in group order; empty groups dropped."""
    partitions = np.asarray(partitions)
    out = []
    for g in range(workers):
        members = sorted(int(p) for p in np.unique(partitions) if p % workers == g)
        if members:
            out.append((members, np.flatnonzero(np.isin(partitions, members))))
    return out


def plan_workers(spec: StreamSpec, partitions: np.ndarray) -> tuple[int, str]:
    """How many workers this batch gets, and why (fewer than configured when rows or partitions are few)."""
    configured = spec.model.scale_out.workers
    if configured <= 1:
        return 1, "scale-out is off (workers: 1)"
    rows = len(partitions)
    by_rows = rows // spec.model.scale_out.min_rows_per_worker
    by_partitions = len(np.unique(partitions))
    workers = min(configured, by_rows, by_partitions)
    if workers <= 1:
        limit = "rows" if by_rows <= by_partitions else "partitions"
        return 1, (
            f"{rows} rows over {by_partitions} partition(s): too few {limit} for "
            f"{configured} workers (min_rows_per_worker {spec.model.scale_out.min_rows_per_worker})"
        )
    reason = f"{workers} of {configured} workers" if workers < configured else f"{workers} workers"
    return workers, reason


# ---------------------------------------------------------------------------------------------
# Exact merges of moments (Chan, Golub & LeVeque's pairwise update)


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations (M2) per column: mergeable without the rows."""

    n: float
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def of(cls, X: np.ndarray) -> Moments:
        mean = X.mean(axis=0)
        return cls(float(len(X)), mean, ((X - mean) ** 2).sum(axis=0))

    @classmethod
    def from_var(cls, n: float, mean: np.ndarray, var: np.ndarray) -> Moments:
        return cls(float(n), np.asarray(mean, dtype=np.float64), np.asarray(var, dtype=np.float64) * n)

    @property
    def var(self) -> np.ndarray:
        return self.m2 / self.n if self.n else np.zeros_like(self.m2)

    def merge(self, other: Moments) -> Moments:
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        # The same expression scikit-learn's GaussianNB uses, so NB merges agree with it to rounding.
        mean = (other.n * other.mean + self.n * self.mean) / n
        return Moments(n, mean, self.m2 + other.m2 + (self.n * other.n / n) * delta**2)


def merge_scaler(scaler: StandardScaler, groups: list[np.ndarray]) -> StandardScaler:
    """Fold each group's moments into ``scaler`` (fitted or not), as ``partial_fit`` on all rows would."""
    if not (scaler.with_mean and scaler.with_std):
        raise ValueError("scale-out merges the default StandardScaler (with_mean and with_std) only")
    width = groups[0].shape[1]
    if hasattr(scaler, "n_samples_seen_"):
        total = Moments.from_var(float(np.max(scaler.n_samples_seen_)), scaler.mean_, scaler.var_)
    else:
        total = Moments(0.0, np.zeros(width), np.zeros(width))
    batch = Moments(0.0, np.zeros(width), np.zeros(width))
    for X in groups:
        batch = batch.merge(Moments.of(X))
    total = total.merge(batch)
    scaler.mean_ = total.mean
    scaler.var_ = total.var
    # scikit-learn's _handle_zeros_in_scale: a constant column keeps scale 1, not 0.
    scale = np.sqrt(scaler.var_)
    scale[scale < 10 * np.finfo(scale.dtype).eps] = 1.0
    scaler.scale_ = scale
    scaler.n_samples_seen_ = np.float64(total.n)  # the type partial_fit leaves when no value is NaN
    scaler.n_features_in_ = width
    return scaler


# ---------------------------------------------------------------------------------------------
# Combining the workers' estimators


def _weights(rows: list[int]) -> np.ndarray:
    w = np.asarray(rows, dtype=np.float64)
    return w / w.sum()


def _mean(arrays: list[np.ndarray], w: np.ndarray) -> np.ndarray:
    return sum(wi * np.asarray(a, dtype=np.float64) for wi, a in zip(w, arrays, strict=True))


def _combine_sgd(parent: BaseEstimator, fitted: list[Any], rows: list[int], var_max: float) -> Any:
    """SGD and passive-aggressive: row-weighted mean of coef_/intercept_; ``t_`` = parent + all rows.

    ``t_`` drives the learning-rate schedules, so it counts every row the combined model has seen.
    With ``average`` (ASGD), the plain weights are row-averaged and the averaged weights are merged as
    the running means they are: the parent's average, plus each worker's new terms, each weighted by
    how many steps it averaged.
    """
    w = _weights(rows)
    merged = copy.deepcopy(fitted[0])
    t0 = float(getattr(parent, "t_", 1.0))
    merged.t_ = t0 + sum(float(f.t_) - t0 for f in fitted)
    if not merged.average:
        merged.coef_ = _mean([f.coef_ for f in fitted], w)
        merged.intercept_ = _mean([f.intercept_ for f in fitted], w)
        return merged
    start = float(merged.average)

    def steps(t: float) -> float:  # how many iterates a running average has taken in, at t_
        return max(0.0, t - start)

    k0 = steps(t0)
    parent_avg = getattr(parent, "_average_coef", None)
    parent_avg_b = getattr(parent, "_average_intercept", None)
    zero = np.zeros_like(fitted[0]._average_coef)
    parent_avg = zero if parent_avg is None or k0 == 0 else parent_avg
    parent_avg_b = np.zeros_like(fitted[0]._average_intercept) if parent_avg_b is None or k0 == 0 else parent_avg_b
    ks = [steps(float(f.t_)) for f in fitted]
    total = k0 + sum(k - k0 for k in ks)
    merged._standard_coef = _mean([f._standard_coef for f in fitted], w)
    merged._standard_intercept = _mean([f._standard_intercept for f in fitted], w)
    if total > 0:
        merged._average_coef = (
            sum(k * f._average_coef for k, f in zip(ks, fitted, strict=True)) - (len(fitted) - 1) * k0 * parent_avg
        ) / total
        merged._average_intercept = (
            sum(k * f._average_intercept for k, f in zip(ks, fitted, strict=True))
            - (len(fitted) - 1) * k0 * parent_avg_b
        ) / total
    use_average = merged.average <= merged.t_ - 1
    coef = merged._average_coef if use_average else merged._standard_coef
    intercept = merged._average_intercept if use_average else merged._standard_intercept
    merged.coef_ = coef.reshape(fitted[0].coef_.shape)
    merged.intercept_ = np.atleast_1d(intercept)
    return merged


def _combine_adaptive_sgd(parent: BaseEstimator, fitted: list[Any], rows: list[int], var_max: float) -> Any:
    """Adaptive SGD: each copy combined as SGD is; the recent losses merged exactly.

    Every group scored its rows with the parent's copies before learning them, so the batch's loss is
    the sum of the groups' new terms, discounted by the whole batch's rows as one call would be.
    """
    merged = copy.deepcopy(fitted[0])
    parent_copies = getattr(parent, "copies_", None)
    merged.copies_ = [
        _combine_sgd(
            parent_copies[i] if parent_copies is not None else clone(f0), [f.copies_[i] for f in fitted], rows, var_max
        )
        for i, f0 in enumerate(fitted[0].copies_)
    ]
    before = getattr(parent, "recent_loss_", np.zeros(len(merged.copies_)))
    scored_before = getattr(parent, "rows_scored_", 0)
    half = parent.halflife_rows
    new_terms = sum(f.recent_loss_ - before * 0.5 ** (n / half) for f, n in zip(fitted, rows, strict=True))
    merged.recent_loss_ = before * 0.5 ** (sum(rows) / half) + new_terms
    merged.rows_scored_ = scored_before + sum(f.rows_scored_ - scored_before for f in fitted)
    merged.served_ = int(np.argmin(merged.recent_loss_))  # all zeros before any score: the first copy
    return merged


def _combine_mlp(parent: BaseEstimator, fitted: list[Any], rows: list[int], var_max: float) -> Any:
    """MLP: row-weighted mean of ``coefs_``/``intercepts_`` and of the optimiser's state.

    An approximation (a network's loss is not linear in its weights), reasonable because every worker
    starts from the same parent and takes a few small steps. Adam's first and second moment arrays
    (``ms``, ``vs``) are averaged like the weights; its step count ``t`` (bias correction) becomes
    the parent's plus the row-weighted mean of the workers' new steps, because each averaged moment
    is an exponential average over that many steps, not over their sum. Plain SGD's velocities are
    averaged the same way. ``t_`` (samples seen) is the parent's plus every worker's rows.
    """
    w = _weights(rows)
    merged = copy.deepcopy(fitted[0])
    merged.coefs_ = [_mean([f.coefs_[i] for f in fitted], w) for i in range(len(merged.coefs_))]
    merged.intercepts_ = [_mean([f.intercepts_[i] for f in fitted], w) for i in range(len(merged.intercepts_))]
    opt = merged._optimizer
    for name in ("ms", "vs", "velocities"):
        if hasattr(opt, name):
            setattr(
                opt,
                name,
                [_mean([getattr(f._optimizer, name)[i] for f in fitted], w) for i in range(len(getattr(opt, name)))],
            )
    if hasattr(opt, "t"):
        parent_opt = getattr(parent, "_optimizer", None)
        t0 = getattr(parent_opt, "t", 0)
        opt.t = int(round(t0 + float(np.dot(w, [f._optimizer.t - t0 for f in fitted]))))
    t0 = getattr(parent, "t_", 0)
    merged.t_ = t0 + sum(f.t_ - t0 for f in fitted)
    merged.loss_ = float(np.dot(w, [f.loss_ for f in fitted]))
    merged.loss_curve_ = [*getattr(parent, "loss_curve_", []), merged.loss_]
    best = getattr(parent, "best_loss_", None)
    merged.best_loss_ = merged.loss_ if best is None else min(best, merged.loss_)
    return merged


def _combine_gaussian_nb(parent: BaseEstimator, fitted: list[Any], rows: list[int], var_max: float) -> Any:
    """Gaussian NB, exactly: per-class counts add, means and variances merge like the scaler's.

    Workers fit fresh copies, so each holds only its group's statistics. scikit-learn's
    ``partial_fit`` adds ``epsilon_`` (var_smoothing times the batch's largest feature variance) to
    every variance and, on the next call, subtracts the NEW batch's epsilon before merging; both are
    reproduced here, with epsilon taken over the whole batch, so the result equals one sequential
    ``partial_fit`` of the batch.
    """
    epsilon = parent.var_smoothing * var_max
    fitted_before = hasattr(parent, "theta_")
    merged = copy.deepcopy(parent if fitted_before else fitted[0])
    n_classes, width = fitted[0].theta_.shape
    raw = parent.var_ - epsilon if fitted_before else np.zeros((n_classes, width))
    for c in range(n_classes):
        batch = Moments(0.0, np.zeros(width), np.zeros(width))
        for f in fitted:
            if f.class_count_[c]:
                batch = batch.merge(Moments.from_var(f.class_count_[c], f.theta_[c], f.var_[c] - f.epsilon_))
        if batch.n == 0:
            continue  # scikit-learn leaves the statistics of a class absent from the batch as they were
        before = (
            Moments.from_var(parent.class_count_[c], parent.theta_[c], raw[c])
            if fitted_before
            else Moments(0.0, np.zeros(width), np.zeros(width))
        )
        total = before.merge(batch)
        merged.class_count_[c] = total.n
        merged.theta_[c] = total.mean
        raw[c] = total.var
    merged.var_ = raw + epsilon
    merged.epsilon_ = epsilon
    if merged.priors is None:
        merged.class_prior_ = merged.class_count_ / merged.class_count_.sum()
    return merged


def _combine_bernoulli_nb(parent: BaseEstimator, fitted: list[Any], rows: list[int], var_max: float) -> Any:
    """Bernoulli NB, exactly: class and feature counts add; the log-probabilities are recomputed."""
    fitted_before = hasattr(parent, "feature_count_")
    merged = copy.deepcopy(parent if fitted_before else fitted[0])
    merged.class_count_ = (parent.class_count_ if fitted_before else 0) + sum(f.class_count_ for f in fitted)
    merged.feature_count_ = (parent.feature_count_ if fitted_before else 0) + sum(f.feature_count_ for f in fitted)
    merged._update_feature_log_prob(merged._check_alpha())
    merged._update_class_log_prior(class_prior=merged.class_prior)
    return merged


@dataclass(frozen=True)
class _Combiner:
    method: str  # "average" or "exact"
    fresh_start: bool  # workers fit a fresh copy (statistics of their group only) or the parent's copy
    combine: Callable[
        [BaseEstimator, list[Any], list[int], float], Any
    ]  # var_max: the batch's largest feature variance


# Keyed by the estimator table's `combiner` name (learning/estimator_table.py).
COMBINERS: dict[str, _Combiner] = {
    "sgd_average": _Combiner("average", False, _combine_sgd),
    "adaptive_sgd_average": _Combiner("average", False, _combine_adaptive_sgd),
    "mlp_average": _Combiner("average", False, _combine_mlp),
    "gaussian_nb_exact": _Combiner("exact", True, _combine_gaussian_nb),
    "bernoulli_nb_exact": _Combiner("exact", True, _combine_bernoulli_nb),
}


# ---------------------------------------------------------------------------------------------
# Split -> fit each group -> combine


@dataclass
class GroupTask:
    """One group's work, small enough to ship to another process or pod: its rows and a start model.

    ``whole_pipeline``: the sequential path (one group), which ``partial_fit``s the pipeline itself
    (scaler included) exactly as scale-out off does; otherwise ``X`` is already in the merged
    scaler's space and only ``model`` (the estimator) learns.
    """

    index: int
    partitions: list[int]
    model: Any
    X: np.ndarray
    y: np.ndarray
    classes: np.ndarray | None
    whole_pipeline: bool = False
    passes: int = 1  # partial_fit passes over the group's rows (spec.model.passes_per_batch)
    clip_sigmas: float | None = None  # the sequential path's outlier clipping (spec.model.clip_sigmas)


@dataclass
class Split:
    """A batch split into group tasks, plus what ``combine`` needs besides the fitted groups."""

    model: Pipeline  # the parent pipeline, its scaler already merged with every group's moments
    tasks: list[GroupTask]
    combiner: str | None  # None: the sequential path
    var_max: float  # the batch's largest (scaled) feature variance (Gaussian NB's epsilon)
    reason: str
    seconds: float  # the split's own time (scaler merge, transform)


def split(
    model: Pipeline, spec: StreamSpec, X: np.ndarray, y: np.ndarray, partitions: np.ndarray, classes: np.ndarray | None
) -> Split:
    """Plan the batch (``plan_workers``) and make one task per group; merge the scaler exactly first.

    The scaler merge is the exact first round: every group's moments are folded into the parent's
    scaler here, where all rows are, so the groups fit in one shared feature space in one round.
    ``model`` is changed in place (its scaler), as ``estimators.partial_fit`` would change it.
    """
    started = time.perf_counter()
    X, _ = clip_outliers(model, np.asarray(X, dtype=np.float64), spec.model.clip_sigmas)  # as partial_fit does
    y = np.asarray(y)
    partitions = np.asarray(partitions)
    if len(partitions) != len(X):
        raise ValueError(f"X has {len(X)} rows but partitions has {len(partitions)}")
    workers, reason = plan_workers(spec, partitions)
    passes = spec.model.passes_per_batch
    combiner_name = entry(spec.model.estimator).combiner
    if workers > 1 and combiner_name not in COMBINERS:
        raise ValueError(f"scale-out cannot combine {spec.model.estimator}; supported: {list(SCALE_OUT_ESTIMATORS)}")
    if workers <= 1 or len(X) == 0:
        members = sorted(int(p) for p in np.unique(partitions))
        task = GroupTask(
            0, members, model, X, y, classes, whole_pipeline=True, passes=passes, clip_sigmas=spec.model.clip_sigmas
        )
        return Split(model, [task], None, 0.0, reason, time.perf_counter() - started)
    groups = partition_groups(partitions, workers)
    if classes is None:  # a regressor's labels, clipped and learned once here, as partial_fit does
        y = learn_labels(model, y, spec.model.clip_sigmas)
        _learn_target(model.steps[-1][1], y)
    steps = model.steps[:-1]
    if steps:
        if len(steps) != 1 or not isinstance(steps[0][1], StandardScaler):
            raise ValueError("scale-out supports pipelines of an optional StandardScaler and an estimator")
        scaler = merge_scaler(steps[0][1], [X[idx] for _, idx in groups])
        learn_feature_range(model, X)  # as partial_fit does
        Xt = scaler.transform(X)
    else:
        Xt = X
    estimator = model.steps[-1][1]
    # Each group gets its own copy: the parent stays as it was, for the combine's step counts.
    start = clone(estimator) if COMBINERS[combiner_name].fresh_start else estimator
    tasks = [
        GroupTask(i, members, copy.deepcopy(start), Xt[idx], y[idx], classes, passes=passes)
        for i, (members, idx) in enumerate(groups)
    ]
    var_max = float(np.max(np.var(Xt, axis=0)))
    return Split(model, tasks, combiner_name, var_max, reason, time.perf_counter() - started)


def _learn_target(estimator: Any, y: np.ndarray) -> None:
    """Count the whole batch's labels towards a target-scaled regressor's units before its groups copy
    it, which then count none (`fit_group`): each group would otherwise move its copy's units by its own
    rows, and networks in other units cannot be averaged."""
    if hasattr(estimator, "learn_target"):
        estimator.learn_target(y)


@dataclass
class GroupFit:
    """What a group's step hands to the combine: its fitted model, rows and seconds."""

    index: int
    partitions: list[int]
    model: Any
    rows: int
    seconds: float


def fit_group(task: GroupTask) -> GroupFit:
    """One group's step: ``task.passes`` ``partial_fit`` passes over its rows (no-op on an empty group)."""
    started = time.perf_counter()
    model = task.model
    if len(task.X):
        if task.whole_pipeline:
            partial_fit(model, task.X, task.y, task.classes, task.passes, task.clip_sigmas)
        else:
            fit_estimator(model, task.X, task.y, task.classes, task.passes, target_learned=True)
    return GroupFit(task.index, task.partitions, model, len(task.X), time.perf_counter() - started)


def combine(plan: Split, fitted: list[GroupFit]) -> tuple[Pipeline, ScaleOutReport]:
    """Merge the groups' models into the parent pipeline (a new object when combined) and report."""
    started = time.perf_counter()
    fitted = sorted(fitted, key=lambda f: f.index)
    if plan.combiner is None:
        (only,) = fitted
        report = ScaleOutReport(
            1, "sequential", [only.partitions], [only.rows], plan.seconds + only.seconds, [only.seconds], plan.reason
        )
        return only.model, report
    if [f.index for f in fitted] != [t.index for t in plan.tasks]:
        raise ValueError(f"combine needs every group of the split: got {[f.index for f in fitted]}")
    combiner = COMBINERS[plan.combiner]
    rows = [f.rows for f in fitted]
    model = plan.model
    parent = model.steps[-1][1]
    merged = combiner.combine(parent, [f.model for f in fitted], rows, plan.var_max)
    learned = {a: getattr(model, a) for a in ("label_moments_", "feature_range_") if hasattr(model, a)}
    model = Pipeline([*model.steps[:-1], (model.steps[-1][0], merged)])
    for attribute, value in learned.items():  # what estimators.partial_fit keeps on the pipeline
        setattr(model, attribute, value)
    seconds = plan.seconds + sum(f.seconds for f in fitted) + time.perf_counter() - started
    report = ScaleOutReport(
        len(fitted),
        combiner.method,
        [f.partitions for f in fitted],
        rows,
        seconds,
        [f.seconds for f in fitted],
        plan.reason,
    )
    return model, report


def fit(
    model: Pipeline,
    spec: StreamSpec,
    X: np.ndarray,
    y: np.ndarray,
    partitions: np.ndarray,
    classes: np.ndarray | None,
) -> tuple[Pipeline, ScaleOutReport]:
    """Learn one batch into ``model`` (in place, like ``estimators.partial_fit``), split by groups if configured.

    The same ``split`` -> ``fit_group`` -> ``combine`` the training job runs as steps, here in one
    process, one group after another. Returns the model (a new ``Pipeline`` when combined) and a report.
    """
    plan = split(model, spec, X, y, partitions, classes)
    return combine(plan, [fit_group(task) for task in plan.tasks])
