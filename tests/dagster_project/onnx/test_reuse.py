"""A reused graph is skl2onnx's conversion of the new version, or no reuse happens at all."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from sklearn.linear_model import SGDClassifier, SGDRegressor
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from dagster_project.learning.estimators import partial_fit
from dagster_project.learning.pipeline import export_checked
from dagster_project.onnx import reuse
from dagster_project.onnx.export import check_parity, export_onnx
from dagster_project.spec import StreamSpec

WIDTH = 4


@pytest.fixture(autouse=True)
def no_templates():
    reuse._graphs.clear()
    yield
    reuse._graphs.clear()


def same_graph(a: bytes, b: bytes) -> bool:
    """Equal models apart from the random graph name skl2onnx gives every conversion."""
    first, second = onnx.load_from_string(a), onnx.load_from_string(b)
    first.graph.name = second.graph.name = "graph"
    return first.SerializeToString() == second.SerializeToString()


def batch(seed: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(300, WIDTH)) * 4.0 + 2.0
    y = rng.integers(0, classes, 300) if classes else X @ np.arange(1.0, WIDTH + 1)
    return X, y.astype(np.float64)


MODELS = {
    "log_loss, 2 classes": (lambda: SGDClassifier(loss="log_loss", random_state=0), 2, True),
    "log_loss, 3 classes": (lambda: SGDClassifier(loss="log_loss", random_state=0), 3, True),
    "hinge": (lambda: SGDClassifier(loss="hinge", random_state=0), 2, True),
    "modified_huber, unscaled": (lambda: SGDClassifier(loss="modified_huber", random_state=0), 3, False),
    "regressor": (lambda: SGDRegressor(random_state=0), 0, True),
    "regressor, unscaled": (lambda: SGDRegressor(random_state=0), 0, False),
}


@pytest.mark.parametrize("make, classes, scaled", MODELS.values(), ids=MODELS.keys())
def test_each_new_version_is_skl2onnx_s_own_conversion_of_it(make, classes, scaled) -> None:
    model = Pipeline([("scaler", StandardScaler())] * scaled + [("estimator", make())])
    labels = np.arange(classes) if classes else None
    for version in range(4):
        partial_fit(model, *batch(version, classes), labels)
        export = reuse.export_reusing(model, WIDTH)
        assert export.reused == (version > 0)  # converted once, then the weights written in
        assert same_graph(export.onnx_bytes, export_onnx(model, WIDTH))


def test_other_classes_or_another_encoding_are_converted_not_reused() -> None:
    two = Pipeline([("scaler", StandardScaler()), ("estimator", SGDClassifier(random_state=0))])
    partial_fit(two, *batch(0, 2), np.arange(2))
    reuse.export_reusing(two, WIDTH)
    three = Pipeline([("scaler", StandardScaler()), ("estimator", SGDClassifier(random_state=0))])
    partial_fit(three, *batch(1, 3), np.arange(3))

    export = reuse.export_reusing(three, WIDTH)  # same steps and parameters, a third class

    assert not export.reused
    assert same_graph(export.onnx_bytes, export_onnx(three, WIDTH))
    assert onnx.load_from_string(export.onnx_bytes).graph.initializer[0].dims == [3]  # the classes
    assert not reuse.export_reusing(two, WIDTH, encoding="other").reused
    other_labels = Pipeline([("scaler", StandardScaler()), ("estimator", SGDClassifier(random_state=0))])
    X, y = batch(3, 2)
    partial_fit(other_labels, X, y * 2, np.array([0.0, 2.0]))  # two classes again, other values
    relabelled = reuse.export_reusing(other_labels, WIDTH)
    assert not relabelled.reused and same_graph(relabelled.onnx_bytes, export_onnx(other_labels, WIDTH))
    bayes = Pipeline([("scaler", StandardScaler()), ("estimator", GaussianNB())]).fit(*batch(2, 2))
    assert not reuse.export_reusing(bayes, WIDTH).reused and not reuse.export_reusing(bayes, WIDTH).reused


def spec() -> StreamSpec:
    return StreamSpec(
        name="reuse",
        task="classification",
        features=[{"name": f"f{i}"} for i in range(WIDTH)],
        label={"classes": [0, 1]},
        model={"estimator": "sgd_classifier"},
    )


def test_a_stale_template_fails_parity_and_the_version_is_converted_in_full() -> None:
    model = Pipeline([("scaler", StandardScaler()), ("estimator", SGDClassifier(random_state=0))])
    partial_fit(model, *batch(0, 2), np.arange(2))
    X, y = batch(1, 2)
    first = export_checked(spec(), model, X)
    (template,) = reuse._graphs.values()
    negate = next(i for i in template.graph.initializer if i.name == "negate")  # the sigmoid's -1
    negate.float_data[:] = [1.0]  # a template that no longer computes what this model computes
    partial_fit(model, X, y, np.arange(2))
    stale = reuse.export_reusing(model, WIDTH)
    assert stale.reused and not check_parity(model, stale.onnx_bytes, X, 1e-4, 1e-4).passed

    second = export_checked(spec(), model, X)

    assert first.passed and second.passed, second.reason
    assert same_graph(second.onnx_bytes, export_onnx(model, WIDTH))
    assert not any(
        i.name == "negate" and i.float_data[:] == [1.0] for t in reuse._graphs.values() for i in t.graph.initializer
    )
