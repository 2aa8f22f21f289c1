"""Champion decisions under sampling noise: how often the margin alone acts on noise, and with the paired test.

Each trial draws disjoint rows from one stationary stream (scikit-learn's `make_classification`,
two or four classes, or `make_regression`, one fixed concept), trains two SGD models on different
halves, and runs
Streamfit's own decision code on fresh tail rows neither learned, once with the margin alone
(significance off, the old behaviour) and once with margin and paired test at ``LEVEL``:

- the promotion gate (`registry.promotion.gate`, non-inferiority) with A as the champion and B as
  the candidate on ``PROMOTION_ROWS``: the action counted is a *refusal*, keeping A (the test is
  "A better than B", and only turns a refusal beyond the margin into a promotion);
- the rollback rule (`monitors.decisions.decide`) with B as the champion and A as its
  predecessor on ``ROLLBACK_ROWS``: the action counted is a rollback of B to A.

Either action goes against B, the model that is never better.

*Exchangeable* trials: the *equal* pair with each row's two outputs swapped at random, so neither
model is better on any population of rows: the rate of action there is each test's real false
positive rate (one-sided, at most ``LEVEL``). *Equal* trials: both models learn the same number
of rows of the same stream, so every refusal or rollback between them is a false action in
expectation (each trial's pair still differs a little, by chance in training: the sd of the true
gap says how much). *Handicapped* trials: model B learns labels with a share flipped at random
(targets with extra noise for regression), so A is really better by the gap measured on a large
holdout (A − B: positive for AUC and accuracy, negative for RMSE; ROC AUC of several classes is the
product's macro one-vs-rest AUC, tested by `registry.significance.macro_delong`); keeping champion A over
candidate B, or rolling champion B back to A, is then a detection (power).

`python -m benchmarks.decision_noise [--full] [--only SETTING]` prints the table on its own (no broker
needed); ``--only`` runs one setting, e.g. ``--only "near-chance 4 classes"``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from scipy import stats

from benchmarks.common import progress
from dagster_project.learning.metrics import macro_roc_auc

LEVEL = 0.05
PROMOTION_MARGIN = 0.01  # promotion.margin's default
REGRESSION_MARGIN = 0.02  # drift.regression_margin's default
TRAIN_ROWS = 1_000  # each model
PROMOTION_ROWS = 250  # promotion.tail_rows' default
ROLLBACK_ROWS = 500  # the incident's comparison size
POOL_ROWS = 60_000
HOLDOUT_ROWS = 20_000  # where the true gap of a trial's two models is measured
TRUE_GAP_TRIALS = 30  # trials whose gap is measured on the holdout (enough for its mean and sd)
EXCHANGEABLE = "exchangeable (exact null)"
RATES = ("keep_margin", "keep_test", "rollback_margin", "rollback_test")

SETTINGS = {  # name: metrics, task, generator settings, handicaps of B for the "better" trials
    "near-chance classification": (("roc_auc", "accuracy"), "classification", {"class_sep": 0.25}, (0.2, 0.35)),
    "easy classification": (("roc_auc",), "classification", {"class_sep": 1.0}, (0.2, 0.35)),
    "near-chance 4 classes": (
        ("roc_auc", "accuracy"),
        "classification",
        {"class_sep": 0.3, "n_classes": 4},
        (0.2, 0.35),
    ),
    "noisy regression": (("rmse",), "regression", {"noise": 60.0}, (60.0, 120.0)),
}


def _pool(task: str, params: dict[str, Any], seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification, make_regression

    if task == "classification":
        X, y = make_classification(POOL_ROWS, n_features=10, n_informative=3, flip_y=0.1, random_state=seed, **params)
        return X, y
    X, y = make_regression(POOL_ROWS, n_features=10, n_informative=5, random_state=seed, **params)
    return X, (y - y.mean()) / y.std()


def _fit(task: str, X: np.ndarray, y: np.ndarray, seed: int):
    from sklearn.linear_model import SGDClassifier, SGDRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if task == "classification":
        estimator = SGDClassifier(loss="log_loss", learning_rate="constant", eta0=0.01, penalty=None, random_state=seed)
    else:
        estimator = SGDRegressor(learning_rate="constant", eta0=0.01, penalty=None, random_state=seed)
    return make_pipeline(StandardScaler(), estimator).fit(X, y)


def _outputs(task: str, model, X: np.ndarray) -> dict[str, Any]:
    """Row outputs as `learning.prequential.row_outputs` gives them: scores are a column per class
    beyond two classes."""
    if task == "classification":
        proba = model.predict_proba(X)
        if proba.shape[1] > 2:
            return {"predicted": proba.argmax(axis=1), "proba": proba, "scores": proba}
        return {"predicted": (proba[:, 1] > 0.5).astype(int), "proba": proba, "scores": proba[:, 1]}
    return {"predicted": model.predict(X), "proba": None, "scores": None}


def _metrics(metric: str, y: np.ndarray, out: dict[str, Any]) -> dict[str, float]:
    """The metric from row outputs, in numpy: scikit-learn's input checks would dominate the run."""
    if metric == "roc_auc" and out["scores"].ndim == 2:
        return {metric: macro_roc_auc(y, out["scores"])}
    if metric == "roc_auc":
        ranks = stats.rankdata(out["scores"])
        pos = y == 1
        m, n = int(pos.sum()), int((~pos).sum())
        return {metric: float((ranks[pos].sum() - m * (m + 1) / 2) / (m * n))}
    if metric == "accuracy":
        return {metric: float(np.mean(out["predicted"] == y))}
    return {metric: float(np.sqrt(np.mean((out["predicted"] - y) ** 2)))}


