"""Stream specs: the errors a user gets for a bad spec, and where specs are found.

Quality-rule validation is covered in tests/dagster_project/quality/test_suite.py
(test_invalid_quality_rules_are_rejected) and scale-out refusals for MLP classifiers in
tests/dagster_project/learning/test_scale_out.py; only the cases those leave out are here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from dagster_project.learning.estimator_table import ESTIMATORS
from dagster_project.learning.estimator_table import FORMER_DEFAULT_ESTIMATORS as FORMER
from dagster_project.spec import (
    RESERVED_COLUMNS,
    ModelSpec,
    StreamSpec,
    get_spec,
    load_spec,
    load_specs,
    load_specs_isolated,
    specs_dir,
    yaml_boolean_words,
)

REPO_STREAMS = Path(__file__).resolve().parents[2] / "streams"


def _raw(**overrides) -> dict:
    raw = {
        "name": "orders",
        "task": "classification",
        "features": [{"name": "a"}, {"name": "b"}],
        "label": {"classes": [0, 1]},
    }
    return raw | overrides


def _errors(**overrides) -> str:
    with pytest.raises(ValidationError) as caught:
        StreamSpec.model_validate(_raw(**overrides))
    return str(caught.value)


def _write(directory: Path, file_name: str, raw: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / file_name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_minimal_spec_gets_the_documented_defaults() -> None:
    spec = StreamSpec.model_validate(_raw())
    assert spec.model.estimator == "adaptive_sgd_classifier" and spec.partitions == 1
    assert spec.quality.policy == "halt" and spec.drift.detector == "adwin"
    assert (spec.events_topic, spec.labels_topic, spec.dlq_topic, spec.predictions_topic) == (
        "orders.events",
        "orders.labels",
        "orders.dlq",
        "orders.predictions",
    )
    assert spec.trainer_group == "streamfit-orders-trainer"
    assert spec.feature_names == ["a", "b"]


def test_unknown_estimator_lists_the_known_ones() -> None:
    message = _errors(model={"estimator": "xgboost"})
    assert "model.estimator" in message and "'xgboost'" in message
    for name in ESTIMATORS:
        assert f"'{name}'" in message


@pytest.mark.parametrize(
    "task, estimator, message",
    [
        ("classification", "sgd_regressor", "estimator 'sgd_regressor' is a regressor but task is classification"),
        ("classification", "mlp_regressor", "estimator 'mlp_regressor' is a regressor but task is classification"),
        ("regression", "gaussian_nb", "estimator 'gaussian_nb' is a classifier but task is regression"),
        ("regression", "sgd_classifier", "estimator 'sgd_classifier' is a classifier but task is regression"),
    ],
)
def test_estimator_must_match_the_task(task: str, estimator: str, message: str) -> None:
    assert message in _errors(task=task, model={"estimator": estimator})


def test_every_estimator_is_accepted_for_its_own_task() -> None:
    for name, entry in ESTIMATORS.items():
        label = {"classes": [0, 1]} if entry.task == "classification" else {}
        spec = StreamSpec.model_validate(_raw(task=entry.task, label=label, model={"estimator": name}))
        assert spec.model.estimator == name


@pytest.mark.parametrize("label", [{}, {"classes": None}, {"classes": []}])
def test_classification_needs_its_classes_up_front(label: dict) -> None:
    assert "classification streams must list label.classes" in _errors(label=label)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"label": {"classes": [[0], [1]]}}, "label.classes"),  # a class must be a string, number or bool
        ({"label": {"classes": [1]}}, "needs at least two classes"),
        ({"label": {"classes": [0, 1, 1.0]}}, "repeats ['1', '1.0']"),  # labels 1 and 1.0 are one class
        ({"label": {"classes": [10**400, 10**400]}}, "repeats"),  # beyond a float: no OverflowError traceback
        ({"features": [{"name": "x", "min": 10, "max": 1}]}, "min 10.0 above max 1.0"),
        ({"features": [{"name": "x", "min": float("nan")}]}, "finite number"),
        ({"parity": {"rtol": float("inf")}}, "finite number"),
        ({"partitions": 10**12}, "less than or equal to 10000"),
        ({"features": [{"name": ""}]}, "at least 1 character"),
        ({"features": [{"name": "x", "categories": list(range(70_000)) * 2, "type": "category"}]}, "and 69990 more"),
    ],
)
def test_specs_that_training_could_never_run_are_refused_with_the_fix(overrides: dict, fragment: str) -> None:
    assert fragment in _errors(**overrides)


def test_true_and_1_are_two_classes() -> None:
    assert StreamSpec.model_validate(_raw(label={"classes": [1, True]})).label.classes == [1, True]


def test_regression_needs_no_classes() -> None:
    spec = StreamSpec.model_validate(
        _raw(task="regression", label={"name": "price"}, model={"estimator": "sgd_regressor"})
    )
    assert spec.label.classes is None and spec.label.name == "price"


def test_duplicate_and_missing_features() -> None:
    assert "duplicate feature names in ['a', 'b', 'a']" in _errors(features=[{"name": n} for n in "aba"])
    assert "a stream needs at least one feature" in _errors(features=[])


@pytest.mark.parametrize("column", RESERVED_COLUMNS)
def test_reserved_column_names_cannot_be_features(column: str) -> None:
    message = _errors(features=[{"name": "a"}, {"name": column}])
    assert f"feature name(s) ['{column}'] are reserved: the data-quality table has columns" in message
    assert f"rename the feature (e.g. {column}_value)" in message
    derived = [{"name": column, "by": "device", "agg": "count", "window": "60s"}]
    assert f"rename the feature (e.g. {column}_value)" in _errors(derived=derived, **ROLLING)


def test_settings_that_do_nothing_load_and_are_noted_with_the_fix() -> None:
    """Silently ignored before; refused at load they would stop a spec that ran, and every stream with it."""
    regression = StreamSpec.model_validate(_raw(task="regression", model={"estimator": "sgd_regressor"}))
    assert regression.notes()[0].startswith("label.classes [0, 1] does nothing on a regression stream")
    hashed = {"name": "zip", "type": "category", "buckets": 16}
    spec = StreamSpec.model_validate(_raw(features=[{"name": "a", "unseen": "other"}, hashed | {"unseen": "other"}]))
    assert [n.split(":")[0] for n in spec.notes()] == [
        "feature 'a' is a float feature",
        "feature 'zip' is hashed (buckets",
    ]
    assert "unseen: other does nothing; remove it, or list categories: [...]" in spec.notes()[1]
    assert StreamSpec.model_validate(_raw()).notes() == []
    loose = StreamSpec.model_validate(
        _raw(task="regression", label={}, model={"estimator": "sgd_regressor"}, promotion={"margin": 2.0})
    )
    assert loose.notes() == [
        "promotion.margin 2 is a fraction of the champion's error for RMSE and MAE (200%): margins in label units "
        "were read as such before; 0.01 is 1 %"
    ]


def test_label_classes_yaml_reads_as_booleans_are_found_in_the_text() -> None:
    """YAML 1.1 reads `[yes, no]` as [True, False]: the spec loaded, and every event labelled "yes" was
    dead-lettered. Only the words are found: `[false, true]` (phishing's JSON booleans) means what it says."""
    spec = "name: orders\ntask: classification\nfeatures: [{name: a}]\nlabel: {classes: %s}\n"
    assert yaml_boolean_words(spec % "[yes, No, true, on]") == ["yes", "No", "on"]
    assert yaml_boolean_words("label:\n  classes:\n    - off\n    - 'on'\n") == ["off"]
    for fine in ("['yes', 'no']", "[false, true]", "[0, 1]", "null"):
        assert yaml_boolean_words(spec % fine) == []
    assert yaml_boolean_words("name: orders\n") == yaml_boolean_words("[1, 2]") == []


def test_batch_rows_cannot_exceed_max_rows() -> None:
    assert "batch.rows (5000) exceeds batch.max_rows (1000)" in _errors(batch={"rows": 5000, "max_rows": 1000})
    StreamSpec.model_validate(_raw(batch={"rows": 1000, "max_rows": 1000}))  # equal is fine


def test_passes_are_refused_for_adaptive_sgd_with_the_setting_that_applies() -> None:
    with pytest.raises(ValueError, match=r"model.params.passes_options \(e.g. \[8, 2\]\)") as refused:
        StreamSpec(name="m", features=[{"name": "x"}], label={"classes": [0, 1]}, model={"passes": 4})
    # A spec written before the default changed meant the default of then: the refusal names that pin.
    assert "meant sgd_classifier, the default then: `model: {estimator: sgd_classifier, passes: 4}`" in str(
        refused.value
    )
    for task, label in (("classification", {"classes": [0, 1]}), ("regression", {})):
        pinned = StreamSpec(
            name="m", task=task, features=[{"name": "x"}], label=label, model={"estimator": FORMER[task], "passes": 4}
        )
        assert pinned.model.passes_per_batch == 4
    spec = StreamSpec(
        name="m", features=[{"name": "x"}], label={"classes": [0, 1]}, model={"params": {"passes_options": [4, 1]}}
    )
    assert spec.model.passes_per_batch == 1  # the estimator's own passes_options apply


def test_scale_out_refuses_a_non_incremental_mlp_solver() -> None:
    model = {"estimator": "mlp_regressor", "params": {"solver": "lbfgs"}, "scale_out": {"workers": 2}}
    message = _errors(task="regression", label={}, model=model)
    assert "model.scale_out needs an incremental MLP solver ('adam' or 'sgd'), got 'lbfgs'" in message
    assert "scale-out supports sgd_classifier" in message
    model["scale_out"] = {"workers": 1}  # scale-out off: the same solver is fine
    assert StreamSpec.model_validate(_raw(task="regression", label={}, model=model)).model.params["solver"] == "lbfgs"


def test_quality_bounds_must_name_features() -> None:
    message = _errors(quality={"mean_bounds": {"a": [0, 1], "zz": [0, 1]}})
    assert "quality.mean_bounds names unknown feature(s) ['zz']; features are ['a', 'b']" in message


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"name": "Orders"}, "String should match pattern"),
        ({"name": "1orders"}, "String should match pattern"),
        ({"colour": "blue"}, "colour"),  # a typo is an error, not silently ignored
        ({"model": {"estimator": "sgd_classifier", "seeed": 1}}, "seeed"),
        ({"drift": {"psi_moderate": 0.5, "psi_major": 0.3}}, "drift.psi_moderate (0.5) exceeds drift.psi_major (0.3)"),
        ({"partitions": 0}, "partitions"),
        ({"features": [{"name": "a", "type": "string"}]}, "'float', 'int', 'bool' or 'category'"),
    ],
)
def test_other_mistakes_are_named(overrides: dict, message: str) -> None:
    assert message in _errors(**overrides)


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (
            {"batch": {"max_wait": 5}},
            "batch.max_wait: not a setting here; did you mean 'max_wait_s'? allowed: early_cut, max_rows, ",
        ),
        (
            {"features": [{"name": "a", "categoris": ["x"]}]},
            "features.0.categoris: not a setting here; did you mean 'categories'? allowed: buckets, categories, ",
        ),
        (
            {"quality": {"policy": "allow_partial"}},
            "quality.policy: Input should be 'halt' or 'quarantine' (got 'allow_partial'); 'allow_partial' is a "
            "setting of its own: `quality.allow_partial: ...`",
        ),
    ],
)
def test_a_spec_file_s_mistakes_are_a_line_each_with_the_settings_allowed(tmp_path: Path, overrides, line) -> None:
    """`streamfit check` printed pydantic's raw errors (`Extra inputs are not permitted`, a link):
    a misspelt key now names the closest setting and the ones allowed there."""
    path = _write(tmp_path, "orders.yaml", _raw(**overrides))
    with pytest.raises(ValueError) as caught:
        load_spec(path)
    assert str(caught.value).startswith(f"invalid stream spec {path}: 1 problem:\n  {line}")
    assert "errors.pydantic.dev" not in str(caught.value)


