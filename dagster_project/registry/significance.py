"""Paired significance tests for champion decisions: is model A really better than model B?

Promotion and rollback compare two models on the *same* rows. A metric difference on a few
hundred rows is mostly sampling noise when both models are weak, so a refusal to promote a
candidate that falls short of the champion, or a rollback of a champion that falls short of its
predecessor, also needs a one-sided paired test (A: the model kept or restored, B: the one
refused or rolled back) on the rows' predictions: McNemar's exact mid-p test on the discordant
pairs for accuracy, DeLong's test for ROC AUC (binary, or its extension to the macro one-vs-rest
AUC of several classes), and a seeded paired bootstrap over rows for
the loss metrics (MAE, RMSE, log loss). Each returns a `PairedTest` whose ``p_value`` is the
probability, were A no better than B, of a difference at least as favourable to A as observed.

A test that cannot be computed (too few rows, a single class) says why in ``why_not``: the caller
then does not act on it (no rollback; a candidate beyond the promotion margin stays a candidate).
Results of several batches combine (`combine`): McNemar by summing the discordant counts, the
others by a row-weighted normal approximation of their differences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

MIN_ROWS = 20  # below this no test is attempted: a p-value from a handful of rows misleads
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # fixed: a retried run re-decides identically
_CHUNK = 250_000  # resampled cells per bootstrap chunk: bounds memory at a few MB

MCNEMAR = "McNemar mid-p"
DELONG = "DeLong"
MACRO_DELONG = "DeLong macro one-vs-rest"
BOOTSTRAP = "paired bootstrap"


@dataclass(frozen=True)
class PairedTest:
    """One-sided paired test that model A is better than model B on the same rows."""

    test: str
    metric: str
    rows: int
    difference: float | None = None  # how much better A is than B, in metric units (> 0: A better)
    se: float | None = None  # standard error of `difference` (None for McNemar)
    statistic: float | None = None  # z for DeLong and combined tests; A-only correct pairs for McNemar
    p_value: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    why_not: str | None = None  # set when the test could not be computed

    def describe(self) -> str:
        """`DeLong p=0.003`, for one-line reasons."""
        if self.p_value is None:
            return f"{self.test} not computable: {self.why_not}"
        return f"{self.test} p={_fmt_p(self.p_value)}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PairedTest:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__ if k in d})


def _fmt_p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def significant(test: PairedTest | None, level: float | None) -> bool:
    """Whether the test shows A better at `level`; a disabled level (None or 0) always passes."""
    if not level:
        return True
    return test is not None and test.p_value is not None and test.p_value < level


def spent_level(alpha: float | None, look: int) -> float | None:
    """The level of the `look`-th test (1, 2, ...) of a sequence that re-tests accumulating data.

    Testing every look at `alpha` would act on noise more often the longer the sequence runs; spending
    ``alpha * 6 / (pi^2 look^2)`` at each (the terms sum to `alpha`) bounds the chance that *any* look
    acts on noise by `alpha`, however many there are. The price is power at late looks, which a real
    difference earns back: its evidence grows with the rows, the spent level only with their count.
    """
    if not alpha:
        return alpha
    if look < 1:
        raise ValueError(f"looks are counted from 1, got {look}")
    return alpha * 6.0 / (np.pi**2 * look**2)


def _not_computable(test: str, metric: str, rows: int, why: str) -> PairedTest:
    return PairedTest(test, metric, rows, why_not=why)


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray, metric: str = "accuracy") -> PairedTest:
    """Exact mid-p McNemar test on the discordant pairs (rows exactly one model gets right)."""
    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    rows = len(correct_a)
    if rows < MIN_ROWS:
        return _not_computable(MCNEMAR, metric, rows, f"only {rows} rows (< {MIN_ROWS})")
    return mcnemar_counts(int(np.sum(correct_a & ~correct_b)), int(np.sum(~correct_a & correct_b)), rows, metric)


def mcnemar_counts(a_only: int, b_only: int, rows: int, metric: str = "accuracy") -> PairedTest:
    """McNemar from the discordant counts: under H0 each discordant pair favours A with chance 1/2."""
    from scipy import stats  # here, not at import: scipy.stats costs ~1.4 s in every run worker's start-up

    n = a_only + b_only
    p = float(stats.binom.sf(a_only, n, 0.5) + 0.5 * stats.binom.pmf(a_only, n, 0.5))
    return PairedTest(
        MCNEMAR,
        metric,
        rows,
        difference=(a_only - b_only) / rows if rows else 0.0,
        statistic=float(a_only),
        p_value=min(1.0, p),
        detail={"a_only": a_only, "b_only": b_only},
    )


def _auc_components(y: np.ndarray, score: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong's structural components (per positive, per negative) from midranks."""
    from scipy import stats

    pos, neg = score[y], score[~y]
    m, n = len(pos), len(neg)
    ranks = stats.rankdata(score)
    pos_ranks, neg_ranks = ranks[y], ranks[~y]
    v_pos = (pos_ranks - stats.rankdata(pos)) / n  # share of negatives each positive outranks
    v_neg = 1.0 - (neg_ranks - stats.rankdata(neg)) / m  # share of positives outranking each negative
    auc = float((pos_ranks.sum() - m * (m + 1) / 2) / (m * n))
    return auc, v_pos, v_neg


