"""Scale-out training: sequential `partial_fit` vs 2 worker processes on the same rows.

- **Process start-up**, inside a Dagster materialization (what a run worker would pay): a
  2-process pool of `dagster_project.learning.scale_out.start_pool` with each start method, timed until both
  workers have answered a task. `fork` and `forkserver` (cold: the server imports numpy and
  scikit-learn; then warm: a second pool forks from the running server) always, `spawn` in full mode.
- **Fit time**: for `sgd_classifier` and `mlp_classifier`, a parent fitted on 1,000 warm-up rows
  learns the same batch of seeded synthetic rows (4 partitions, round-robin) both ways, in the same
  repeat, in a rotating order: *sequential* is `estimators.partial_fit` (today's path), *scale-out*
  is `scale_out.fit` with 2 workers on a pool that is already running (its start-up is a separate
  column: every Dagster run is a fresh process and pays it once per run).
- **Accuracy cost**: prequential over a sequence of batches, both ways from a fresh model: each
  batch is scored by the model before it learns the batch (`training.test_then_train` vs
  `training.test_then_train_partitioned`); exact ROC AUC and accuracy over all scored rows.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np

from benchmarks.common import progress, ratio, summary
from benchmarks.context import BenchContext
from benchmarks.data import arrays, events

ESTIMATORS = ("sgd_classifier", "mlp_classifier")
WORKERS = 2
PARTITIONS = 4
WARMUP_ROWS = 1_000
ORDER = ("sequential", "scale_out")
SIZES = {"quick": {"rows": 20_000, "repeats": 3, "batches": 10, "batch_rows": 2_000}}
SIZES["full"] = {"rows": 100_000, "repeats": 5, "batches": 10, "batch_rows": 10_000}


def _spec(estimator: str):
    from dagster_project.spec import StreamSpec

    return StreamSpec.model_validate(
        {
            "name": f"bench_scale_out_{estimator}",
            "partitions": PARTITIONS,
            "features": [{"name": f"x{i}"} for i in range(5)],
            "label": {"classes": [0, 1]},
            "model": {"estimator": estimator, "scale_out": {"workers": WORKERS, "min_rows_per_worker": 1}},
        }
    )


def start_methods(full: bool) -> dict[str, Any]:
    """Seconds to start a 2-process pool per start method, measured inside a Dagster asset's body."""
    import dagster as dg

    from dagster_project.learning import scale_out

    measured: dict[str, float] = {}

    @dg.asset
    def pool_start() -> None:
        plan = ["fork", "forkserver", "forkserver"] + (["spawn"] if full else [])
        for i, method in enumerate(plan):
            scale_out.shutdown_pool()
            _, seconds = scale_out.start_pool(WORKERS, method)
            key = "forkserver_warm" if method == "forkserver" and i == 2 else method
            measured[key] = seconds
        scale_out.shutdown_pool()

    dg.materialize([pool_start])
    return measured


def _fit_times(estimator: str, X: np.ndarray, y: np.ndarray, partitions: np.ndarray, repeats: int) -> dict[str, Any]:
    from dagster_project.learning import scale_out
    from dagster_project.learning.estimators import build_model, partial_fit

    spec = _spec(estimator)
    classes = np.arange(2)
    parent = build_model(spec)
    partial_fit(parent, X[:WARMUP_ROWS], y[:WARMUP_ROWS], classes)
    Xb, yb, pb = X[WARMUP_ROWS:], y[WARMUP_ROWS:], partitions[WARMUP_ROWS:]
    seconds: dict[str, list[float]] = {k: [] for k in ORDER}
    fit_reports = []
    for r in range(repeats):
        for way in ORDER[r % 2 :] + ORDER[: r % 2]:  # rotate: neither way always runs first
            model = copy.deepcopy(parent)
            t = time.perf_counter()
            if way == "sequential":
                partial_fit(model, Xb, yb, classes)
            else:
                _, report = scale_out.fit(model, spec, Xb, yb, pb, classes)
                fit_reports.append(report)
            seconds[way].append(time.perf_counter() - t)
    if any(r.pool_start_seconds for r in fit_reports):
        raise RuntimeError("the pool should have been started before the timed fits")
    return {
        "rows": len(Xb),
        "repeats": repeats,
        "sequential_s": summary(seconds["sequential"]),
        "scale_out_s": summary(seconds["scale_out"]),
        "speedup": summary([ratio(s, p) for s, p in zip(seconds["sequential"], seconds["scale_out"], strict=True)]),
        "group_rows": fit_reports[-1].group_rows,
        "workers": fit_reports[-1].workers,
    }