def test_load_spec_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "orders.yaml", _raw(model={"estimator": "sgd_regressor"}))
    with pytest.raises(ValueError) as caught:
        load_spec(path)
    assert str(caught.value).startswith(f"invalid stream spec {path}: ")
    assert "is a regressor but task is classification" in str(caught.value)

    broken_yaml = tmp_path / "broken.yaml"
    broken_yaml.write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match=f"invalid stream spec {broken_yaml}"):
        load_spec(broken_yaml)


def test_load_specs_sorts_by_name_and_reads_yml_too(tmp_path: Path) -> None:
    _write(tmp_path, "z.yaml", _raw(name="alpha"))
    _write(tmp_path, "a.yml", _raw(name="beta"))
    (tmp_path / "notes.txt").write_text("not a spec")
    assert [s.name for s in load_specs(tmp_path)] == ["alpha", "beta"]


def test_load_specs_refuses_duplicate_stream_names(tmp_path: Path) -> None:
    _write(tmp_path, "one.yaml", _raw())
    _write(tmp_path, "two.yaml", _raw())
    with pytest.raises(ValueError, match=r"duplicate stream names in .*: \['orders', 'orders'\]"):
        load_specs(tmp_path)


def test_a_spec_file_that_does_not_load_stops_only_its_own_stream(tmp_path: Path) -> None:
    """With 10-30 streams in one directory, one typo stopped every stream's sensors and metrics: the
    code location, the exporter and per-stream commands now load the others and name the file."""
    _write(tmp_path, "alpha.yaml", _raw(name="alpha"))
    _write(tmp_path, "typo.yaml", {**_raw(name="typo"), "batch": {"rowz": 100}})
    _write(tmp_path, "one.yaml", _raw(name="orders"))
    _write(tmp_path, "two.yaml", _raw(name="orders"))

    specs, broken = load_specs_isolated(tmp_path)

    assert [s.name for s in specs] == ["alpha"]
    errors = {b.path.name: b.error for b in broken}
    assert set(errors) == {"typo.yaml", "one.yaml", "two.yaml"}
    assert f"invalid stream spec {tmp_path / 'typo.yaml'}" in errors["typo.yaml"] and "rowz" in errors["typo.yaml"]
    assert errors["one.yaml"] == f"stream 'orders' is also declared in {tmp_path / 'two.yaml'}: rename one"
    assert get_spec("alpha", tmp_path).name == "alpha"
    with pytest.raises(KeyError, match=r"unknown stream 'typo'; known streams: \['alpha'\]; .*typo.yaml does not load"):
        get_spec("typo", tmp_path)