def delong(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, metric: str = "roc_auc") -> PairedTest:
    """DeLong's test for two correlated ROC AUCs on the same rows (DeLong et al. 1988; midranks)."""
    from scipy import stats

    y = np.asarray(y).astype(bool)
    rows = len(y)
    m, n = int(y.sum()), int((~y).sum())
    if rows < MIN_ROWS:
        return _not_computable(DELONG, metric, rows, f"only {rows} rows (< {MIN_ROWS})")
    if m < 2 or n < 2:
        return _not_computable(DELONG, metric, rows, f"{m} positive and {n} negative rows: needs 2 of each")
    auc_a, pa, na = _auc_components(y, np.asarray(score_a, np.float64))
    auc_b, pb, nb = _auc_components(y, np.asarray(score_b, np.float64))
    var = np.cov(np.vstack([pa, pb])) / m + np.cov(np.vstack([na, nb])) / n
    var_diff = float(var[0, 0] + var[1, 1] - 2 * var[0, 1])
    diff = auc_a - auc_b
    if var_diff <= 1e-15:  # identical rankings: no evidence either way
        return PairedTest(DELONG, metric, rows, diff, 0.0, 0.0, 1.0 if diff <= 0 else 0.0, {"auc_a": auc_a})
    se = var_diff**0.5
    z = diff / se
    detail = {"auc_a": auc_a, "auc_b": auc_b, "positives": m, "negatives": n}
    return PairedTest(DELONG, metric, rows, diff, se, float(z), float(stats.norm.sf(z)), detail)


def macro_delong(y: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, metric: str = "roc_auc") -> PairedTest:
    """DeLong's test for two correlated macro one-vs-rest ROC AUCs (`learning.metrics.macro_roc_auc`).

    `y` holds class indices 0..k-1, `scores_*` a column per class. The macro AUC difference is a
    linear combination of the k classes' AUC differences, each a two-sample U-statistic, so DeLong's
    structural components carry over: a row of class s contributes its placement as a positive for
    class s (divided by k and by the class's rows) plus its placements as a negative for every other
    class c (divided by k and by c's negatives). Summing them per row keeps the covariance between
    class AUCs that share rows; the variance is the sum over classes s of ``rows_s * var(row sums)``
    within s (counts fixed, as DeLong's are). With two classes and complementary scores it is
    DeLong's test of the positive class exactly.
    """
    from scipy import stats

    y = np.asarray(y, np.int64)
    a, b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    rows = len(y)
    if a.ndim != 2 or a.shape != b.shape or a.shape[0] != rows:
        why = f"scores must both have shape ({rows}, classes), got {a.shape} and {b.shape}"
        return _not_computable(MACRO_DELONG, metric, rows, why)
    k = a.shape[1]
    if rows and (y.min() < 0 or y.max() >= k):
        why = f"labels must be class indices 0..{k - 1} (one score column each), got {y.min()}..{y.max()}"
        return _not_computable(MACRO_DELONG, metric, rows, why)
    counts = np.bincount(y, minlength=k) if rows else np.zeros(k, np.int64)
    if rows < MIN_ROWS:
        return _not_computable(MACRO_DELONG, metric, rows, f"only {rows} rows (< {MIN_ROWS})")
    if counts.min() < 2:
        scarce = ", ".join(f"class {c}: {counts[c]}" for c in np.flatnonzero(counts < 2))
        return _not_computable(MACRO_DELONG, metric, rows, f"{scarce} rows: needs 2 of each class")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return _not_computable(MACRO_DELONG, metric, rows, "a model's scores are not finite (diverged)")
    psi = np.zeros(rows)  # per row: its share of the macro AUC difference A - B
    aucs_a, aucs_b = np.empty(k), np.empty(k)
    for c in range(k):
        positive = y == c
        aucs_a[c], pa, na = _auc_components(positive, a[:, c])
        aucs_b[c], pb, nb = _auc_components(positive, b[:, c])
        psi[positive] += (pa - pb) / (k * counts[c])
        psi[~positive] += (na - nb) / (k * (rows - counts[c]))
    var_diff = float(sum(counts[s] * np.var(psi[y == s], ddof=1) for s in range(k)))
    diff = float(aucs_a.mean() - aucs_b.mean())
    detail = {"auc_a": float(aucs_a.mean()), "auc_b": float(aucs_b.mean()), "class_rows": counts.tolist()}
    if var_diff <= 1e-15:  # identical rankings in every class: no evidence either way
        return PairedTest(MACRO_DELONG, metric, rows, diff, 0.0, 0.0, 1.0 if diff <= 0 else 0.0, detail)
    se = var_diff**0.5
    z = diff / se
    return PairedTest(MACRO_DELONG, metric, rows, diff, se, float(z), float(stats.norm.sf(z)), detail)


