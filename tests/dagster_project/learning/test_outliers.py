"""One in-range outlier while learning: clipped to the feature's learned spread, it cannot ruin the model."""

from __future__ import annotations

import typing

import numpy as np
import pytest
from sklearn.linear_model import SGDClassifier, SGDRegressor

from dagster_project.learning import outliers
from dagster_project.learning import prequential as training
from dagster_project.learning.estimators import stable_step_weights
from dagster_project.learning.outliers import CLIP_AFTER_ROWS, clip_outliers
from dagster_project.spec import StreamSpec

WEIGHTS = np.array([2.0, -1.0, 1.0, 0.5])


def regression_spec(variant: str, **model: typing.Any) -> StreamSpec:
    features = [{"name": f"f{i}"} for i in range(4)]
    if variant == "category":  # the numeric scaler inside the encoder
        features.append({"name": "colour", "type": "category", "categories": ["red", "blue"]})
    if variant == "scale_out":
        model["scale_out"] = {"workers": 2, "min_rows_per_worker": 10}
        model["estimator"] = "sgd_regressor"
    return StreamSpec(name="outliers", task="regression", features=features, model=model)


def mean_error_after_one_outlier(spec: StreamSpec, outlier: float | None, in_label: bool = False) -> float:
    """Test-then-train over 20 batches of 500 rows, one value `outlier` standard deviations out in
    batch 4 (a feature, or the label); the mean absolute error of batches 6-20 (scored before each learns)."""
    rng = np.random.default_rng(3)
    model, errors = None, []
    for batch in range(20):
        X = rng.normal(size=(500, len(spec.inputs)))
        if spec.inputs[-1].type == "category":
            X[:, -1] = rng.integers(0, 2, 500)
        y = 1.0 + X[:, :4] @ WEIGHTS + 0.1 * rng.normal(size=500)
        if batch == 3 and outlier is not None and in_label:
            y[100] = 1.0 + outlier * np.linalg.norm(WEIGHTS)  # the label's spread is about |WEIGHTS|
        elif batch == 3 and outlier is not None:
            X[100, 0] = outlier  # the features are standard normal: `outlier` standard deviations out
        partitions = np.arange(500) % 2
        model, metrics, _, _ = training.test_then_train_partitioned(model, spec, X, y, partitions)
        if batch >= 5:
            errors.append(metrics.mae)
    return float(np.mean(errors))


@pytest.mark.parametrize("variant", ["plain", "category", "scale_out"])
def test_one_outlier_does_not_ruin_what_the_model_learns_after_it(variant: str) -> None:
    """A sensor's 1e9 among standard-normal readings (within the contract's ±1e37): unclipped, the
    scaler's variance swallowed the feature and the error stayed many times the clean run's."""
    spec = regression_spec(variant)
    clean = mean_error_after_one_outlier(spec, None)

    clipped = mean_error_after_one_outlier(spec, 1e9)
    unclipped = mean_error_after_one_outlier(regression_spec(variant, clip_sigmas=None), 1e9)

    assert clipped < 1.1 * clean, (clipped, clean)
    assert unclipped > 3 * clean, (unclipped, clean)  # what the setting prevents


@pytest.mark.parametrize("variant", ["plain", "scale_out"])
def test_one_label_in_the_wrong_unit_does_not_ruin_a_regression_model(variant: str) -> None:
    """SGD's step grows with the error: one label 1e6 standard deviations out (a price in cents among
    dollars) and the model never recovered; clipped to 10 learned standard deviations it is one row."""
    spec = regression_spec(variant)
    clean = mean_error_after_one_outlier(spec, None)

    clipped = mean_error_after_one_outlier(spec, 1e6, in_label=True)
    unclipped = mean_error_after_one_outlier(regression_spec(variant, clip_sigmas=None), 1e6, in_label=True)

    assert clipped < 1.1 * clean, (clipped, clean)
    assert unclipped > 2 * clean, (unclipped, clean)  # 22x sequential; the workers' average dampens it to 2x


