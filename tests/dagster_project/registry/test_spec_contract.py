"""What a version's columns and classes mean, compared with an edited spec (registry.contract)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from dagster_project.learning.estimator_table import (
    DEFAULT_ESTIMATORS,
    DEFAULTS_CHANGED_ON,
    FORMER_DEFAULT_ESTIMATORS,
)
from dagster_project.registry.contract import (
    contract_changes,
    contract_of,
    families_of,
    model_changed,
    spec_changed,
)
from dagster_project.spec import StreamSpec
from tests.conftest import synthetic_spec

FIVE = [{"name": f"x{i}"} for i in range(5)]
COLOR = {"name": "color", "type": "category", "categories": ["a", "b", "c"]}


def spec_with(**edit):
    return synthetic_spec("s", **({"features": [*FIVE, COLOR], "label": {"classes": [0, 1]}} | edit))


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ({"features": [COLOR, *FIVE]}, "input columns reordered"),
        ({"features": [*FIVE[:4], {"name": "z"}, COLOR]}, "(['z'] added, ['x4'] removed)"),
        ({"features": [*FIVE, {"name": "x5"}, COLOR]}, "(['x5'] added)"),
        ({"label": {"classes": [1, 0]}}, "classes reordered [0, 1] -> [1, 0]"),
        ({"label": {"classes": [0, 1, 2]}}, "([2] added)"),
        ({"features": [*FIVE, {**COLOR, "categories": ["a", "b", "c", "d"]}]}, "category encoding"),
        ({"features": [*FIVE, {**COLOR, "categories": ["b", "a", "c"]}]}, "category encoding"),
        (
            {"task": "regression", "label": {}, "model": {"estimator": "sgd_regressor"}},
            "task classification -> regression",
        ),
    ],
)
def test_a_change_of_meaning_is_named(edit: dict, named: str) -> None:
    learned = {"contract": contract_of(spec_with())}
    changes = contract_changes(learned, spec_with(**edit))
    assert len(changes) == 1 and named in changes[0], changes


def test_what_does_not_change_a_column_s_meaning_is_no_change() -> None:
    learned = {"contract": contract_of(spec_with())}
    assert contract_changes(learned, spec_with(batch={"rows": 50, "max_rows": 100}, promotion={"tail_rows": 10})) == []
    assert contract_changes(learned, spec_with(model={"estimator": "mlp_classifier"})) == []  # model_changed's


def test_classes_are_compared_as_labels_are_matched() -> None:
    """[0, 1] -> [false, true] passed as no change (False == 0 in Python), then every label 1 was
    refused as not a class; [0.0, 1.0] accepts the same labels as [0, 1] and stays compatible."""
    learned = {"contract": json.loads(json.dumps(contract_of(spec_with())))}  # as meta.json reads back
    head = SimpleNamespace(name="v3", meta=learned)
    changed = spec_changed(spec_with(label={"classes": [False, True]}), head)
    assert changed is not None and changed.startswith(
        "SPEC CHANGED in s since v3: classes [0, 1] -> [False, True] ([False, True] added, [0, 1] removed)."
    )
    assert spec_changed(spec_with(label={"classes": [0.0, 1.0]}), head) is None
    assert contract_changes(learned, spec_with(label={"classes": [1.0, 0.0]})) == [
        "classes reordered [0, 1] -> [1.0, 0.0]"
    ]
    assert contract_changes(learned, spec_with(label={"classes": ["0", "1"]})) == [
        "classes [0, 1] -> ['0', '1'] (['0', '1'] added, [0, 1] removed)"
    ]


def test_versions_from_before_the_contract_compare_what_they_recorded() -> None:
    older = {"task": "classification", "features": ["x0", "x1", "x2", "x3", "x4", "color"], "classes": [0, 1]}
    assert contract_changes(older, spec_with()) == []
    assert "classes reordered" in contract_changes(older, spec_with(label={"classes": [1, 0]}))[0]
    older_regression = {"task": "regression", "features": ["x0"], "classes": None}
    assert (
        contract_changes(
            older_regression,
            synthetic_spec("s", task="regression", label={}, features=[FIVE[0]], model={"estimator": "sgd_regressor"}),
        )
        == []
    )


def test_another_estimator_starts_fresh_but_candidate_sets_match_by_family() -> None:
    assert model_changed({"estimator": "sgd_classifier"}, spec_with(model={"estimator": "mlp_classifier"})) == (
        "the spec's model changed from sgd_classifier to mlp_classifier"
    )
    assert model_changed({"estimator": spec_with().model.estimator}, spec_with()) is None
    assert model_changed({"estimator": ["sgd", "hgb"]}, spec_with(model={"candidates": "recommended"})) is None


def test_other_parameters_or_scaling_start_fresh_and_unrecorded_ones_are_not_guessed() -> None:
    spec = spec_with(model={"params": {"alpha": 0.001, "hidden": (8, 4)}})
    meta = {"estimator": spec.model.estimator, "models": families_of(spec)}
    assert model_changed(meta, spec) is None  # tuples compare as meta.json reads them back
    assert model_changed(meta, spec_with(model={"params": {"alpha": 0.01, "hidden": [8, 4]}})) == (
        f"the spec's model changed: {spec.model.label}'s params "
        '{"alpha":0.001,"hidden":[8,4]} -> {"alpha":0.01,"hidden":[8,4]}'
    )
    unscaled = spec_with(model={"params": {"alpha": 0.001, "hidden": [8, 4]}, "scale": False})
    assert model_changed(meta, unscaled).endswith("'s scale true -> false")
    assert model_changed({"estimator": spec.model.estimator}, unscaled) is None  # recorded before: not known


def test_a_rolling_mean_made_a_max_of_the_same_field_is_named() -> None:
    """Same width and the same feature state: only the recorded definitions tell them apart."""
    raw = yaml.safe_load((Path(__file__).parents[3] / "streams" / "sensors.yaml").read_text())
    learned = {"contract": contract_of(StreamSpec.model_validate(raw))}
    raw["derived"][0]["agg"] = "max"
    (change,) = contract_changes(learned, StreamSpec.model_validate(raw))
    assert change == f'derived feature {raw["derived"][0]["name"]}: agg "mean" -> "max"', change


def test_a_category_change_names_the_feature_and_how() -> None:
    """It said only "category encoding changed (a category added, removed or reordered, buckets, or
    `unseen`)", also for a number made a category; a version keeps its encoding whole to compare."""
    from dagster_project.ingest.categories import encoding_signature

    def learned(spec: StreamSpec) -> dict:
        return {"contract": contract_of(spec), "categories": {"encoding": json.loads(encoding_signature(spec))}}

    numbers = spec_with()
    made_category = spec_with(features=[*FIVE[:4], {"name": "x4", "type": "category", "buckets": 8}, COLOR])
    assert contract_changes(learned(numbers), made_category) == ["x4 became a category feature"]
    more = spec_with(features=[*FIVE, {**COLOR, "categories": ["a", "b", "c", "d"]}])
    assert contract_changes(learned(numbers), more) == [
        'category feature color: categories ["a","b","c"] -> ["a","b","c","d"]'
    ]
    only_numbers = synthetic_spec("s", features=FIVE, label={"classes": [0, 1]})  # no encoding recorded at all
    first_category = synthetic_spec("s", features=made_category.model_dump()["features"][:5], label={"classes": [0, 1]})
    assert contract_changes({"contract": contract_of(only_numbers)}, first_category) == ["x4 became a category feature"]


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_a_model_of_the_former_default_names_the_pin_that_keeps_it(task) -> None:
    """Upgraded past the default's change, a spec that names no estimator learns a fresh model of
    the new default: the reason says so, and how to keep the model the stream had."""
    spec = spec_with(model={}) if task == "classification" else synthetic_spec("s", task="regression", label={})
    former = FORMER_DEFAULT_ESTIMATORS[task]
    assert model_changed({"estimator": former}, spec) == (
        f"the spec's model changed from {former} to {DEFAULT_ESTIMATORS[task]} (the default estimator became "
        f"{DEFAULT_ESTIMATORS[task]} on {DEFAULTS_CHANGED_ON}: a spec that names none gets it; "
        f"`model: {{estimator: {former}}}` keeps learning the model it had)"
    )
