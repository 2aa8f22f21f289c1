"""Category features through the model: incremental fits, ONNX parity, and training == serving inputs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.compose import ColumnTransformer

from dagster_project.dev.datasets import census_events
from dagster_project.ingest.events import EventParser, make_event
from dagster_project.learning.estimator_table import ESTIMATORS
from dagster_project.learning.estimators import build_model, partial_fit
from dagster_project.learning.pipeline import export_checked
from dagster_project.onnx.export import OnnxModel, sklearn_scores
from dagster_project.serving.rows import validate_rows
from dagster_project.spec import StreamSpec
from tests.conftest import census_spec


def _events(rows: int, start: int = 0, unseen_share: float = 0.01) -> list:
    return list(census_events(rows=start + rows, unseen_share=unseen_share))[start:]


def _parsed(spec: StreamSpec, events: list):
    parsed = EventParser(spec).parse_many([make_event(e.event_id, e.features, e.label) for e in events])
    assert parsed.failures == []
    return parsed


def _trained(spec: StreamSpec, batches: int = 3, rows: int = 400):
    model = build_model(spec)
    for b in range(batches):
        parsed = _parsed(spec, _events(rows, start=b * rows, unseen_share=0.05))
        partial_fit(model, parsed.X, parsed.y, np.arange(2))
    return model


def _spec(estimator: str) -> StreamSpec:
    task = ESTIMATORS[estimator].task
    label = {"classes": [0, 1]} if task == "classification" else {}
    return census_spec(task=task, label=label, model={"estimator": estimator})


@pytest.mark.parametrize("estimator", ["sgd_classifier", "gaussian_nb", "bernoulli_nb", "mlp_classifier"])
def test_vocabulary_and_hashed_encodings_pass_onnx_parity(estimator: str) -> None:
    spec = _spec(estimator)
    model = _trained(spec)
    X = _parsed(spec, _events(500, start=5000, unseen_share=0.1)).X  # unseen and null values included
    artifact = export_checked(spec, model, X)
    assert artifact.passed, artifact.reason
    assert artifact.parity["max_abs_diff"] < 1e-5


def test_the_encoder_is_fixed_by_the_spec_and_only_numeric_columns_are_scaled() -> None:
    spec = census_spec()
    model = _trained(spec, batches=2)
    encoder = model.named_steps["encode"]
    assert isinstance(encoder, ColumnTransformer)
    scaler = encoder.named_transformers_["numeric"]
    assert scaler.n_samples_seen_ == 800 and scaler.n_features_in_ == 2  # age and hours, both batches
    # workclass: 4 values + "other"; education: 5 (unseen -> zeros); zip: 64 buckets
    width = 2 + 5 + 5 + 64
    rows = _parsed(spec, _events(50, start=9000)).X
    transformed = encoder.transform(rows)
    assert transformed.shape == (50, width)
    assert set(np.unique(transformed[:, 2:])) <= {0.0, 1.0}  # one-hot columns are not scaled
    assert model.named_steps["estimator"].coef_.shape == (1, width)


def test_unseen_values_map_per_the_spec_in_training() -> None:
    spec = census_spec()
    encoder = _trained(spec, batches=1).named_steps["encode"]
    row = {"age": 30, "hours_per_week": 40.0, "workclass": "Astronaut", "education": "Kindergarten", "zip": "x"}
    X = _parsed(spec, [type(e)(e.event_id, row, 0) for e in _events(1)]).X
    onehot = encoder.transform(X)[0]
    workclass, education = onehot[2:7], onehot[7:12]
    assert workclass.tolist() == [0, 0, 0, 0, 1]  # unseen: other -> the "other" column
    assert education.tolist() == [0, 0, 0, 0, 0]  # unseen: zero (the default) -> all zeros


def test_served_rows_equal_training_rows_and_onnx_equals_sklearn() -> None:
    """The scorer's /predict rows go through the same encoding as training, and the exported model
    gives scikit-learn's outputs on them."""
    spec = census_spec()
    model = _trained(spec)
    events = _events(300, start=7000, unseen_share=0.2)
    training_X = _parsed(spec, events).X
    served_X = validate_rows(spec, {"rows": [e.features for e in events]}, max_rows=10_000)
    assert served_X.dtype == np.float32
    np.testing.assert_array_equal(served_X, training_X.astype(np.float32))

    onnx = OnnxModel(export_checked(spec, model, training_X).onnx_bytes)
    served = onnx.predict(served_X)
    np.testing.assert_allclose(served.scores, sklearn_scores(model, training_X), atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(served.labels, model.predict(training_X))


def test_the_category_model_learns_what_depends_on_the_categories() -> None:
    spec = census_spec()
    model = _trained(spec, batches=10)
    test = _parsed(spec, _events(2000, start=20_000))
    numeric_only = census_spec(features=[{"name": "age", "type": "int"}, {"name": "hours_per_week"}])
    baseline = build_model(numeric_only)
    for b in range(10):
        parsed = _parsed(spec, _events(400, start=b * 400, unseen_share=0.05))
        partial_fit(baseline, parsed.X[:, :2], parsed.y, np.arange(2))
    assert model.score(test.X, test.y) > baseline.score(test.X[:, :2], test.y) + 0.03
