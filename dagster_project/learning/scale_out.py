"""Scale-out training: fit a micro-batch's partition groups in parallel processes, then combine.

Data parallelism inside one training step. A batch's partitions are split round-robin into
``workers`` groups (partition ``p`` goes to group ``p % workers``, so a partition keeps its group
from batch to batch). Then:

1. **Scaler, exactly.** Each group's feature moments (count, mean, M2) are merged into the parent's
   ``StandardScaler`` with Chan et al.'s parallel-variance formulas, which equal ``partial_fit`` on
   all rows (up to rounding); every group is transformed by that one merged scaler, so all learners
   work, and are averaged, in the same feature space.
2. **Estimator, in parallel.** Each worker process updates its own copy of the parent estimator with
   its group's rows (``partial_fit``, one pass, as the sequential path does).
3. **Combine**, by the estimator table's ``combiner``: SGD (incl. passive-aggressive) and MLP take
   row-weighted averages of parameters and optimiser state; naive Bayes merges sufficient
   statistics exactly, so it equals sequential fitting.

Processes: one ``ProcessPoolExecutor`` per training process, reused, with the ``forkserver`` start
method and this module preloaded. ``fork`` would be cheaper but copies a process whose other
threads (Dagster's, Kafka clients', OpenMP's) may hold locks, so a child can hang; ``forkserver``
forks from a clean single-threaded server. Each worker re-imports ``__main__``, so entry scripts
keep their work under ``if __name__ == "__main__":``. Start-up costs are in benchmarks/README.md.

With ``workers == 1``, too few rows (``min_rows_per_worker``) or a single non-empty group, the
sequential ``estimators.partial_fit`` runs and no pool is started.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone, is_classifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from dagster_project.learning.estimator_table import SCALE_OUT_ESTIMATORS, entry
from dagster_project.learning.estimators import partial_fit
from dagster_project.spec import StreamSpec

START_METHOD = "forkserver"


@dataclass(frozen=True)
class ScaleOutReport:
    """What one fit did: how many processes, on how many rows each, combined how, in how long."""

    workers: int  # processes that fitted (1: the sequential path)
    method: str  # "sequential", "average" (SGD, MLP) or "exact" (naive Bayes)
    groups: list[list[int]] = field(default_factory=list)  # partitions per group
    group_rows: list[int] = field(default_factory=list)
    fit_seconds: float = 0.0  # the learning step: scaler merge, parallel fit and combine
    pool_start_seconds: float = 0.0  # > 0 only when this fit had to start the pool
    reason: str = ""

    def as_metadata(self) -> dict[str, Any]:
        """Numeric keys for Dagster's plots plus a readable summary."""
        return {
            "scale_out_workers": self.workers,
            "scale_out_fit_seconds": self.fit_seconds,
            "scale_out_pool_start_seconds": self.pool_start_seconds,
            "scale_out": {
                "method": self.method,
                "groups": [f"p{','.join(map(str, g))}" for g in self.groups],
                "group_rows": self.group_rows,
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


def _combine_sgd(parent: BaseEstimator, fitted: list[Any], rows: list[int], Xt: np.ndarray) -> Any:
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


def _combine_mlp(parent: BaseEstimator, fitted: list[Any], rows: list[int], Xt: np.ndarray) -> Any:
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


def _combine_gaussian_nb(parent: BaseEstimator, fitted: list[Any], rows: list[int], Xt: np.ndarray) -> Any:
    """Gaussian NB, exactly: per-class counts add, means and variances merge like the scaler's.

    Workers fit fresh copies, so each holds only its group's statistics. scikit-learn's
    ``partial_fit`` adds ``epsilon_`` (var_smoothing times the batch's largest feature variance) to
    every variance and, on the next call, subtracts the NEW batch's epsilon before merging; both are
    reproduced here, with epsilon taken over the whole batch, so the result equals one sequential
    ``partial_fit`` of the batch.
    """
    epsilon = parent.var_smoothing * float(np.max(np.var(Xt, axis=0)))
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


def _combine_bernoulli_nb(parent: BaseEstimator, fitted: list[Any], rows: list[int], Xt: np.ndarray) -> Any:
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
    combine: Callable[[BaseEstimator, list[Any], list[int], np.ndarray], Any]


# Keyed by the estimator table's `combiner` name (learning/estimator_table.py).
COMBINERS: dict[str, _Combiner] = {
    "sgd_average": _Combiner("average", False, _combine_sgd),
    "mlp_average": _Combiner("average", False, _combine_mlp),
    "gaussian_nb_exact": _Combiner("exact", True, _combine_gaussian_nb),
    "bernoulli_nb_exact": _Combiner("exact", True, _combine_bernoulli_nb),
}


# ---------------------------------------------------------------------------------------------
# The process pool


_POOL: ProcessPoolExecutor | None = None
_POOL_KEY: tuple[str, int, int] | None = None
_POOL_LOCK = threading.Lock()


def _ready() -> int:
    """A worker's first task: proves it is up (with this module imported) and says which process it is."""
    time.sleep(0.05)  # long enough that the next task cannot be picked up by the same process
    return os.getpid()


def start_pool(workers: int, method: str = START_METHOD) -> tuple[ProcessPoolExecutor, float]:
    """The process's pool of ``workers`` processes, started if needed; returns it and the start seconds.

    The start is timed until every worker has answered a task, so the figure includes interpreter or
    fork start and imports. A pool is reused for as long as the process lives (and rebuilt after a
    fork, since a child cannot use its parent's pool).
    """
    global _POOL, _POOL_KEY
    key = (method, workers, os.getpid())
    with _POOL_LOCK:
        if _POOL is not None and key == _POOL_KEY:
            return _POOL, 0.0
        if _POOL is not None:
            _POOL.shutdown(wait=True, cancel_futures=True)
        started = time.perf_counter()
        context = multiprocessing.get_context(method)
        if method == "forkserver":
            # The server imports numpy/scikit-learn once; each worker then forks from it, already warm.
            context.set_forkserver_preload(["dagster_project.learning.scale_out"])
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
        # Non-fork pools start a process per submit while none is idle: ``workers`` tasks start them all,
        # and running a function of this module makes a spawned worker import scikit-learn now, not
        # during the first fit.
        # On a loaded machine one worker can take two of those tasks before the next one is up; ask again
        # (bounded) until each has answered, so the start-up time covers them all. Fitting works either way.
        pids: set[int] = set()
        deadline = time.monotonic() + 30
        while len(pids) < workers and time.monotonic() < deadline:
            pids |= {future.result() for future in [pool.submit(_ready) for _ in range(workers)]}
        _POOL, _POOL_KEY = pool, key
        return pool, time.perf_counter() - started


def shutdown_pool() -> None:
    """Stop the pool's processes (tests and benchmarks; a run worker's exit stops them too)."""
    global _POOL, _POOL_KEY
    with _POOL_LOCK:
        if _POOL is not None:
            _POOL.shutdown(wait=True, cancel_futures=True)
        _POOL, _POOL_KEY = None, None


def _fit_group(estimator: BaseEstimator, Xt: np.ndarray, y: np.ndarray, classes: np.ndarray | None) -> BaseEstimator:
    """One worker's job: one ``partial_fit`` pass over its group's (already scaled) rows."""
    if is_classifier(estimator):
        estimator.partial_fit(Xt, y, classes=classes)
    else:
        estimator.partial_fit(Xt, y)
    return estimator


# ---------------------------------------------------------------------------------------------
# The entry point


def fit(
    model: Pipeline,
    spec: StreamSpec,
    X: np.ndarray,
    y: np.ndarray,
    partitions: np.ndarray,
    classes: np.ndarray | None,
    pool_method: str = START_METHOD,
) -> tuple[Pipeline, ScaleOutReport]:
    """Learn one batch into ``model`` (in place, like ``estimators.partial_fit``), scaled out if configured.

    ``partitions`` is each row's Kafka partition (the same length as ``X``). Returns the model, which
    is a new ``Pipeline`` object when the estimator was combined, and what happened.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    partitions = np.asarray(partitions)
    if len(partitions) != len(X):
        raise ValueError(f"X has {len(X)} rows but partitions has {len(partitions)}")
    started = time.perf_counter()
    workers, reason = plan_workers(spec, partitions)
    estimator = model.steps[-1][1]
    combiner_name = entry(spec.model.estimator).combiner
    combiner = COMBINERS[combiner_name] if combiner_name else None
    if workers > 1 and combiner is None:
        raise ValueError(f"scale-out cannot combine {spec.model.estimator}; supported: {list(SCALE_OUT_ESTIMATORS)}")
    if workers <= 1:
        partial_fit(model, X, y, classes)
        return model, ScaleOutReport(
            1,
            "sequential",
            [sorted(int(p) for p in np.unique(partitions))],
            [len(X)],
            time.perf_counter() - started,
            reason=reason,
        )

    groups = partition_groups(partitions, workers)
    indices = [idx for _, idx in groups]
    steps = model.steps[:-1]
    if steps:
        if len(steps) != 1 or not isinstance(steps[0][1], StandardScaler):
            raise ValueError("scale-out supports pipelines of an optional StandardScaler and an estimator")
        scaler = merge_scaler(steps[0][1], [X[idx] for idx in indices])
        Xt = scaler.transform(X)
    else:
        Xt = X
    pool, pool_start = start_pool(len(groups), pool_method)
    start = clone(estimator) if combiner.fresh_start else estimator
    futures = [pool.submit(_fit_group, start, Xt[idx], y[idx], classes) for idx in indices]
    fitted = [f.result() for f in futures]
    rows = [len(idx) for idx in indices]
    model.steps[-1] = (model.steps[-1][0], combiner.combine(estimator, fitted, rows, Xt))
    report = ScaleOutReport(
        workers=len(groups),
        method=combiner.method,
        groups=[members for members, _ in groups],
        group_rows=rows,
        fit_seconds=time.perf_counter() - started - pool_start,
        pool_start_seconds=pool_start,
        reason=reason,
    )
    return model, report