def _loss_metric(metric: str, mean_loss: np.ndarray) -> np.ndarray:
    return np.sqrt(mean_loss) if metric == "rmse" else mean_loss


def paired_bootstrap(
    loss_a: np.ndarray,
    loss_b: np.ndarray,
    metric: str,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> PairedTest:
    """Paired bootstrap over rows of a loss metric (lower is better) from per-row losses.

    `loss_*` are per-row absolute errors (mae), squared errors (rmse, reported as the root of
    their mean) or log losses (log_loss). Rows are resampled together, so the two models' errors
    stay paired; p is the share of resamples where A is not better (plus one, over resamples plus one).
    """
    a, b = np.asarray(loss_a, np.float64), np.asarray(loss_b, np.float64)
    rows = len(a)
    if rows < MIN_ROWS:
        return _not_computable(BOOTSTRAP, metric, rows, f"only {rows} rows (< {MIN_ROWS})")
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    step = max(1, _CHUNK // rows)
    for start in range(0, resamples, step):
        idx = rng.integers(0, rows, size=(min(step, resamples - start), rows))
        diffs[start : start + len(idx)] = _loss_metric(metric, b[idx].mean(axis=1)) - _loss_metric(
            metric, a[idx].mean(axis=1)
        )
    observed = float(_loss_metric(metric, b.mean()) - _loss_metric(metric, a.mean()))
    p = (1 + int(np.sum(diffs <= 0))) / (resamples + 1)
    se = float(diffs.std(ddof=1))
    z = observed / se if se > 0 else None
    detail = {"resamples": resamples, "seed": seed}
    return PairedTest(BOOTSTRAP, metric, rows, observed, se, z, p, detail)


def row_losses(metric: str, y: np.ndarray, out: dict[str, np.ndarray]) -> np.ndarray:
    """Per-row losses whose mean (root of the mean for rmse) is the metric."""
    if metric == "log_loss":
        proba = np.clip(out["proba"][np.arange(len(y)), np.asarray(y, int)], 1e-15, 1.0)
        return -np.log(proba)
    err = np.asarray(out["predicted"], np.float64) - np.asarray(y, np.float64)
    return np.abs(err) if metric == "mae" else err**2


def paired_test(metric: str, y: np.ndarray, out_a: dict[str, np.ndarray], out_b: dict[str, np.ndarray]) -> PairedTest:
    """The test for `metric` from both models' row outputs (see `learning.prequential.row_outputs`)."""
    rows = len(y)
    if metric == "accuracy":
        return mcnemar(out_a["predicted"] == y, out_b["predicted"] == y)
    if metric == "roc_auc":
        scores_a, scores_b = out_a.get("scores"), out_b.get("scores")
        multi = scores_a is not None and np.ndim(scores_a) == 2
        if scores_a is None or scores_b is None:
            why = "ROC AUC needs both models' scores (probabilities or decision values); set promotion.metric: accuracy"
            return _not_computable(MACRO_DELONG if multi else DELONG, metric, rows, why)
        if multi:
            return macro_delong(y, scores_a, scores_b)
        return delong(np.asarray(y) == 1, scores_a, scores_b)
    if metric == "log_loss" and (out_a.get("proba") is None or out_b.get("proba") is None):
        return _not_computable(BOOTSTRAP, metric, rows, "a model without predict_proba has no log loss")
    return paired_bootstrap(row_losses(metric, y, out_a), row_losses(metric, y, out_b), metric)


def combine(tests: Sequence[PairedTest]) -> PairedTest | None:
    """One test over several batches' tests of the same two models (None when there are none).

    McNemar sums the discordant counts (exact); the others weight each batch's difference by its
    rows and take a one-sided normal test on the weighted difference with its standard error.
    """
    from scipy import stats

    tests = [t for t in tests if t.p_value is not None]
    if not tests:
        return None
    if len(tests) == 1:
        return tests[0]
    rows = sum(t.rows for t in tests)
    metric = tests[-1].metric
    if all(t.test == MCNEMAR for t in tests):
        a_only = sum(int(t.detail["a_only"]) for t in tests)
        b_only = sum(int(t.detail["b_only"]) for t in tests)
        return mcnemar_counts(a_only, b_only, rows, metric)
    if any(t.se is None for t in tests):
        why = f"cannot combine {sorted({t.test for t in tests})} over {len(tests)} batches"
        return _not_computable("combined", metric, rows, why)
    w = np.array([t.rows / rows for t in tests])
    diff = float(np.sum(w * [t.difference for t in tests]))
    se = float(np.sqrt(np.sum((w * [t.se for t in tests]) ** 2)))
    name = f"{tests[-1].test}, {len(tests)} batches combined"
    if se <= 0:
        return PairedTest(name, metric, rows, diff, 0.0, 0.0, 1.0 if diff <= 0 else 0.0)
    z = diff / se
    return PairedTest(name, metric, rows, diff, se, z, float(stats.norm.sf(z)), {"batches": len(tests)})
