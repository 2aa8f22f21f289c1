"""A family whose options skl2onnx cannot export (or exports unlike scikit-learn) is refused by the
spec check, naming the parameter, instead of failing every training run at export."""

from __future__ import annotations

import pytest

from dagster_project.check.specs import check_spec_file
from dagster_project.learning.estimators import check_model_params, model_params_problem
from dagster_project.learning.exportable import export_problem
from dagster_project.spec import StreamSpec
from tests.dagster_project.learning.test_estimators import make_spec


@pytest.mark.parametrize(
    ("estimator", "params", "named"),
    [
        ("mlp_regressor", {"loss": "poisson"}, r"params.loss='poisson' of 'mlp_regressor': skl2onnx cannot export"),
        (
            "hist_gradient_boosting_regressor",
            {"loss": "gamma", "max_iter": 20},
            r"model.params.loss='gamma' of 'hist_gradient_boosting_regressor': its ONNX export does not match",
        ),
        ("k_neighbors_classifier", {"weights": "distance"}, r"model.params.weights='distance' of"),
    ],
)
def test_an_option_skl2onnx_cannot_export_is_refused_naming_it(estimator: str, params: dict, named: str) -> None:
    spec = make_spec(estimator, params=params)
    with pytest.raises(ValueError, match=named):
        check_model_params(spec)
    assert "remove it" in model_params_problem(spec)


def test_the_parameter_that_breaks_the_export_is_named_among_others() -> None:
    spec = make_spec("mlp_regressor", params={"alpha": 0.001, "loss": "poisson"})
    problem = export_problem(spec)
    assert problem is not None and "model.params.loss='poisson'" in problem and "alpha" not in problem


def test_a_candidate_that_cannot_export_is_named_by_its_label(tmp_path) -> None:
    spec = StreamSpec(
        name="contract",
        task="regression",
        features=[{"name": f"f{i}"} for i in range(3)],
        model={
            "candidates": [
                {"estimator": "sgd_regressor"},
                {"estimator": "mlp_regressor", "name": "counts", "params": {"loss": "poisson"}},
            ]
        },
    )
    assert export_problem(spec).startswith("model.candidates[counts].params.loss='poisson' of 'mlp_regressor'")
    path = tmp_path / "counts.yaml"
    path.write_text(
        "name: counts\ntask: regression\nfeatures: [{name: a}, {name: b}]\n"
        "model: {estimator: mlp_regressor, params: {loss: poisson}}\n"
    )
    report = check_spec_file(path)
    assert not report.ok and "loss='poisson'" in report.problems[0]


def test_category_and_exportable_options_pass() -> None:
    spec = StreamSpec(
        name="contract",
        features=[{"name": "x"}, {"name": "c", "type": "category", "categories": ["a", "b", "c"]}],
        label={"classes": ["no", "yes", "maybe"]},
        model={"estimator": "hist_gradient_boosting_classifier", "params": {"loss": "log_loss"}},
    )
    assert export_problem(spec) is None
    assert export_problem(make_spec("hist_gradient_boosting_regressor", params={"loss": "absolute_error"})) is None
