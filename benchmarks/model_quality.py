"""Model quality: prequential ROC AUC on Phishing, recovery after the synthetic concept change, how
often champion decisions act on noise (`benchmarks.decision_noise`), and what category and rolling
features are worth (`benchmarks.feature_quality`).

Phishing (River's 1,250 pages, in River's arrival order): Streamfit's default estimator for the
`phishing` stream (the shipped spec: `sgd_classifier` behind a `StandardScaler`) learns in
micro-batches of 10, 50, 100 and 250 rows with `training.test_then_train`, so every batch is
scored by the model before it learns it; River's `StandardScaler | LogisticRegression` predicts
then learns one row at a time. AUC is exact (scikit-learn's `roc_auc_score`) over the same rows
for both: every row after the first batch (Streamfit has no model for the first batch). River's
own AUC over all 1,250 rows (exact, and River's approximate `metrics.ROCAUC`) is given as well.

Concept change: the `synthetic` stream (20,000 rows, the concept flips at row 10,000), learned in
batches of 1,000 (the shipped spec's batch size) and of 100; prequential accuracy per batch, and
River's per-row prequential accuracy over the same 1,000-row windows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.common import progress
from benchmarks.context import BenchContext
from benchmarks.data import arrays, events, shipped_spec
from benchmarks.throughput import river_model

PHISHING_BATCHES = (10, 50, 100, 250)
CHANGE_AT = 10_000
CHANGE_ROWS = 20_000
WINDOW = 1_000
RECOVERY_TOLERANCE = 0.03  # recovered: accuracy back within this of the pre-change level


def _phishing() -> tuple[Any, np.ndarray, np.ndarray, list[dict], list[bool]]:
    from dagster_project.dev.datasets import phishing_events

    spec = shipped_spec("phishing")
    source = list(phishing_events())
    classes = spec.label.classes
    X = np.array([[float(e.features[n]) for n in spec.feature_names] for e in source], dtype=np.float64)
    y = np.array([float(classes.index(e.label)) for e in source], dtype=np.float64)
    return spec, X, y, [e.features for e in source], [e.label for e in source]


def _prequential_batches(spec, X: np.ndarray, y: np.ndarray, batch: int) -> tuple[np.ndarray, list[float | None]]:
    """Pre-fit positive-class scores for rows from the second batch on, and accuracy per batch."""
    from dagster_project.learning.prequential import test_then_train

    model = None
    scores: list[np.ndarray] = []
    accuracy: list[float | None] = []
    for start in range(0, len(X), batch):
        Xb, yb = X[start : start + batch], y[start : start + batch]
        model, metrics, s = test_then_train(model, spec, Xb, yb)
        if s is not None:
            scores.append(np.asarray(s))
        accuracy.append(metrics.accuracy)
    return (np.concatenate(scores) if scores else np.array([])), accuracy


def phishing(ctx: BenchContext) -> dict[str, Any]:
    from river import metrics
    from sklearn.metrics import roc_auc_score

    spec, X, y, dicts, labels = _phishing()
    river = river_model()
    approx = metrics.ROCAUC()
    river_scores = np.empty(len(dicts))
    river_hits = np.empty(len(dicts))
    for i, (x, label) in enumerate(zip(dicts, labels, strict=True)):
        proba = river.predict_proba_one(x)
        p = float(proba.get(True, 0.0))
        river_scores[i] = p
        river_hits[i] = (p >= 0.5) == label
        approx.update(label, proba)
        river.learn_one(x, label)
    out: dict[str, Any] = {
        "rows": len(X),
        "estimator": spec.model.estimator,
        "params": "shipped phishing spec defaults (log loss, step 0.005, 8 passes, no penalty, StandardScaler)",
        "river": {
            "model": "StandardScaler | LogisticRegression (defaults)",
            "roc_auc_all_rows_exact": float(roc_auc_score(y, river_scores)),
            "roc_auc_all_rows_river_metric": float(approx.get()),
            "accuracy_all_rows": float(river_hits.mean()),
        },
        "batches": {},
    }
    for batch in PHISHING_BATCHES:
        scores, accuracy = _prequential_batches(spec, X, y, batch)
        rows = slice(batch, None)
        auc = float(roc_auc_score(y[rows], scores))
        river_auc = float(roc_auc_score(y[rows], river_scores[rows]))
        sf_acc = float(np.mean((scores >= 0.5) == y[rows]))
        out["batches"][str(batch)] = {
            "batch_rows": batch,
            "scored_rows": int(len(scores)),
            "streamfit_roc_auc": auc,
            "river_roc_auc_same_rows": river_auc,
            "auc_difference": auc - river_auc,
            "streamfit_accuracy": sf_acc,
            "river_accuracy_same_rows": float(river_hits[rows].mean()),
        }
    return out


def concept_change(ctx: BenchContext) -> dict[str, Any]:
    spec = shipped_spec("synthetic")
    source = events(CHANGE_ROWS, change_at=CHANGE_AT)
    X, y = arrays(source, spec.feature_names)
    out: dict[str, Any] = {"rows": CHANGE_ROWS, "change_at": CHANGE_AT, "window_rows": WINDOW, "streamfit": {}}
    for batch in (1_000,) if ctx.mode.quick else (1_000, 100):
        _, accuracy = _prequential_batches(spec, X, y, batch)
        per_window = _windows(accuracy, batch)
        out["streamfit"][str(batch)] = {"batch_rows": batch, **_recovery(per_window)}
    river = river_model()
    hits = np.empty(len(source))
    for i, e in enumerate(source):
        hits[i] = (river.predict_proba_one(e.features).get(1, 0.0) >= 0.5) == bool(e.label)
        river.learn_one(e.features, e.label)
    river_windows = [float(hits[s : s + WINDOW].mean()) for s in range(0, CHANGE_ROWS, WINDOW)]
    out["river"] = _recovery(river_windows)
    return out


def _windows(accuracy: list[float | None], batch: int) -> list[float | None]:
    """Per-batch accuracies averaged into WINDOW-row windows (the first batch has none)."""
    per = WINDOW // batch
    out: list[float | None] = []
    for w in range(0, len(accuracy), per):
        values = [a for a in accuracy[w : w + per] if a is not None]
        out.append(float(np.mean(values)) if values else None)
    return out


def _recovery(windows: list[float | None], change_at: int = CHANGE_AT) -> dict[str, Any]:
    change_window = change_at // WINDOW
    before = [a for a in windows[max(0, change_window - 5) : change_window] if a is not None]
    level = float(np.mean(before)) if before else None
    after = windows[change_window:]
    recovered = None
    if level is not None:
        for i, a in enumerate(after):
            if a is not None and a >= level - RECOVERY_TOLERANCE:
                recovered = i
                break
    return {
        "accuracy_per_window": windows,
        "pre_change_accuracy": level,
        "first_window_after_change": after[0] if after else None,
        "windows_to_recover": recovered,
        "rows_to_recover": None if recovered is None else (recovered + 1) * WINDOW,
        "recovery_rule": f"first {WINDOW}-row window after the change within {RECOVERY_TOLERANCE} of the mean of the "
        "5 windows before it (rows_to_recover counts that window)",
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    progress("quality: Phishing prequential ROC AUC at batch sizes " + ", ".join(map(str, PHISHING_BATCHES)))
    result = {"phishing": phishing(ctx)}
    for b, r in result["phishing"]["batches"].items():
        progress(
            f"quality: batch {b}: Streamfit AUC {r['streamfit_roc_auc']:.4f} "
            f"vs River {r['river_roc_auc_same_rows']:.4f}"
        )
    progress("quality: recovery after the synthetic concept change (batches of 1,000 and 100, and River)")
    result["concept_change"] = concept_change(ctx)
    from benchmarks import decision_noise

    result["decisions"] = decision_noise.run(ctx.mode.quick, trials=ctx.mode.decision_trials)
    from benchmarks import feature_quality

    result["features"] = feature_quality.run(ctx.mode.quick, rows=ctx.mode.feature_rows)
    return result
