"""Scale-out training: exact merges, averaging, accuracy against sequential, spec validation, fallback."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from dagster_project.dev.datasets import synthetic_events
from dagster_project.learning import prequential as training
from dagster_project.learning import scale_out
from dagster_project.learning.estimator_table import CLASSIFIERS, ESTIMATORS, SCALE_OUT_ESTIMATORS
from dagster_project.learning.estimators import build_model, partial_fit
from dagster_project.spec import StreamSpec
from tests.conftest import synthetic_spec

CLASSES = np.arange(2)


def scaled_spec(estimator: str = "sgd_classifier", workers: int = 2, min_rows: int = 1, **model) -> StreamSpec:
    task = "classification" if estimator in CLASSIFIERS else "regression"
    return synthetic_spec(
        task=task,
        label={"classes": [0, 1]} if task == "classification" else {},
        model={"estimator": estimator, "scale_out": {"workers": workers, "min_rows_per_worker": min_rows}, **model},
    )


def synthetic(rows: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of the synthetic stream (stationary), with partitions 0-3 assigned round-robin."""
    source = list(synthetic_events(rows=rows, change_at=10**9, seed=seed))
    X = np.array([[e.features[f"x{i}"] for i in range(5)] for e in source])
    y = np.array([float(e.label) for e in source])
    return X, y, np.arange(rows) % 4


@pytest.mark.parametrize(
    ("partitions", "workers", "expected"),
    [
        ([0, 1, 2, 3, 0], 2, [[0, 2], [1, 3]]),
        ([0, 1, 2, 3], 3, [[0, 3], [1], [2]]),
        ([1, 3, 1], 2, [[1, 3]]),  # group 0 has no rows: dropped
        ([0, 0, 1], 1, [[0, 1]]),
    ],
)
def test_partitions_are_grouped_round_robin(partitions, workers, expected) -> None:
    groups = scale_out.partition_groups(np.array(partitions), workers)
    assert [members for members, _ in groups] == expected
    assert sorted(np.concatenate([idx for _, idx in groups]).tolist()) == list(range(len(partitions)))


@pytest.mark.parametrize(
    ("rows", "partitions", "expected"),
    [(100, 4, 2), (100, 1, 1), (30, 4, 1), (59, 2, 1), (60, 2, 2)],
)
def test_a_batch_gets_fewer_workers_when_rows_or_partitions_are_few(rows, partitions, expected) -> None:
    spec = scaled_spec(workers=2, min_rows=30)
    workers, reason = scale_out.plan_workers(spec, np.arange(rows) % partitions)
    assert workers == expected and reason