def _handicap(task: str, y: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """B's training labels: a share `amount` flipped (to another class, at random beyond two) or, for
    regression, extra noise of sd `amount`/100."""
    if task == "classification":
        flip = rng.random(len(y)) < amount
        classes = int(y.max()) + 1
        if classes > 2:
            return np.where(flip, (y + rng.integers(1, classes, len(y))) % classes, y)
        return np.where(flip, 1 - y, y)
    return y + rng.normal(0, amount / 100, len(y))


def _swap(out_a: dict[str, Any], out_b: dict[str, Any], rng: np.random.Generator) -> tuple[dict, dict]:
    """Each row's two outputs swapped with chance 1/2: the pairs are exchangeable, so the null holds exactly."""
    swap = rng.random(len(out_a["predicted"])) < 0.5
    mixed_a, mixed_b = {}, {}
    for key in out_a:
        if out_a[key] is None:
            mixed_a[key] = mixed_b[key] = None
            continue
        s = swap.reshape(-1, *([1] * (out_a[key].ndim - 1)))
        mixed_a[key], mixed_b[key] = np.where(s, out_b[key], out_a[key]), np.where(s, out_a[key], out_b[key])
    return mixed_a, mixed_b


def _decisions(metric: str, y_tail: np.ndarray, out_a, out_b, rows: int) -> dict[str, bool]:
    """Champion A keeps candidate B out, and champion B is rolled back to predecessor A: margin alone,
    and with the test (A better than B, one-sided, on the same rows)."""
    from dagster_project.registry.promotion import HIGHER_IS_BETTER, gate
    from dagster_project.registry.significance import paired_test
    from monitors.decisions import ChampionComparison, DecisionConfig, decide

    y_p, y_r = y_tail[:PROMOTION_ROWS], y_tail[PROMOTION_ROWS : PROMOTION_ROWS + rows]
    champ = {k: (v[:PROMOTION_ROWS] if v is not None else None) for k, v in out_a.items()}
    head = {k: (v[:PROMOTION_ROWS] if v is not None else None) for k, v in out_b.items()}
    m_champ, m_head = _metrics(metric, y_p, champ), _metrics(metric, y_p, head)
    test = paired_test(metric, y_p, champ, head)
    out = {}
    for name, level in (("margin", None), ("test", LEVEL)):
        result = gate(metric, PROMOTION_MARGIN, 50, "B", m_head, "A", m_champ, PROMOTION_ROWS, test, level)
        out[f"keep_{name}"] = not result.promote

    tail = slice(PROMOTION_ROWS, PROMOTION_ROWS + rows)
    pred = {k: (v[tail] if v is not None else None) for k, v in out_a.items()}
    champion = {k: (v[tail] if v is not None else None) for k, v in out_b.items()}
    comparison = ChampionComparison(
        "B",
        "A",
        metric,
        _metrics(metric, y_r, champion)[metric],
        _metrics(metric, y_r, pred)[metric],
        rows,
        promoted_at=0.0,
        higher_is_better=HIGHER_IS_BETTER[metric],
        test=paired_test(metric, y_r, pred, champion),
    )
    for name, level in (("margin", None), ("test", LEVEL)):
        config = DecisionConfig(regression_margin=REGRESSION_MARGIN, significance=level)
        out[f"rollback_{name}"] = decide(now=1.0, comparison=comparison, config=config).action == "rollback"
    return out


def _setting(metrics: tuple[str, ...], task: str, params: dict, handicaps: tuple, trials: int) -> dict[str, Any]:
    X, y = _pool(task, params)
    holdout = slice(POOL_ROWS - HOLDOUT_ROWS, POOL_ROWS)
    stream = POOL_ROWS - HOLDOUT_ROWS
    rng = np.random.default_rng(5)
    need = 2 * TRAIN_ROWS + PROMOTION_ROWS + ROLLBACK_ROWS
    result: dict[str, Any] = {metric: {} for metric in metrics}
    cases = [(EXCHANGEABLE, 0.0), ("equal", 0.0)] + [(f"B handicapped {a:g}", a) for a in handicaps]
    for label, amount in cases:
        counts = {metric: dict.fromkeys(RATES, 0) for metric in metrics}
        gaps: dict[str, list[float]] = {metric: [] for metric in metrics}
        baseline: dict[str, list[float]] = {metric: [] for metric in metrics}
        for trial in range(trials):
            idx = rng.choice(stream, need, replace=False)
            first, second, tail = idx[:TRAIN_ROWS], idx[TRAIN_ROWS : 2 * TRAIN_ROWS], idx[2 * TRAIN_ROWS :]
            a = _fit(task, X[first], y[first], trial)
            b = _fit(task, X[second], _handicap(task, y[second], amount, rng) if amount else y[second], trial + 1)
            out_a, out_b = _outputs(task, a, X[tail]), _outputs(task, b, X[tail])
            on_holdout = trial < TRUE_GAP_TRIALS
            if on_holdout:
                true_a, true_b = _outputs(task, a, X[holdout]), _outputs(task, b, X[holdout])
            if label == EXCHANGEABLE:
                out_a, out_b = _swap(out_a, out_b, rng)
                if on_holdout:
                    true_a, true_b = _swap(true_a, true_b, rng)
            for metric in metrics:
                for key, hit in _decisions(metric, y[tail], out_a, out_b, ROLLBACK_ROWS).items():
                    counts[metric][key] += int(hit)
                if on_holdout:
                    value_b = _metrics(metric, y[holdout], true_b)[metric]
                    gaps[metric].append(_metrics(metric, y[holdout], true_a)[metric] - value_b)
                    baseline[metric].append(value_b)
        for metric in metrics:
            result[metric][label] = {
                "true_gap_a_minus_b": float(np.mean(gaps[metric])),
                "true_gap_sd": float(np.std(gaps[metric], ddof=1)),
                "true_value_b": float(np.mean(baseline[metric])),
                **{k: v / trials for k, v in counts[metric].items()},
            }
    return result


def run(quick: bool, only: str | None = None, trials: int | None = None) -> dict[str, Any]:
    """Every setting (or `only` the one named): rates of refused promotion and of rollback with the
    margin alone and with margin and test, over `trials` per case (default: 50 quick, 1,000 full)."""
    if only is not None and only not in SETTINGS:
        raise ValueError(f"no setting {only!r}: choose one of {sorted(SETTINGS)}")
    trials = trials or (50 if quick else 1_000)
    started = time.perf_counter()
    out: dict[str, Any] = {
        "level": LEVEL,
        "promotion": {"margin": PROMOTION_MARGIN, "rows": PROMOTION_ROWS},
        "rollback": {"margin": REGRESSION_MARGIN, "rows": ROLLBACK_ROWS},
        "train_rows_per_model": TRAIN_ROWS,
        "settings": {},
    }
    for name, (metrics, task, params, handicaps) in SETTINGS.items():
        if only is not None and name != only:
            continue
        progress(f"quality: champion decisions under noise, {name}: {trials} trials per case")
        out["settings"][name] = _setting(metrics, task, params, handicaps, trials)
    out["seconds"] = time.perf_counter() - started
    return out


def table(result: dict[str, Any]) -> list[str]:
    """Markdown rows: per setting, metric and case, the true gap and the four rates."""
    lines = [
        "| setting | metric | case | true gap A − B (sd), B's value | keep champion A, refuse B: margin | + test "
        "| roll back champion B to A: margin | + test |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, setting in result["settings"].items():
        for metric, cases in setting.items():
            for case, r in cases.items():
                lines.append(
                    f"| {name} | {metric} | {case} | {r['true_gap_a_minus_b']:+.4f} ({r['true_gap_sd']:.4f}), "
                    f"{r['true_value_b']:.3f} | {r['keep_margin']:.1%} | {r['keep_test']:.1%} "
                    f"| {r['rollback_margin']:.1%} | {r['rollback_test']:.1%} |"
                )
    return lines


if __name__ == "__main__":
    import sys

    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
    figures = run(quick="--full" not in sys.argv, only=only)
    print("\n".join(table(figures)))
    print(f"\n{figures['seconds']:.1f} s")
