"""The paired tests against independent references: scipy, brute force, hand-computed cases."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from dagster_project.learning.metrics import macro_roc_auc
from dagster_project.registry.significance import (
    BOOTSTRAP,
    DELONG,
    MACRO_DELONG,
    MCNEMAR,
    PairedTest,
    combine,
    delong,
    macro_delong,
    mcnemar,
    mcnemar_counts,
    paired_bootstrap,
    paired_test,
    significant,
)


def test_mcnemar_mid_p_by_hand():
    # 8 rows only A gets right, 2 only B: P(X > 8) + P(X = 8) / 2 for X ~ Bin(10, 1/2) = (11 + 45/2) / 1024.
    assert mcnemar_counts(8, 2, 100).p_value == pytest.approx(33.5 / 1024)
    assert mcnemar_counts(2, 8, 100).p_value == pytest.approx(1 - 33.5 / 1024)
    assert mcnemar_counts(8, 2, 100).difference == pytest.approx(0.06)


@pytest.mark.parametrize(("a_only", "b_only"), [(30, 12), (12, 30), (5, 5), (0, 7), (40, 0)])
def test_mcnemar_matches_scipy_exact_binomial_minus_half_the_point(a_only, b_only):
    n = a_only + b_only
    exact = stats.binomtest(a_only, n, 0.5, alternative="greater").pvalue
    assert mcnemar_counts(a_only, b_only, 500).p_value == pytest.approx(exact - 0.5 * stats.binom.pmf(a_only, n, 0.5))


def test_mcnemar_counts_discordant_pairs_from_rows():
    a = np.array([1] * 30 + [0] * 10 + [1] * 50 + [0] * 10, bool)
    b = np.array([0] * 30 + [1] * 10 + [1] * 50 + [0] * 10, bool)
    t = mcnemar(a, b)
    assert t.detail == {"a_only": 30, "b_only": 10} and t.rows == 100 and t.test == MCNEMAR


def _delong_brute_force(y, sa, sb):
    """DeLong's variance from its definition: psi over every (positive, negative) pair."""
    pos, neg = y == 1, y == 0

    def components(s):
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)

    auc_a, pa, na = components(sa)
    auc_b, pb, nb = components(sb)
    m, n = pos.sum(), neg.sum()
    var = np.var(pa - pb, ddof=1) / m + np.var(na - nb, ddof=1) / n
    return auc_a - auc_b, var**0.5


def test_delong_matches_its_definition_with_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 120)
    sa = np.round(y + rng.normal(size=120), 1)  # rounded: plenty of ties
    sb = np.round(0.5 * y + rng.normal(size=120), 1)
    diff, se = _delong_brute_force(y, sa, sb)
    t = delong(y == 1, sa, sb)
    assert t.test == DELONG
    assert t.difference == pytest.approx(diff) and t.se == pytest.approx(se)
    assert t.detail["auc_a"] == pytest.approx(roc_auc_score(y, sa))
    assert t.p_value == pytest.approx(stats.norm.sf(diff / se))


def test_delong_refuses_a_single_class_and_few_rows():
    assert delong(np.ones(100, bool), np.arange(100), np.arange(100)).why_not.startswith("100 positive and 0")
    assert "only 10 rows" in delong(np.arange(10) % 2 == 0, np.arange(10), np.arange(10)).why_not
    assert delong(np.ones(100, bool), np.arange(100), np.arange(100)).p_value is None


def test_delong_identical_models_show_nothing():
    y = np.arange(200) % 2 == 0
    s = np.random.default_rng(0).normal(size=200)
    assert delong(y, s, s).p_value == 1.0


def test_paired_bootstrap_agrees_with_the_normal_paired_test_on_many_rows():
    rng = np.random.default_rng(1)
    base = rng.exponential(size=3000)
    a, b = base + rng.normal(0, 0.5, 3000), base + rng.normal(0.03, 0.5, 3000)  # A's losses lower
    t = paired_bootstrap(a, b, "mae")
    d = b - a
    se = d.std(ddof=1) / len(d) ** 0.5
    assert t.test == BOOTSTRAP and t.difference == pytest.approx(d.mean())
    assert t.se == pytest.approx(se, rel=0.1)
    assert t.p_value == pytest.approx(stats.norm.sf(d.mean() / se), abs=0.02)