@pytest.mark.parametrize("fitted_before", [False, True])
def test_merged_scaler_equals_partial_fit_on_all_rows(fitted_before: bool) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(3.0, 2.0, size=(3000, 5)) * [1, 10, 0.1, 1, 100]
    groups = [X[:700], X[700:2100], X[2100:]]
    sequential, merged = StandardScaler(), StandardScaler()
    if fitted_before:
        earlier = rng.normal(-1.0, 0.5, size=(400, 5))
        sequential.partial_fit(earlier)
        merged.partial_fit(earlier)
    sequential.partial_fit(X)
    scale_out.merge_scaler(merged, groups)
    for attr in ("mean_", "var_", "scale_"):
        np.testing.assert_allclose(getattr(merged, attr), getattr(sequential, attr), rtol=1e-12, atol=1e-12)
    assert merged.n_samples_seen_ == sequential.n_samples_seen_
    np.testing.assert_allclose(merged.transform(X), sequential.transform(X), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("estimator", ["sgd_classifier", "passive_aggressive", "sgd_regressor", "mlp_classifier"])
def test_averaging_two_identical_slices_equals_one_worker(estimator: str) -> None:
    spec = scaled_spec(estimator)
    X, y, _ = synthetic(600)
    model = build_model(spec)
    partial_fit(model, X[:200], y[:200], CLASSES if spec.task == "classification" else None)
    parent = model.steps[-1][1]
    Xt = model.steps[0][1].transform(X[200:])
    task = scale_out.GroupTask(
        0, [0], copy.deepcopy(parent), Xt, y[200:], CLASSES if spec.task == "classification" else None
    )
    one = scale_out.fit_group(task).model

    combiner = scale_out.COMBINERS[ESTIMATORS[estimator].combiner]
    combined = combiner.combine(parent, [one, copy.deepcopy(one)], [400, 400], float(np.max(np.var(Xt, axis=0))))

    if estimator.startswith("mlp"):
        for a, b in zip(combined.coefs_ + combined.intercepts_, one.coefs_ + one.intercepts_, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12)
        for a, b in zip(combined._optimizer.ms, one._optimizer.ms, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12)
        assert combined._optimizer.t == one._optimizer.t  # moments of the same number of steps
    else:
        np.testing.assert_allclose(combined.coef_, one.coef_, rtol=1e-12)
        np.testing.assert_allclose(combined.intercept_, one.intercept_, rtol=1e-12)
    assert combined.t_ == parent.t_ + 2 * (one.t_ - parent.t_)  # every row the two workers saw counts
    np.testing.assert_array_equal(combined.predict(Xt), one.predict(Xt))


# The accuracy cost of averaging: each worker takes half the steps of the sequential pass, and the
# average moves about as far as one worker did. SGD (one step per row) barely notices; the MLP
# (one Adam step per 200 rows, so 4 per worker per batch here) learns visibly slower early on.
def test_every_group_learns_its_rows_the_spec_s_passes_times() -> None:
    X, y, partitions = synthetic(1000)
    spec = scaled_spec(passes=3)
    model, report = scale_out.fit(build_model(spec), spec, X, y, partitions, CLASSES)
    assert report.workers == 2
    assert model.named_steps["estimator"].t_ == 1 + 3 * 1000  # the merged update count: 3 passes of each group
    assert model.named_steps["scaler"].n_samples_seen_ == 1000


@pytest.mark.parametrize(("estimator", "margin"), [("sgd_classifier", 0.01), ("mlp_classifier", 0.05)])
def test_scaled_out_model_learns_about_as_well_as_sequential(estimator: str, margin: float) -> None:
    """Prequential on the synthetic stream: 8 batches of 1,500 rows, 2 workers vs one process."""
    spec = scaled_spec(estimator)
    X, y, partitions = synthetic(12_000)
    accuracy = {}
    for way in ("sequential", "scale_out"):
        model, correct, scored = None, 0, 0
        for start in range(0, len(X), 1500):
            rows = slice(start, start + 1500)
            if way == "sequential":
                model, metrics, _ = training.test_then_train(model, spec, X[rows], y[rows])
            else:
                model, metrics, _, report = training.test_then_train_partitioned(
                    model, spec, X[rows], y[rows], partitions[rows]
                )
                assert report.workers == 2 and report.group_rows == [750, 750]
            if metrics.accuracy is not None:
                correct += metrics.accuracy * metrics.rows
                scored += metrics.rows
        accuracy[way] = correct / scored
    assert accuracy["sequential"] > 0.9
    assert accuracy["scale_out"] >= accuracy["sequential"] - margin, accuracy


@pytest.mark.parametrize("estimator", ["gaussian_nb", "bernoulli_nb"])
@pytest.mark.parametrize("fitted_before", [False, True])
def test_naive_bayes_merge_is_exact(estimator: str, fitted_before: bool) -> None:
    spec = scaled_spec(estimator)
    X, y, partitions = synthetic(3000)
    sequential = build_model(spec)
    if fitted_before:
        partial_fit(sequential, X[:1000], y[:1000], CLASSES)
    scaled = copy.deepcopy(sequential)
    partial_fit(sequential, X[1000:], y[1000:], CLASSES)

    scaled, report = scale_out.fit(scaled, spec, X[1000:], y[1000:], partitions[1000:], CLASSES)

    assert report.workers == 2 and report.method == "exact"
    seq, par = sequential.steps[-1][1], scaled.steps[-1][1]
    attrs = ("class_count_", "theta_", "var_", "class_prior_", "epsilon_")
    if estimator == "bernoulli_nb":
        attrs = ("class_count_", "feature_count_", "feature_log_prob_", "class_log_prior_")
    for attr in attrs:
        np.testing.assert_allclose(getattr(par, attr), getattr(seq, attr), rtol=1e-10, atol=1e-12, err_msg=attr)
    np.testing.assert_allclose(scaled.predict_proba(X), sequential.predict_proba(X), rtol=1e-8, atol=1e-10)


def test_every_scale_out_estimator_has_a_combiner() -> None:
    for name in SCALE_OUT_ESTIMATORS:
        spec = scaled_spec(name)
        assert ESTIMATORS[name].combiner in scale_out.COMBINERS, name
        assert isinstance(build_model(spec).steps[-1][1], ESTIMATORS[name].estimator_class()), name


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"solver": "lbfgs"}, "incremental MLP solver"),
        ({"random_state": None}, "same initial weights"),
    ],
)
def test_spec_refuses_scale_out_it_cannot_combine(params, message) -> None:
    with pytest.raises(ValueError, match=message) as error:
        scaled_spec("mlp_classifier", params=params)
    assert "scale-out supports sgd_classifier" in str(error.value) or "random_state" in str(error.value)
    scaled_spec("mlp_classifier", workers=1, params=params)  # off: nothing to combine, nothing refused