def test_label_moments_are_the_clipped_labels_learned_and_survive_a_scaled_out_batch() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(600, 4))
    y = X @ WEIGHTS
    sequential = training.test_then_train_partitioned(None, regression_spec("plain"), X, y, np.arange(600) % 2)[0]
    spec = regression_spec("scale_out")
    fanned = training.test_then_train_partitioned(None, spec, X[:300], y[:300], np.arange(300) % 2)[0]
    fanned = training.test_then_train_partitioned(fanned, spec, X[300:], y[300:], np.arange(300) % 2)[0]

    for model in (sequential, fanned):
        assert model.label_moments_.n == 600
        np.testing.assert_allclose([model.label_moments_.mean, model.label_moments_.std], [y.mean(), y.std()])


@pytest.mark.parametrize("level", [20.7, 20.0])  # a running variance of 8.5e-30, and of exactly 0
def test_a_feature_constant_for_a_while_then_varying_is_learned_as_it_varies(level: float) -> None:
    """A stuck sensor that starts to vary: judged by the rounding noise of its constant phase, every
    new value was clipped to the old level, and the model's error reached 9e9."""
    spec = StreamSpec(name="stuck", task="regression", features=[{"name": "temp"}, {"name": "x"}])
    rng = np.random.default_rng(0)
    model, errors = None, []
    for batch in range(15):
        temp = np.full(1000, level) if batch < 5 else level + rng.normal(size=1000)
        X = np.c_[temp, rng.normal(size=1000)]
        model, metrics, _ = training.test_then_train(model, spec, X, 3 * (temp - level) + X[:, 1])
        errors.append(metrics.mae)
    assert max(errors[7:]) < 0.05, errors


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_a_rare_flag_keeps_its_learned_spread(task: str) -> None:
    """A 0/1 flag set on 1 row in 200 has its 1 at 14 standard deviations: clipped, the scaler learned
    a smaller spread, which clipped it further (0.07 fell to 0.015 and kept falling). A value within
    the range already learned is never clipped."""
    label = {} if task == "regression" else {"label": {"classes": [0, 1]}}
    spec = StreamSpec(name="rare", task=task, features=[{"name": "flag"}, {"name": "x"}], **label)
    rng = np.random.default_rng(1)
    model = None
    for _ in range(60):
        X = np.c_[(rng.random(1000) < 0.005).astype(float), rng.normal(size=1000)]
        y = 5.0 * X[:, 0] + X[:, 1] if task == "regression" else (3 * X[:, 0] + X[:, 1] > 1.5).astype(int)
        model, _, _ = training.test_then_train(model, spec, X, y)
        assert clip_outliers(model, X, 10.0)[1] == 0
    assert 0.06 < np.sqrt(model.steps[0][1].var_[0]) < 0.08  # the flag's true spread is 0.0705


def test_a_model_learned_before_ranges_were_kept_is_not_clipped_after_the_upgrade() -> None:
    """A model pickled by a release without clipping has no learned range: begun after the upgrade,
    the range missed a rare flag's 1 (17 standard deviations out), clipped it in every batch and the
    flag rows' error rose from 0.26 to 16.8. What it learned before counts as learned."""
    spec = regression_spec("plain", estimator="sgd_regressor")
    rng = np.random.default_rng(0)
    model, flag_errors = None, []
    for batch in range(40):
        X = np.c_[rng.normal(size=(500, 3)), (rng.random(500) < 1 / 300).astype(float)]
        y = X[:, :3] @ WEIGHTS[:3] + 30.0 * X[:, 3] + 0.1 * rng.normal(size=500)
        if batch == 10:  # as the previous release pickled it
            del model.feature_range_, model.label_moments_
        if batch >= 10:
            assert clip_outliers(model, X, 10.0)[1] == 0
            assert outliers.clip_labels(model, y, 10.0)[1] == 0
        if batch >= 20 and X[:, 3].any():
            flag_errors.append(np.abs(model.predict(X[X[:, 3] == 1]) - y[X[:, 3] == 1]).mean())
        model, _, _ = training.test_then_train(model, spec, X, y)
    assert np.mean(flag_errors) < 1.0, flag_errors