def test_paired_bootstrap_rmse_is_the_root_of_mean_squares_and_seeded():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1.0, 500) ** 2, rng.normal(0, 1.1, 500) ** 2
    t = paired_bootstrap(a, b, "rmse")
    assert t.difference == pytest.approx(np.sqrt(b.mean()) - np.sqrt(a.mean()))
    assert paired_bootstrap(a, b, "rmse") == t, "same rows, same seed: the same decision on a retry"


def test_paired_bootstrap_costs_milliseconds_for_thousands_of_rows():
    rng = np.random.default_rng(4)
    a, b = rng.random(5000), rng.random(5000)
    started = time.perf_counter()
    paired_bootstrap(a, b, "mae")
    assert time.perf_counter() - started < 1.0


def _class_probabilities(y: np.ndarray, classes: int, signal: float, rng: np.random.Generator) -> np.ndarray:
    """A model's softmax probabilities: each row's true class gets `signal` extra logit."""
    logits = rng.normal(size=(len(y), classes))
    logits[np.arange(len(y)), y] += signal
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def test_macro_delong_reports_the_products_and_sklearns_multiclass_auc():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 500)
    a, b = _class_probabilities(y, 4, 1.0, rng), _class_probabilities(y, 4, 0.8, rng)
    t = macro_delong(y, a, b)
    assert t.test == MACRO_DELONG and t.rows == 500 and t.detail["class_rows"] == np.bincount(y).tolist()
    for name, scores in (("auc_a", a), ("auc_b", b)):
        assert t.detail[name] == pytest.approx(roc_auc_score(y, scores, multi_class="ovr", average="macro"))
        assert t.detail[name] == pytest.approx(macro_roc_auc(y, scores))
    assert t.difference == pytest.approx(t.detail["auc_a"] - t.detail["auc_b"])
    assert t.p_value == pytest.approx(stats.norm.sf(t.difference / t.se))


def test_macro_delong_with_two_complementary_columns_is_delong():
    y, s = _near_chance(5, 300, 0.6)
    other = 0.4 * y + np.random.default_rng(6).normal(size=300)
    pa, pb = 1 / (1 + np.exp(-s)), 1 / (1 + np.exp(-other))
    t, binary = macro_delong(y, np.column_stack([1 - pa, pa]), np.column_stack([1 - pb, pb])), delong(y == 1, pa, pb)
    assert t.difference == pytest.approx(binary.difference) and t.se == pytest.approx(binary.se)


def test_macro_delong_standard_error_matches_a_stratified_bootstrap():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, 400)
    a, b = _class_probabilities(y, 3, 0.8, rng), _class_probabilities(y, 3, 0.6, rng)
    by_class = [np.flatnonzero(y == c) for c in range(3)]
    diffs = []
    for _ in range(300):  # resample rows within each class, as DeLong conditions on the class counts
        idx = np.concatenate([rng.choice(rows, len(rows)) for rows in by_class])
        diffs.append(macro_roc_auc(y[idx], a[idx]) - macro_roc_auc(y[idx], b[idx]))
    assert macro_delong(y, a, b).se == pytest.approx(np.std(diffs, ddof=1), rel=0.15)


def test_macro_delong_holds_its_level_when_the_two_models_are_exchangeable():
    rng = np.random.default_rng(8)
    p_values = []
    for _ in range(200):
        y = rng.integers(0, 3, 500)
        a, b = _class_probabilities(y, 3, 0.6, rng), _class_probabilities(y, 3, 0.6, rng)
        swap = (rng.random(500) < 0.5)[:, None]  # each row's outputs swapped at random: the null holds exactly
        p_values.append(macro_delong(y, np.where(swap, b, a), np.where(swap, a, b)).p_value)
    p_values = np.array(p_values)
    assert 0.015 <= np.mean(p_values < 0.05) <= 0.10, "about 5 % of 200 (10 expected; 3 to 20 allowed)"
    assert 0.38 <= np.mean(p_values < 0.5) <= 0.62, "p roughly uniform: about half below 0.5"


def test_macro_delong_finds_a_clearly_better_model():
    rng = np.random.default_rng(9)
    y = rng.integers(0, 5, 500)
    t = macro_delong(y, _class_probabilities(y, 5, 1.5, rng), _class_probabilities(y, 5, 0.5, rng))
    assert t.difference > 0.1 and t.p_value < 0.01
    assert macro_delong(y, _class_probabilities(y, 5, 0.5, rng), _class_probabilities(y, 5, 1.5, rng)).p_value > 0.99