def test_an_editor_s_lock_file_beside_the_specs_is_not_a_spec(tmp_path: Path) -> None:
    """Emacs keeps `.#<file>` (a dangling symlink) while a spec is edited: it matched `*.y*ml`, so the
    code location added an invalid-spec sensor and the exporter fired StreamfitSpecInvalid."""
    _write(tmp_path, "orders.yaml", _raw())
    (tmp_path / ".#orders.yaml").symlink_to("op@host.4242:1765000000")
    _write(tmp_path, ".orders.yaml", _raw())  # a hidden copy would clash with orders.yaml by name

    specs, broken = load_specs_isolated(tmp_path)

    assert [s.name for s in specs] == ["orders"] and broken == []
    assert [s.name for s in load_specs(tmp_path)] == ["orders"]


def test_a_missing_spec_directory_says_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="set STREAMFIT_STREAMS"):
        load_specs(tmp_path / "nowhere")


def test_spec_directory_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMFIT_STREAMS", raising=False)
    assert specs_dir() == REPO_STREAMS
    _write(tmp_path, "orders.yaml", _raw())
    monkeypatch.setenv("STREAMFIT_STREAMS", str(tmp_path))
    assert specs_dir() == tmp_path
    assert get_spec("orders").name == "orders"


def test_get_spec_lists_the_known_streams(tmp_path: Path) -> None:
    _write(tmp_path, "orders.yaml", _raw())
    _write(tmp_path, "clicks.yaml", _raw(name="clicks"))
    with pytest.raises(KeyError, match=r"unknown stream 'ordres'; known streams: \['clicks', 'orders'\]"):
        get_spec("ordres", tmp_path)
    assert get_spec("clicks", tmp_path).name == "clicks"