def _prequential(estimator: str, X: np.ndarray, y: np.ndarray, partitions: np.ndarray, batch: int) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, roc_auc_score

    from dagster_project.learning.prequential import test_then_train, test_then_train_partitioned

    spec = _spec(estimator)
    out: dict[str, Any] = {}
    for way in ORDER:
        model, scores = None, []
        for start in range(0, len(X), batch):
            rows = slice(start, start + batch)
            if way == "sequential":
                model, _, s = test_then_train(model, spec, X[rows], y[rows])
            else:
                model, _, s, report = test_then_train_partitioned(model, spec, X[rows], y[rows], partitions[rows])
                if report.workers != WORKERS:
                    raise RuntimeError(f"scale-out used {report.workers} workers: {report.reason}")
            if s is not None:
                scores.append(np.asarray(s))
        s = np.concatenate(scores)
        truth = y[batch : batch + len(s)]
        out[way] = {"roc_auc": float(roc_auc_score(truth, s)), "accuracy": float(accuracy_score(truth, s > 0.5))}
    out["scored_rows"] = int(len(X) - batch)
    out["auc_difference"] = out["scale_out"]["roc_auc"] - out["sequential"]["roc_auc"]
    out["accuracy_difference"] = out["scale_out"]["accuracy"] - out["sequential"]["accuracy"]
    return out


def run(ctx: BenchContext) -> dict[str, Any]:
    from dagster_project.learning import scale_out

    size = SIZES[ctx.mode.name]
    full = not ctx.mode.quick
    progress(f"scale_out: pool start-up per start method inside a Dagster materialization ({WORKERS} workers)")
    methods = start_methods(full)
    progress("scale_out: " + ", ".join(f"{k} {v:.2f}s" for k, v in methods.items()))
    _, cold_start = scale_out.start_pool(WORKERS)  # the chosen method, warm from here on
    total = WARMUP_ROWS + size["rows"]
    progress(f"scale_out: generating {total:,} seeded synthetic rows over {PARTITIONS} partitions")
    X, y = arrays(events(max(total, size["batches"] * size["batch_rows"])), [f"x{i}" for i in range(5)])
    partitions = np.arange(len(X)) % PARTITIONS
    estimators: dict[str, Any] = {}
    for estimator in ESTIMATORS:
        progress(f"scale_out: {estimator}, {size['rows']:,} rows x {size['repeats']}, sequential vs {WORKERS} workers")
        r = _fit_times(estimator, X[:total], y[:total], partitions[:total], size["repeats"])
        n = size["batches"] * size["batch_rows"]
        r["accuracy"] = _prequential(estimator, X[:n], y[:n], partitions[:n], size["batch_rows"])
        r["accuracy"].update(batches=size["batches"], batch_rows=size["batch_rows"])
        r["pool_start_s"] = methods[scale_out.START_METHOD]
        estimators[estimator] = r
        progress(
            f"scale_out: {estimator}: sequential {r['sequential_s']['median']:.3f}s, scale-out "
            f"{r['scale_out_s']['median']:.3f}s ({r['speedup']['median']:.2f}x); "
            f"AUC difference {r['accuracy']['auc_difference']:+.4f}"
        )
    scale_out.shutdown_pool()
    return {
        "description": "sequential partial_fit vs scale-out on the same rows, same repeat, rotating order; "
        "fit times exclude the pool start-up, which is reported separately",
        "workers": WORKERS,
        "partitions": PARTITIONS,
        "start_method": scale_out.START_METHOD,
        "start_methods_s": methods,
        "pool_start_after_measurement_s": cold_start,
        "estimators": estimators,
    }
