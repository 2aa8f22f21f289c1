"""The MLP regressor's label units while few labels have been seen (learning/scaled_mlp.py).

A first batch of two labels 0.01 apart fixed a scale of 0.005 for good, and the MAE stayed at that
of predicting the mean; the units now follow the labels until `UNITS_FROM_LABELS` were seen.
"""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import clone

from dagster_project.learning import scale_out, scaled_mlp
from dagster_project.learning.estimators import build_model, default_params, fit_estimator, partial_fit
from dagster_project.learning.scaled_mlp import TargetScaledMLPRegressor
from dagster_project.onnx.export import check_parity, export_onnx
from dagster_project.spec import StreamSpec

FEATURES = [{"name": f"x{i}"} for i in range(5)]


def spec(**model: object) -> StreamSpec:
    return StreamSpec(name="slow", task="regression", features=FEATURES, model={"estimator": "mlp_regressor", **model})


def stream(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Friedman #1 (noise 1) in units of 20 around 1,000: predicting the mean is ~80 off."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, (rows, 5))
    y = 10 * np.sin(np.pi * X[:, 0] * X[:, 1]) + 20 * (X[:, 2] - 0.5) ** 2 + 10 * X[:, 3] + 5 * X[:, 4]
    return X, 700 + 20 * (1 + y + rng.normal(size=rows))


def learn(model, X: np.ndarray, y: np.ndarray):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():  # scikit-learn clips batch_size 50 to a batch of 2 rows
        warnings.simplefilter("ignore", UserWarning)
        return partial_fit(model, X, y, None)


def test_a_first_batch_of_two_labels_no_longer_fixes_units_the_network_never_learns_in() -> None:
    # The reviewer's case, through build_model / partial_fit: a slow stream's first batch holds two
    # labels, 1000.00 and 1000.01 (scale 0.005); then batches of 400. Before the fix the MAE stayed at
    # that of predicting the mean (ratio ~1.0 on every batch); from a 400-row first batch it is ~0.3.
    model = learn(build_model(spec()), np.random.default_rng(1).uniform(0, 1, (2, 5)), np.array([1000.0, 1000.01]))
    X, y = stream(8 * 400, seed=5)
    seen, ratios = [1000.0, 1000.01], []
    for start in range(0, len(X), 400):
        rows = slice(start, start + 400)
        mae = float(np.mean(np.abs(model.predict(X[rows]) - y[rows])))
        ratios.append(mae / float(np.mean(np.abs(y[rows] - np.mean(seen)))))
        model = learn(model, X[rows], y[rows])
        seen.extend(y[rows])
    print(f"MAE / predicting the mean per batch {[round(r, 3) for r in ratios]}")
    assert max(ratios[-3:]) < 0.5, ratios
    estimator = model.steps[-1][1]
    # Fixed after the first 400-row batch (2 + 400 labels), from those labels, not moved since.
    first = np.array([1000.0, 1000.01, *y[:400]])
    assert (estimator.target_offset_, estimator.target_scale_) == pytest.approx((first.mean(), first.std()))
    X_new, _ = stream(300, seed=6)
    parity = check_parity(model, export_onnx(model, n_features=5), X_new, spec().parity.atol, spec().parity.rtol)
    assert parity.passed, parity.reason


def test_new_units_re_express_the_network_exactly_then_freeze() -> None:
    X, y = stream(1000, seed=7)
    estimator = TargetScaledMLPRegressor(**default_params("mlp_regressor"))
    estimator.partial_fit(X[:30], y[:30])
    for start in (30, 60, 90):  # each batch moves the units (and starts a fresh Adam)
        before, units = estimator.predict(X), (estimator.target_offset_, estimator.target_scale_)
        estimator.learn_target(y[start : start + 30])
        assert (estimator.target_offset_, estimator.target_scale_) != units
        assert not hasattr(estimator, "_optimizer")
        np.testing.assert_allclose(estimator.predict(X), before, rtol=1e-12, atol=1e-9 * np.abs(before).max())
        with scaled_mlp.target_held(estimator):  # counted already
            estimator.partial_fit(X[start : start + 30], y[start : start + 30])
    assert estimator.target_labels_ == 120 and not estimator.target_fixed_
    estimator.partial_fit(X[120:220], y[120:220])
    assert estimator.target_fixed_ and estimator.target_labels_ >= scaled_mlp.UNITS_FROM_LABELS
    units = (estimator.target_offset_, estimator.target_scale_)
    estimator.partial_fit(X[220:620], 10 * y[220:620])  # later drift in level moves nothing
    assert (estimator.target_offset_, estimator.target_scale_) == units


def test_passes_count_a_batch_s_labels_once() -> None:
    X, y = stream(100, seed=8)
    estimator = TargetScaledMLPRegressor(**default_params("mlp_regressor"))
    fit_estimator(estimator, X, y, None, passes=3)
    assert estimator.target_labels_ == 100 and not hasattr(estimator, "target_held_")
    assert (estimator.target_offset_, estimator.target_scale_) == pytest.approx((y.mean(), y.std()))


def test_scale_out_groups_share_units_learned_from_the_whole_batch_while_they_are_open() -> None:
    # Groups counting their own rows would move their copies' units apart: averaged, the networks
    # would mix units. The split counts the whole batch once; the groups count none.
    s = spec(scale_out={"workers": 2, "min_rows_per_worker": 10})
    X, y = stream(440, seed=9)
    model = build_model(s)
    for rows in (slice(0, 40), slice(40, 440)):
        model, report = scale_out.fit(model, s, X[rows], y[rows], np.arange(rows.stop - rows.start) % 2, None)
        assert report.workers == 2
        estimator = model.steps[-1][1]
        assert estimator.target_labels_ == rows.stop
        assert (estimator.target_offset_, estimator.target_scale_) == pytest.approx(
            (y[: rows.stop].mean(), y[: rows.stop].std())
        )
    assert estimator.target_fixed_
    parity = check_parity(model, export_onnx(model, n_features=5), X, s.parity.atol, s.parity.rtol)
    assert parity.passed, parity.reason


def test_a_small_constant_first_batch_takes_its_level_then_later_spread() -> None:
    X, y = stream(400, seed=10)
    estimator = TargetScaledMLPRegressor(**default_params("mlp_regressor"))
    estimator.partial_fit(X[:10], np.full(10, 42.0))
    assert (estimator.target_offset_, estimator.target_scale_) == (42.0, 42.0)
    zero = TargetScaledMLPRegressor(**default_params("mlp_regressor")).partial_fit(X[:10], np.zeros(10))
    assert (zero.target_offset_, zero.target_scale_) == (0.0, 1.0)
    estimator.partial_fit(X[10:400], y[10:400])
    labels = np.array([*np.full(10, 42.0), *y[10:400]])
    assert (estimator.target_offset_, estimator.target_scale_) == pytest.approx((labels.mean(), labels.std()))


def test_a_model_pickled_before_keeps_its_units_and_clones_start_afresh() -> None:
    X, y = stream(600, seed=11)
    estimator = TargetScaledMLPRegressor(**default_params("mlp_regressor")).partial_fit(X[:2], y[:2])
    for name in ("target_fixed_", "target_labels_", "target_mean_", "target_m2_"):  # the earlier release's
        del estimator.__dict__[name]
    units = (estimator.target_offset_, estimator.target_scale_)
    older = pickle.loads(pickle.dumps(estimator))
    assert older.target_fixed_
    older.partial_fit(X[2:402], y[2:402])  # as it learned: units fixed by its first batch
    assert (older.target_offset_, older.target_scale_) == units
    assert np.isfinite(older.predict(X[402:])).all()
    fresh = clone(older)
    assert not any(k.startswith("target_") for k in fresh.__dict__)
    fresh.partial_fit(X[:2], y[:2])
    assert not fresh.target_fixed_
    again = pickle.loads(pickle.dumps(fresh))
    assert again.target_labels_ == 2 and not again.target_fixed_