def test_the_shipped_specs_load() -> None:
    specs = {spec.name: spec for spec in load_specs(REPO_STREAMS)}
    assert set(specs) == {p.stem for p in REPO_STREAMS.glob("*.y*ml")}  # file name = stream name
    synthetic = specs["synthetic"]
    assert synthetic.task == "classification" and synthetic.partitions == 2
    assert synthetic.feature_names == [f"x{i}" for i in range(5)]
    phishing = specs["phishing"]
    assert phishing.label.name == "is_phishing" and phishing.label.classes == [False, True]
    assert all(f.min == 0 and f.max == 1 for f in phishing.features)
    for spec in specs.values():
        assert spec.batch.rows <= spec.batch.max_rows


ROLLING = {"event_time": {"field": "ts", "lateness": "5s"}}


def _derived(**feature) -> list[dict]:
    return [{"name": "a_mean", "of": "a", "by": "device", "agg": "mean", "window": "60s"} | feature]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"derived": _derived()}, "derived features need event_time"),
        ({**ROLLING, "derived": _derived(agg="sum", of=None)}, "agg sum needs of: <a numeric feature>"),
        ({**ROLLING, "derived": _derived(of="nope")}, "of: 'nope' must name a numeric, non-nullable feature"),
        ({**ROLLING, "derived": _derived(name="b")}, "repeat a feature or another derived feature"),
        ({**ROLLING, "derived": _derived(by="b")}, "by: 'b' is a float feature; a key must be a category or int"),
        ({**ROLLING, "derived": _derived(by="ts")}, "by: 'ts' is not a key"),
        ({**ROLLING, "derived": _derived(window="a minute")}, "is not a duration: write e.g. 60s"),
        ({**ROLLING, "derived": _derived(window=0)}, "greater than 0"),
        ({**ROLLING, "derived": _derived(agg="median")}, "'count', 'sum', 'mean', 'min', 'max' or 'std'"),
        ({**ROLLING, "derived": _derived(), "feature_state": {"max_keys": 0}}, "greater than or equal to 1"),
    ],
)
def test_derived_feature_mistakes_are_named(overrides: dict, message: str) -> None:
    assert message in _errors(**overrides)


@pytest.mark.parametrize("field", ["features", "label"])
def test_an_event_time_field_that_never_holds_a_time_is_refused_with_derived_features(field: str) -> None:
    """`event_time: {field: features}` loaded, and then every event was dead-lettered at read time
    ("event time 'features' must be ..., got dict"): the spec is where to say so, once."""
    errors = _errors(event_time={"field": field}, derived=_derived())
    assert f"event_time.field {field!r} is " in errors
    assert "never an event time: set event_time.field to the top-level field that holds the event's time" in errors
    # Without derived features nothing reads the event time: such a spec ran, and still loads.
    StreamSpec.model_validate(_raw(event_time={"field": field}))
    for allowed in ("ts", "id", "when"):
        StreamSpec.model_validate(_raw(event_time={"field": allowed}, derived=_derived()))


