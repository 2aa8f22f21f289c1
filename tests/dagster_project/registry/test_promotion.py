"""The promotion gate's rule (non-inferiority): the margin as a table (test off), then margin and
paired test, which only turns a refusal beyond the margin into a promotion when it is noise."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from dagster_project.registry.promotion import default_metric, gate, stream_metric
from dagster_project.registry.significance import delong


@pytest.mark.parametrize(
    ("metric", "candidate", "champion", "rows", "promote", "says"),
    [
        ("roc_auc", 0.95, 0.94, 500, True, "promoted: roc_auc 0.9500 vs v2 0.9400 on 500 unseen rows, ahead by 0.0100"),
        ("roc_auc", 0.935, 0.94, 500, True, "within margin"),
        ("roc_auc", 0.90, 0.94, 500, False, "worse by 0.0400"),
        ("rmse", 1.0, 1.005, 500, True, "unseen rows, ahead by 0.005"),
        ("rmse", 1.2, 1.0, 500, False, "worse by 0.2 > margin 0.01 (1% of 1)"),
        ("log_loss", 0.30, 0.25, 500, False, "worse by 0.0500"),
        ("roc_auc", 0.99, 0.50, 10, False, "deferred"),
        ("roc_auc", None, 0.94, 500, False, "not computable"),
    ],
)
def test_gate(metric, candidate, champion, rows, promote, says):
    cand = {} if candidate is None else {metric: candidate}
    result = gate(metric, 0.01, 50, "v3", cand, "v2", {metric: champion}, rows)
    assert result.promote is promote
    assert says in result.reason
    assert result.evidence()["candidate"] == "v3" and result.evidence()["champion"] == "v2"


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e6])
def test_a_regression_margin_is_a_fraction_of_the_champion_s_error_at_any_target_scale(scale: float) -> None:
    """An absolute 0.01 promoted a candidate with 5x the champion's RMSE on targets near 0.001, and
    on targets near 1e6 it was no margin at all: the same relative shortfall now gets the same answer."""
    worse = gate("rmse", 0.01, 50, "v3", {"rmse": 5.0 * scale}, "v2", {"rmse": 1.0 * scale}, 500)
    assert not worse.promote and f"> margin {0.01 * scale:.4g} (1% of {scale:.4g})" in worse.reason
    close = gate("mae", 0.01, 50, "v3", {"mae": 1.005 * scale}, "v2", {"mae": 1.0 * scale}, 500)
    assert close.promote and "within margin" in close.reason


def test_a_candidate_ahead_of_the_champion_says_ahead_by_not_within_margin() -> None:
    """ "v3 promoted: roc_auc 0.9500 vs v2 0.9300 ... (within margin 0.01)" read as if v3 were behind."""
    ahead = gate("roc_auc", 0.01, 50, "v3", {"roc_auc": 0.95}, "v2", {"roc_auc": 0.93}, 500)
    assert ahead.reason == "v3 promoted: roc_auc 0.9500 vs v2 0.9300 on 500 unseen rows, ahead by 0.0200"
    lower = gate("log_loss", 0.01, 50, "v3", {"log_loss": 0.20}, "v2", {"log_loss": 0.25}, 500)
    assert lower.reason.endswith("on 500 unseen rows, ahead by 0.0500")  # lower is better: still ahead
    level = gate("roc_auc", 0.01, 50, "v3", {"roc_auc": 0.93001}, "v2", {"roc_auc": 0.93}, 500)
    assert level.reason.endswith("roc_auc 0.9300 vs v2 0.9300 on 500 unseen rows (within margin 0.01)")
    behind = gate("roc_auc", 0.01, 50, "v3", {"roc_auc": 0.925}, "v2", {"roc_auc": 0.93}, 500)
    assert behind.reason.endswith("on 500 unseen rows (within margin 0.01)")


def test_default_metric_follows_the_task():
    assert default_metric("classification", 2) == "roc_auc"
    assert default_metric("classification", 3) == "accuracy"
    assert default_metric("regression", 0) == "rmse"


def test_stream_metric_prefers_the_specs_metric_over_the_tasks_default():
    from dagster_project.spec import StreamSpec

    features = [{"name": "x"}]
    binary = StreamSpec(name="s", features=features, label={"classes": [0, 1]})
    assert stream_metric(binary) == "roc_auc"
    three = StreamSpec(name="s", features=features, label={"classes": [0, 1, 2]})
    assert stream_metric(three) == "accuracy"
    chosen = StreamSpec(name="s", features=features, label={"classes": [0, 1]}, promotion={"metric": "log_loss"})
    assert stream_metric(chosen) == "log_loss"


def _weak_scores(seed: int, rows: int, signal: float):
    """Labels and two correlated scorers near chance: the first with `signal`, the second with 0.3
    (AUC about 0.58)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, rows)
    common = rng.normal(size=rows)
    return y, signal * y + common + rng.normal(size=rows), 0.3 * y + common + rng.normal(size=rows)


def _gate_on(y, candidate, champion, significance=0.05, margin=0.02):
    test = delong(y == 1, champion, candidate)  # A is the champion: is the candidate really worse?
    cand, champ = {"roc_auc": roc_auc_score(y, candidate)}, {"roc_auc": roc_auc_score(y, champion)}
    return gate("roc_auc", margin, 50, "v7", cand, "v6", champ, len(y), test=test, significance=significance)