def test_workers_1_is_bit_identical_to_the_existing_path() -> None:
    X, y, partitions = synthetic(2000)
    for spec in (synthetic_spec(), scaled_spec(min_rows=5000)):  # off, and on but too few rows
        parent, _, _ = training.test_then_train(None, spec, X[:1000], y[:1000])
        expected, metrics, scores = training.test_then_train(parent, spec, X[1000:], y[1000:])
        got, metrics2, scores2, report = training.test_then_train_partitioned(
            parent, spec, X[1000:], y[1000:], partitions[1000:]
        )
        assert report.workers == 1 and report.method == "sequential"
        assert pickle.dumps(got) == pickle.dumps(expected)
        assert metrics2 == metrics
        np.testing.assert_array_equal(scores2, scores)


def test_scale_out_leaves_the_parent_untouched_and_reports_groups() -> None:
    spec = scaled_spec()
    X, y, partitions = synthetic(2000)
    parent, _, _ = training.test_then_train(None, spec, X[:1000], y[:1000])
    before = pickle.dumps(parent)
    _, _, _, report = training.test_then_train_partitioned(parent, spec, X[1000:], y[1000:], partitions[1000:])
    assert pickle.dumps(parent) == before
    assert report.groups == [[0, 2], [1, 3]] and report.group_rows == [500, 500]
    meta = report.as_metadata()
    assert meta["scale_out_workers"] == 2 and meta["scale_out"]["method"] == "average"


@pytest.mark.parametrize(
    ("estimator", "params"),
    [(name, {}) for name in SCALE_OUT_ESTIMATORS]
    + [
        ("sgd_classifier", {"average": True}),
        ("sgd_regressor", {"average": 10}),
        ("mlp_classifier", {"solver": "sgd"}),
    ],
)
def test_every_supported_configuration_learns_through_scale_out(estimator: str, params: dict) -> None:
    """Each estimator, fresh and then warm, learns with 2 workers (linear models and NB: as sequential)."""
    spec = scaled_spec(estimator, params=params)
    X, y, partitions = synthetic(4000)
    if spec.task == "regression":
        y = X @ np.array([1.5, -2.0, 1.0, 0.0, 0.5])
    sequential = scaled = None
    for rows in (slice(0, 2000), slice(2000, 4000)):
        sequential, _, _ = training.test_then_train(sequential, spec, X[rows], y[rows])
        scaled, _, _, report = training.test_then_train_partitioned(scaled, spec, X[rows], y[rows], partitions[rows])
        assert report.workers == 2
    if spec.task == "classification":
        accuracy, sequential_accuracy = (scaled.predict(X) == y).mean(), (sequential.predict(X) == y).mean()
        assert accuracy > 0.75
        if not estimator.startswith("mlp"):  # MLPs learn more slowly when averaged: see above
            assert accuracy > sequential_accuracy - 0.03, (accuracy, sequential_accuracy)
    else:  # learnt, though the MLP more slowly than sequential: see the accuracy-cost test above
        assert np.sqrt(np.mean((scaled.predict(X) - y) ** 2)) < 0.6 * y.std()
    assert scaled.steps[-1][1].predict(scaled.steps[0][1].transform(X[:3])).shape == (3,)