def test_a_feature_named_like_the_event_time_field_is_noted_when_the_time_is_read() -> None:
    """On Kafka the time is top-level and the feature in `features`; a /predict row holds one `ts`."""
    features = [{"name": "ts"}, {"name": "a"}]
    (note,) = StreamSpec.model_validate(_raw(features=features, derived=_derived(), **ROLLING)).notes()
    assert note.startswith("event_time.field 'ts' is also a feature's name") and "/predict refuses" in note
    moved = StreamSpec.model_validate(_raw(features=features, derived=_derived(), event_time={"field": "when"}))
    assert moved.notes() == []
    # Without derived features nothing reads the event time: no clash.
    assert StreamSpec.model_validate(_raw(features=features, **ROLLING)).notes() == []
    # A `by` that is a feature is read from the features on Kafka and from the row on /predict: the same value.
    keyed = [{"name": "a"}, {"name": "device", "type": "int"}]
    assert StreamSpec.model_validate(_raw(features=keyed, derived=_derived(), **ROLLING)).notes() == []


def test_derived_features_follow_the_event_features_in_the_model_inputs() -> None:
    spec = StreamSpec.model_validate(
        _raw(
            event_time={"field": "when", "unit": "ms", "lateness": "1.5m"},
            derived=_derived(window="500ms") + [{"name": "n_1h", "by": "device", "agg": "count", "window": "1h"}],
        )
    )
    assert spec.feature_names == ["a", "b"]
    assert spec.input_names == ["a", "b", "a_mean", "n_1h"]
    assert spec.event_time.lateness == 90.0 and spec.derived[0].window == 0.5 and spec.derived[1].window == 3600.0


@pytest.mark.parametrize(("given", "level"), [(None, None), (0, 0.0), (0.01, 0.01)])
def test_the_significance_level_is_a_probability_or_off(given, level) -> None:
    spec = StreamSpec.model_validate(_raw(promotion={"significance": given}))
    assert spec.promotion.significance == level
    assert StreamSpec.model_validate(_raw()).promotion.significance == 0.05  # the documented default


def test_a_significance_of_one_or_more_is_refused() -> None:
    with pytest.raises(ValidationError, match="promotion.significance"):
        StreamSpec.model_validate(_raw(promotion={"significance": 1.0}))


def _model_spec(**model):
    return StreamSpec(name="m", features=[{"name": "x"}], label={"classes": [0, 1]}, model=model)


def test_a_windowed_estimator_takes_a_bounded_window():
    spec = _model_spec(estimator="hist_gradient_boosting_classifier", window_rows=5000, refit_every=3)
    assert (spec.model.windowed, spec.model.window, spec.model.refit_period) == (True, 5000, 3)
    assert _model_spec(estimator="random_forest_classifier").model.window == 10_000  # the default
    with pytest.raises(ValueError, match="less than or equal to 100000"):
        _model_spec(estimator="hist_gradient_boosting_classifier", window_rows=100_001)


def test_window_settings_on_an_incremental_estimator_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="window_rows applies to windowed estimators.*remove it"):
        _model_spec(estimator="sgd_classifier", window_rows=1000)
    with pytest.raises(ValueError, match="model.passes applies to incrementally learning estimators.*remove it"):
        _model_spec(estimator="random_forest_classifier", passes=3)


def test_candidates_name_distinct_families_of_the_stream_task():
    spec = _model_spec(
        candidates=[{"estimator": "sgd_classifier"}, {"estimator": "hist_gradient_boosting_classifier", "name": "hgb"}]
    )
    assert [f.label for f in spec.model.families] == ["sgd_classifier", "hgb"]
    assert StreamSpec.model_validate(spec.model_dump(mode="json")) == spec  # survives a round trip
    with pytest.raises(ValueError, match="distinct name"):
        _model_spec(candidates=[{"estimator": "sgd_classifier"}, {"estimator": "sgd_classifier"}])
    with pytest.raises(ValueError, match="replaces model.estimator"):
        _model_spec(estimator="gaussian_nb", candidates=[{"estimator": "sgd_classifier"}, {"estimator": "gaussian_nb"}])
    with pytest.raises(ValueError, match="is a regressor"):
        _model_spec(candidates=[{"estimator": "sgd_classifier"}, {"estimator": "random_forest_regressor"}])