@pytest.mark.parametrize("change", ["spread", "label_level"])
def test_a_regime_change_is_learned_as_it_is_not_clipped(change: str) -> None:
    """When most of a batch is outside the bounds the regime changed: clipped, a spread grown a
    hundredfold taught the model values it was never served (MAE x56 over 2,000 rows after it)."""
    errors: dict[float | None, list[float]] = {}
    for sigmas in (10.0, None):
        model, errors[sigmas] = None, []
        spec = regression_spec("plain", clip_sigmas=sigmas)
        rng = np.random.default_rng(2)
        for batch in range(16):
            X = rng.normal(size=(500, 4))
            if change == "spread" and batch >= 10:
                X[:, 0] *= 100.0
            y = 1.0 + X @ WEIGHTS + 0.1 * rng.normal(size=500)
            if change == "label_level" and batch >= 10:
                y += 30 * np.linalg.norm(WEIGHTS)
            model, metrics, _ = training.test_then_train(model, spec, X, y)
            if batch >= 10:
                errors[sigmas].append(metrics.mae)
    assert np.mean(errors[10.0]) < 1.1 * np.mean(errors[None]), errors


@pytest.mark.parametrize("estimator", ["adaptive_sgd_regressor", "sgd_regressor"])
def test_a_rare_flag_that_moves_the_label_does_not_make_sgd_diverge(estimator: str) -> None:
    """A 0/1 flag on 1 row in 500 scales to about 22: a squared-loss step on its rows overshot (eta
    |x|^2 = 2.5) and every pass made it worse, to an MAE of 5.7e9. Clipping or not."""
    rng = np.random.default_rng(1)
    weights = rng.normal(size=5)
    for sigmas in (10.0, None):
        features = [{"name": f"f{i}"} for i in range(5)]
        spec = StreamSpec(
            name="flag", task="regression", features=features, model={"estimator": estimator, "clip_sigmas": sigmas}
        )
        model, errors = None, []
        for _ in range(40):
            X = rng.normal(size=(500, 5))
            X[:, 0] = (rng.random(500) < 0.002).astype(float)
            y = X[:, 1:] @ weights[1:] + 30.0 * X[:, 0] + rng.normal(0, 0.5, 500)
            model, metrics, _ = training.test_then_train(model, spec, X, y)
            errors.append(metrics.mae)
        assert np.mean(errors[-20:]) < 0.5, (sigmas, errors[-5:])


@pytest.mark.parametrize("class_weight", [None, {0: 3.0, 1: 1.0}])
def test_a_rare_flag_does_not_make_a_squared_loss_sgd_classifier_diverge(class_weight: dict | None) -> None:
    """The same flag against a classifier whose squared loss a user chose: unguarded, its weights
    reached 5e10 and the accuracy 0.44 on a stream a linear model gets 91 % right; weighting the
    flag rows' class 3x, 0.67 until the guard counted class weights."""
    rng = np.random.default_rng(0)
    features = [{"name": f"f{i}"} for i in range(6)]
    spec = StreamSpec(
        name="flag",
        task="classification",
        label={"classes": [0, 1]},
        features=features,
        model={"estimator": "sgd_classifier", "params": {"loss": "squared_error", "class_weight": class_weight}},
    )
    model, accuracy = None, []
    for _ in range(40):
        X = rng.normal(size=(500, 6))
        X[:, 5] = (rng.random(500) < 0.002).astype(float)
        y = (X[:, 0] + 0.5 * X[:, 1] - 3.0 * X[:, 5] + 0.3 * rng.normal(size=500) > 0).astype(int)
        model, metrics, _ = training.test_then_train(model, spec, X, y)
        accuracy.append(metrics.accuracy)
    assert np.mean(accuracy[-20:]) > 0.8, accuracy[-5:]  # 0.90, and 0.85 weighted (the weight moves the boundary)
    assert np.abs(model.steps[-1][1].coef_).max() < 100