def test_a_noise_level_shortfall_beyond_the_margin_is_promoted_with_its_p_value():
    # Seed 59: equally good models, but the candidate looks 0.04 worse on these 500 rows.
    y, candidate, champion = _weak_scores(59, 500, signal=0.3)
    result = _gate_on(y, candidate, champion)
    assert result.promote and 0.05 <= result.p_value < 0.1
    assert result.reason == (
        "v7 promoted: roc_auc 0.5503 vs v6 0.5906 on 500 unseen rows, worse by 0.0402 > margin 0.02 "
        f"but not significant (DeLong p={result.p_value:.3f} >= 0.05)"
    )
    test = result.evidence()["test"]
    assert test["test"] == "DeLong" and test["rows"] == 500 and test["difference"] > 0.04  # champion (A) - candidate
    assert result.significance == 0.05


def test_significance_off_restores_the_margin_alone():
    y, candidate, champion = _weak_scores(59, 500, signal=0.3)
    result = _gate_on(y, candidate, champion, significance=None)
    assert not result.promote and result.significance is None and result.p_value is not None
    assert result.reason == (
        "kept v6 (v7 stays a candidate): v7 roc_auc 0.5503 vs v6 0.5906 on 500 unseen rows, "
        "worse by 0.0402 > margin 0.02"
    )
    assert not _gate_on(y, candidate, champion, significance=0).promote


def test_a_real_significant_shortfall_keeps_the_champion_with_its_p_value():
    y, champion, candidate = _weak_scores(1, 250, signal=1.2)
    result = _gate_on(y, candidate, champion)
    assert not result.promote and result.p_value < 0.001
    assert result.reason.startswith("kept v6 (v7 stays a candidate): v7 roc_auc 0.")
    assert result.reason.endswith(f"> margin 0.02 and significant (DeLong p={result.p_value:.1e} < 0.05)")


def test_within_the_margin_is_promoted_and_the_test_recorded():
    y, candidate, champion = _weak_scores(59, 500, signal=0.3)
    result = _gate_on(y, candidate, champion, margin=0.05)
    assert result.promote and result.p_value is not None and result.test["test"] == "DeLong"
    assert result.reason == "v7 promoted: roc_auc 0.5503 vs v6 0.5906 on 500 unseen rows (within margin 0.05)"
    better = _gate_on(y, champion, candidate)  # the candidate is the better-looking one
    assert better.promote and better.reason.endswith(", ahead by 0.0402") and better.p_value > 0.9


def test_the_margin_decides_when_the_test_cannot_be_computed():
    y = np.ones(100, int)
    s = np.arange(100.0)
    args = ("roc_auc", 0.01, 50, "v7", {"roc_auc": 0.8}, "v6", {"roc_auc": 0.9}, 100)
    result = gate(*args, delong(y == 1, s, s), 0.05)
    assert not result.promote and result.reason.endswith(
        "worse by 0.1000 > margin 0.01; the test could not be computed "
        "(DeLong not computable: 100 positive and 0 negative rows: needs 2 of each), so the margin decides"
    )
    assert not gate(*args, None, 0.05).promote
    within = ("roc_auc", 0.01, 50, "v7", {"roc_auc": 0.895}, "v6", {"roc_auc": 0.9}, 100)
    assert gate(*within, delong(y == 1, s, s), 0.05).promote


class _Constant:
    """A regressor predicting the labels' level off by float rounding (`jitter` of spread)."""

    def __init__(self, level: float, jitter: float, seed: int) -> None:
        self.level, self.jitter, self.seed = level, jitter, seed

    def predict(self, X):
        return self.level + self.jitter * np.random.default_rng(self.seed).normal(size=len(X))


@pytest.mark.parametrize("level", [0.0, 3.0, 1e6])
def test_float_noise_on_constant_labels_is_level_not_a_significant_difference(level: float) -> None:
    # Two versions on constant labels scored RMSE 6.3e-14 and 5.5e-14: the paired bootstrap called the
    # candidate significantly worse, and the gate kept the champion on rounding.
    from dagster_project.registry.promotion import judge, noise_floor
    from dagster_project.spec import StreamSpec

    spec = StreamSpec(name="flat", task="regression", features=[{"name": "a"}, {"name": "b"}])
    X, y = np.zeros((400, 2)), np.full(400, level)
    jitter = 6e-14 * max(1.0, level)
    result = judge(spec, "rmse", "v7", _Constant(level, 1.5 * jitter, 1), "v6", _Constant(level, jitter, 2), X, y)
    assert result.candidate_value > result.champion_value and result.p_value < 0.05  # the test calls it real
    assert result.promote and "is float noise" in result.reason, result.reason
    assert result.noise == noise_floor("rmse", y) == 1e-9 * max(1.0, level)


def test_a_real_difference_on_tiny_labels_still_decides() -> None:
    # The floor is relative to the labels: on labels around 1e-9 a candidate twice as far off is worse.
    rng = np.random.default_rng(3)
    y = 1e-9 * (1 + rng.normal(size=400))
    champ, cand = y + 1e-10 * rng.normal(size=400), y + 3e-10 * rng.normal(size=400)
    rmse = lambda p: {"rmse": float(np.sqrt(np.mean((p - y) ** 2)))}  # noqa: E731
    from dagster_project.registry.promotion import noise_floor
    from dagster_project.registry.significance import paired_test

    test = paired_test("rmse", y, {"predicted": champ}, {"predicted": cand})
    result = gate("rmse", 0.01, 50, "v7", rmse(cand), "v6", rmse(champ), 400, test, 0.05, noise_floor("rmse", y))
    assert not result.promote and "significant" in result.reason