def test_windowed_estimators_take_derived_features_and_quarantine():
    spec = StreamSpec(
        name="m",
        features=[{"name": "x"}],
        label={"classes": [0, 1]},
        event_time={"field": "ts", "lateness": "5s"},
        derived=[{"name": "x_mean", "of": "x", "by": "device", "agg": "mean", "window": "60s"}],
        model={"estimator": "extra_trees_classifier"},
        quality={"policy": "quarantine"},
    )
    assert spec.model.windowed and spec.derived and spec.quality.policy == "quarantine"


@pytest.mark.parametrize(
    ("task", "families"),
    [
        ("classification", ["sgd_classifier", "hist_gradient_boosting_classifier"]),
        ("regression", ["sgd_regressor", "hist_gradient_boosting_regressor"]),
    ],
)
def test_recommended_candidates_expand_to_the_benchmarks_best_set_for_the_task(task, families):
    spec = StreamSpec(
        name="m",
        task=task,
        features=[{"name": "x"}],
        label={"classes": [0, 1]} if task == "classification" else {},
        model={"candidates": "recommended"},
    )
    assert [f.estimator for f in spec.model.families] == families
    assert [f.label for f in spec.model.families] == ["sgd", "hgb"]
    assert StreamSpec.model_validate(spec.model_dump(mode="json")) == spec  # a dump holds the families
    assert _model_spec().model.families[0].estimator == "adaptive_sgd_classifier"  # the default is unchanged
    with pytest.raises(ValueError, match="or 'recommended'"):
        _model_spec(candidates="best")


def test_a_model_that_names_no_estimator_gets_its_tasks_default():
    def regression(**model):
        return StreamSpec(name="r", task="regression", features=[{"name": "x"}], model=model)

    assert regression().model.estimator == "adaptive_sgd_regressor"  # not a classifier it never named
    assert regression(params={"halflife_rows": 500}).model.params == {"halflife_rows": 500}
    families = regression(candidates=[{"name": "a"}, {"estimator": "hist_gradient_boosting_regressor", "name": "h"}])
    assert [f.estimator for f in families.model.families] == [
        "adaptive_sgd_regressor",
        "hist_gradient_boosting_regressor",
    ]
    assert StreamSpec.model_validate(families.model_dump(mode="json")) == families
    assert _model_spec().model.estimator == "adaptive_sgd_classifier"
    with pytest.raises(ValueError, match="'sgd_classifier' is a classifier but task is regression"):
        regression(estimator="sgd_classifier")  # a named estimator is never replaced


@pytest.mark.parametrize(
    ("labels", "batch", "on"),
    [
        (None, {}, False),  # no label join: nothing to read
        ({"flush_interval_s": 1}, {}, True),
        ({}, {}, True),  # `labels: {}` is a label join with the defaults (5 s <= 30 s / 4), as the docs say
        ({"flush_interval_s": 10}, {"max_wait_s": 30}, False),  # 3 checkpoints a batch: too few
        ({"flush_interval_s": 1}, {"early_cut": False}, False),  # turned off
    ],
)
def test_early_cut_defaults_to_on_exactly_with_a_label_join_that_checkpoints_four_times_a_batch(
    labels, batch, on
) -> None:
    extra = {} if labels is None else {"labels": labels}
    spec = StreamSpec(name="m", features=[{"name": "x"}], label={"classes": [0, 1]}, batch=batch, **extra)
    assert spec.batch.early_cut is on
    reloaded = StreamSpec.model_validate(spec.model_dump(mode="json"))  # a dump holds `labels` whatever was set
    assert reloaded.batch.early_cut is on and reloaded == spec