def test_ordinary_rows_keep_their_full_sgd_step() -> None:
    """The step guard weighs only rows that would overshoot: a standard-normal batch is unweighted."""
    sgd = SGDRegressor(eta0=0.005)
    X = np.random.default_rng(0).normal(size=(1000, 20))
    assert stable_step_weights(sgd, X) is None
    X[7] = 30.0
    weights = stable_step_weights(sgd, X)
    assert weights[7] == pytest.approx(1 / (0.005 * (20 * 900 + 1))) and (np.delete(weights, 7) == 1).all()
    assert stable_step_weights(SGDRegressor(loss="huber"), X) is None  # its step does not grow with the error
    assert stable_step_weights(SGDClassifier(loss="log_loss", eta0=0.005), X) is None
    hinged = stable_step_weights(SGDClassifier(loss="squared_hinge", eta0=0.005, learning_rate="constant"), X)
    assert hinged[7] == pytest.approx(weights[7] / 2)
    y = np.zeros(1000, dtype=int)
    y[7] = 2
    weighted = {"loss": "squared_error", "eta0": 0.005, "learning_rate": "constant", "class_weight": {2: 4.0, 0: 0.5}}
    three = stable_step_weights(SGDClassifier(**weighted), X, y=y, classes=np.array([0, 1, 2]))
    assert three[7] == pytest.approx(weights[7] / 4)
    y[7] = 0  # weight 0.5: a negative in the other classes' one-vs-rest problems, where it weighs 1
    assert stable_step_weights(SGDClassifier(**weighted), X, y=y, classes=np.array([0, 1, 2]))[7] == weights[7]
    assert stable_step_weights(SGDClassifier(**weighted), X, y=y, classes=np.array([0, 2]))[7] == weights[7] * 2


def test_the_step_guard_uses_the_step_the_call_really_takes() -> None:
    """invscaling's step is eta0 / t^power_t: weighing by eta0 damped stable rows for good. A negative
    power_t grows the step within the call; squared_epsilon_insensitive's gradient is twice the excess."""
    X = np.zeros((2, 20))
    X[1] = 3.0  # |x|^2 + 1 = 181
    late = SGDRegressor(eta0=0.05, learning_rate="invscaling", power_t=0.5)
    late.t_ = 10_000.0  # 10,000 rows in: the step is 0.05 / 100
    assert stable_step_weights(late, X) is None
    growing = SGDRegressor(eta0=0.001, learning_rate="invscaling", power_t=-0.25)
    growing.t_ = 10_000.0
    weights = stable_step_weights(growing, X, passes=2)  # the last step of the call: t = 10,004
    assert weights[1] == pytest.approx(1 / (0.001 * 10_004**0.25 * 181))
    twice = stable_step_weights(SGDRegressor(eta0=0.01, loss="squared_epsilon_insensitive"), X)
    assert twice[1] == pytest.approx(1 / (2 * 0.01 * 181)) and twice[0] == 1.0


def test_clipping_counts_values_beyond_the_learned_spread_and_waits_for_enough_rows() -> None:
    spec = regression_spec("plain")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(CLIP_AFTER_ROWS - 1, 4))
    model, _, _ = training.test_then_train(None, spec, X, X @ WEIGHTS)
    far = np.array([[50.0, 0.0, -50.0, 0.5]])
    assert clip_outliers(model, far, 10.0)[1] == 0  # 99 rows say too little about a feature's spread

    model, _, _ = training.test_then_train(model, spec, X[:1], X[:1] @ WEIGHTS)
    scaler = model.steps[0][1]
    clipped, count = clip_outliers(model, far, 10.0)
    assert count == 2
    np.testing.assert_allclose(clipped[0, [0, 2]], scaler.mean_[[0, 2]] + [10, -10] * np.sqrt(scaler.var_[[0, 2]]))
    np.testing.assert_array_equal(clipped[0, [1, 3]], far[0, [1, 3]])
    assert clip_outliers(model, far, None) == (far, 0)