def test_macro_delong_refuses_a_missing_or_single_row_class_and_few_rows():
    rng = np.random.default_rng(10)
    y = rng.integers(0, 2, 200)  # class 2 never occurs in these rows
    a, b = _class_probabilities(y, 3, 1.0, rng), _class_probabilities(y, 3, 1.0, rng)
    t = macro_delong(y, a, b)
    assert t.p_value is None and t.why_not == "class 2: 0 rows: needs 2 of each class"
    assert "only 10 rows" in macro_delong(np.arange(10) % 3, a[:10], b[:10]).why_not
    assert "shape" in macro_delong(y, a, b[:, :2]).why_not


def test_macro_delong_identical_models_show_nothing():
    rng = np.random.default_rng(11)
    y = rng.integers(0, 3, 300)
    a = _class_probabilities(y, 3, 1.0, rng)
    assert macro_delong(y, a, a).p_value == 1.0


def _near_chance(seed: int, rows: int, signal: float):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, rows)
    return y, signal * y + rng.normal(size=rows)


def test_paired_test_dispatches_by_metric():
    y, s = _near_chance(0, 300, 0.3)
    out_a = {"predicted": (s > 0.15).astype(int), "scores": s, "proba": np.column_stack([1 - s, s])}
    out_b = {"predicted": np.zeros(300, int), "scores": -s, "proba": None}
    assert paired_test("accuracy", y, out_a, out_b).test == MCNEMAR
    assert paired_test("roc_auc", y, out_a, out_b).test == DELONG
    assert "predict_proba" in paired_test("log_loss", y, out_a, out_b).why_not
    assert "accuracy" in paired_test("roc_auc", y, {**out_a, "scores": None}, out_b).why_not
    y3 = np.arange(300) % 3
    proba = _class_probabilities(y3, 3, 1.0, np.random.default_rng(1))
    multi_a, multi_b = {"predicted": proba.argmax(1), "scores": proba}, {"predicted": y3, "scores": proba[:, ::-1]}
    assert paired_test("roc_auc", y3, multi_a, multi_b).test == MACRO_DELONG
    assert paired_test("roc_auc", y3, multi_a, multi_b).p_value < 1e-6
    assert paired_test("rmse", y.astype(float), out_a, out_b).test == BOOTSTRAP


def test_combine_sums_mcnemar_counts_and_weights_the_rest_by_rows():
    assert combine([mcnemar_counts(8, 2, 100), mcnemar_counts(4, 6, 100)]) == mcnemar_counts(12, 8, 200)
    t1 = PairedTest(DELONG, "roc_auc", 100, difference=0.02, se=0.01, p_value=0.02)
    t2 = PairedTest(DELONG, "roc_auc", 300, difference=0.04, se=0.02, p_value=0.02)
    both = combine([t1, t2])
    assert both.difference == pytest.approx(0.25 * 0.02 + 0.75 * 0.04)
    assert both.se == pytest.approx(np.hypot(0.25 * 0.01, 0.75 * 0.02))
    assert both.p_value == pytest.approx(stats.norm.sf(both.difference / both.se))
    assert combine([t1]) is t1 and combine([]) is None
    rng = np.random.default_rng(12)
    y1, y2 = rng.integers(0, 3, 200), rng.integers(0, 3, 600)
    m1 = macro_delong(y1, _class_probabilities(y1, 3, 1.0, rng), _class_probabilities(y1, 3, 0.7, rng))
    m2 = macro_delong(y2, _class_probabilities(y2, 3, 1.0, rng), _class_probabilities(y2, 3, 0.7, rng))
    multi = combine([m1, m2])
    assert multi.test == f"{MACRO_DELONG}, 2 batches combined" and multi.rows == 800
    assert multi.difference == pytest.approx(0.25 * m1.difference + 0.75 * m2.difference)


def test_significant_levels():
    t = PairedTest(DELONG, "roc_auc", 500, p_value=0.03)
    assert significant(t, 0.05) and not significant(t, 0.01)
    assert significant(None, None) and significant(None, 0.0), "a disabled test never blocks"
    assert not significant(PairedTest(DELONG, "roc_auc", 5, why_not="few rows"), 0.05)