def test_a_top_level_clip_sigmas_applies_to_every_candidate_that_sets_none() -> None:
    """Each family learns with its own setting: `model.clip_sigmas: null` beside `candidates` was
    accepted and ignored, while the training log's advice named it."""
    base = {"name": "clips", "features": [{"name": "x"}], "label": {"classes": [0, 1]}}
    recommended = StreamSpec(**base, model={"clip_sigmas": None, "candidates": "recommended"})
    listed = StreamSpec(
        **base,
        model={"clip_sigmas": 4, "candidates": [{"name": "a"}, {"estimator": "gaussian_nb", "clip_sigmas": 3}]},
    )

    assert {c.clip_sigmas for c in recommended.model.candidates} == {None}
    assert [c.clip_sigmas for c in listed.model.candidates] == [4.0, 3.0]
    assert StreamSpec.model_validate(listed.model_dump()) == listed  # a dumped spec loads the same
    built = ModelSpec(clip_sigmas=None, candidates=[ModelSpec(name="a"), {"estimator": "gaussian_nb"}])
    assert [c.clip_sigmas for c in built.candidates] == [None, None]  # instances inherit too


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (
            {"drift": {"full_retrain_cron": "every day"}},
            "drift.full_retrain_cron: Value error, 'every day' is not a cron schedule Dagster accepts",
        ),
        ({"drift": {"report_cron": "0 0 31 2 *"}}, "drift.report_cron: Value error, '0 0 31 2 *' is not a cron"),
        (
            {"drift": {"detector_params": {"deltaa": 0.01}}},
            "drift.detector_params: Value error, unknown adwin parameter(s) ['deltaa'] (drift.detector is 'adwin'): "
            "its parameters are ['clock', 'delta', 'grace_period', 'max_buckets', 'min_window_length']",
        ),
        (
            {"drift": {"detector": "ddm", "detector_params": {"warm_start": "30"}}},
            "drift.detector_params: Value error, warm_start must be a finite number, got '30'",
        ),
        ({"parity": {"atol": -1e-4}}, "parity.atol: Input should be greater than or equal to 0 (got -0.0001)"),
        ({"task": "regresion", "model": {"candidates": "recommended"}}, "task: Input should be 'classification' or"),
        ({"task": ["regression"]}, "task: Input should be 'classification' or 'regression'"),
    ],
)
def test_settings_that_fail_later_are_refused_when_the_spec_loads(tmp_path: Path, overrides, line) -> None:
    """Each loaded, and `streamfit check` said ok or blamed something else: a bad cron failed the whole
    code location (every stream) with Dagster's traceback; unknown detector parameters raised in the
    drift sensor at every tick; a negative parity tolerance failed every export while check said
    "choose another estimator"; a misspelt task beside `candidates: recommended` said only
    `'regresion'` (a KeyError), a list `unhashable type: 'list'`."""
    path = _write(tmp_path, "orders.yaml", _raw(**overrides))
    with pytest.raises(ValueError) as caught:
        load_spec(path)
    assert f"\n  {line}" in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (
            {"batch": {"rows": 1000, "max_rows": 10**12}},
            "batch.max_rows: 1000000000000 is over its limit, 20,000,000: a run holds its batch in memory, "
            "~0.5 KiB a row: 20,000,000 rows is ~10 GiB, most of a 24 GiB worker beside the model; lower it",
        ),
        (
            {"drift": {"retrain_window_rows": 10**12}},
            "drift.retrain_window_rows: 1000000000000 is over its limit, 100,000,000: a retrain holds ~130 bytes "
            "a row of its window",
        ),
        (
            {"batch": {"max_wait_s": 1e12}},
            "batch.max_wait_s: 1000000000000.0 is over its limit, 604,800: a week: a stream waiting longer for a batch "
            "looks stopped, and a larger value is usually a unit mistake (ms for s); give seconds, at most 604800",
        ),
        ({"batch": {"max_run_seconds": 10**9}}, "batch.max_run_seconds: 1000000000 is over its limit, 86,400: a day"),
        ({"batch": {"step_retries": 64}}, "batch.step_retries: 64 is over its limit, 10: the backoff doubles"),
        ({"drift": {"cooldown_s": 9e9}}, "drift.cooldown_s: 9000000000.0 is over its limit, 604,800: a week"),
        ({"drift": {"interval_s": 10**7}}, "drift.interval_s: 10000000 is over its limit, 86,400: a day"),
        ({"labels": {"join_window_s": 3.6e9}}, "labels.join_window_s: 3600000000.0 is over its limit, 31,536,000: a"),
        ({"labels": {"max_pending": 10**9}}, "labels.max_pending: 1000000000 is over its limit, 10,000,000: each"),
        ({"drift": {"retrain_epochs": 10**6}}, "drift.retrain_epochs: 1000000 is over its limit, 100: each epoch"),
        ({"feature_state": {"max_keys": 10**9}}, "feature_state.max_keys: 1000000000 is over its limit, 10,000,000"),
        ({"model": {"scale_out": {"workers": 10**4}}}, "model.scale_out.workers: 10000 is over its limit, 256: each"),
        (
            {"quality": {"max_rows": 10**12}},
            "quality.max_rows: 1000000000000 is over its limit, 20,000,000: no batch holds more than batch.max_rows, "
            "itself at most 20,000,000 (a run holds its batch in memory): a larger bound never fails a batch, so the "
            "rule checks nothing; give the most rows a batch should hold (at most batch.max_rows), or remove it",
        ),
        (
            {"model": {"estimator": "random_forest_classifier", "refit_every": 10**6}},
            "model.refit_every: 1000000 is over its limit, 10,000: between refits a windowed model learns nothing",
        ),
        (
            {
                "model": {
                    "candidates": [
                        {"estimator": "sgd_classifier"},
                        {"estimator": "random_forest_classifier", "refit_every": 10**6},
                    ]
                }
            },
            "model.candidates.1.refit_every: 1000000 is over its limit, 10,000: between refits",
        ),
        (
            {"event_time": {"lateness": 604_800_000}},  # 7 days in ms
            "event_time.lateness: 604800000.0 is over its limit, 31,536,000: a year: each key's history is kept "
            "for lateness plus the longest derived window",
        ),
        (
            {"event_time": {"max_ahead": "2d"}},
            "event_time.max_ahead: '2d' is over its limit, 86,400: a day: one event from a clock that far ahead "
            "holds its partition's watermark there",
        ),
        (
            {
                "event_time": {"field": "ts"},
                "derived": [{"name": "a_mean", "of": "a", "by": "user", "agg": "mean", "window": "3650d"}],
            },
            "derived.0.window: 315360000.0 is over its limit, 31,536,000: a year: the state holds every event of a "
            "key within the window",
        ),
    ],
)
def test_absurd_sizes_are_refused_naming_the_limit_its_reason_and_the_fix(tmp_path: Path, overrides, line) -> None:
    """`batch.max_rows: 1000000000000`, a retrain window of 10**12 rows or `max_wait_s: 1e12` (ms for s)
    loaded and `streamfit check` said ok: the run ran out of memory, or the sensor never fired."""
    path = _write(tmp_path, "orders.yaml", _raw(**overrides))
    with pytest.raises(ValueError) as caught:
        load_spec(path)
    assert f"\n  {line}" in str(caught.value)


def test_large_production_sizes_still_load() -> None:
    """The limits are generous: tens of millions of rows, a week's wait, a year's label delay or derived
    window, a month's lateness."""
    spec = StreamSpec.model_validate(
        _raw(
            batch={"rows": 5_000_000, "max_rows": 20_000_000, "max_wait_s": 604_800, "max_run_seconds": 86_400},
            drift={"retrain_window_rows": 100_000_000, "cooldown_s": 86_400, "interval_s": 3600},
            labels={"join_window_s": 90 * 86_400, "flush_interval_s": 60},
            quality={"max_rows": 20_000_000},
            event_time={"lateness": "30d", "max_ahead": "1h"},
            derived=[{"name": "a_sum_1y", "of": "a", "by": "user", "agg": "sum", "window": "365d"}],
        )
    )
    assert spec.batch.max_rows == 20_000_000 and spec.drift.retrain_window_rows == 100_000_000
    assert spec.quality.max_rows == 20_000_000 and spec.derived[0].window == 365 * 86_400
    assert (spec.event_time.lateness, spec.event_time.max_ahead) == (30 * 86_400, 3600)
    windowed = StreamSpec.model_validate(_raw(model={"estimator": "random_forest_classifier", "refit_every": 2_000}))
    assert windowed.model.refit_every == 2_000  # a refit every few hours on a busy stream


def test_valid_crons_and_detector_parameters_still_load() -> None:
    spec = StreamSpec.model_validate(
        _raw(
            drift={
                "full_retrain_cron": "30 2 * * 1-5",
                "report_cron": "@daily",
                "detector": "page_hinkley",
                "detector_params": {"threshold": 20, "delta": 0.01},
            }
        )
    )
    assert spec.drift.full_retrain_cron == "30 2 * * 1-5"
    assert spec.drift.detector_params == {"threshold": 20, "delta": 0.01}


def test_a_yaml_boolean_where_text_is_expected_says_to_quote_it(tmp_path: Path) -> None:
    """`categories: [NO, SE]` (Norway) or a feature named `on`: YAML 1.1 reads them as booleans, and the
    error said only "Input should be a valid string (got False)", naming neither the cause nor the fix."""
    path = tmp_path / "nordic.yaml"
    path.write_text(
        "name: nordic\nfeatures:\n  - {name: country, type: category, categories: [NO, SE]}\n  - {name: on}\n"
        "label: {classes: [0, 1]}\n"
    )
    with pytest.raises(ValueError) as caught:
        load_spec(path)
    hint = "YAML reads unquoted yes, no, on and off as booleans: quote the value if you meant text ('NO')"
    assert f"features.0.categories.0.str: Input should be a valid string (got False); {hint}" in str(caught.value)
    assert f"features.1.name: Input should be a valid string (got True); {hint}" in str(caught.value)


@pytest.mark.parametrize(
    ("task", "metric", "allowed"),
    [("regression", "roc_auc", "['mae', 'rmse']"), ("classification", "rmse", "['accuracy', 'roc_auc', 'log_loss']")],
)
def test_a_promotion_metric_of_the_other_task_is_refused(task: str, metric: str, allowed: str) -> None:
    """It loaded and `streamfit check` said ok, but the metric is never computed for the task: every
    gate was deferred ("rmse not computable on this batch (e.g. a single class)") and no version after
    the first was ever promoted."""
    label = {"classes": [0, 1]} if task == "classification" else {}
    message = _errors(task=task, label=label, promotion={"metric": metric})
    assert f"promotion.metric {metric!r} is not measured on a {task} stream: choose one of {allowed}" in message
    assert StreamSpec.model_validate(_raw(task=task, label=label)).promotion.metric is None  # the default loads
