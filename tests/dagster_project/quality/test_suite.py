"""Data-quality suites on micro-batches: each rule fails on a batch that breaks it and passes on one at
its limit; failures name the column and the offending rows; schema changes, suite files, empty batches
and partial splitting. Batches are built directly: no Kafka."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from dagster_project.ingest.micro_batch import MicroBatch
from dagster_project.quality import suite as quality
from dagster_project.quality.suite import (
    batch_frame,
    row_violation_reasons,
    row_violations,
    screen_batch,
    split_partial,
    validate_batch,
    validate_frame,
)
from dagster_project.spec import QualitySpec, StreamSpec, load_specs

ROWS = 20
FIRST_OFFSET = 1000


def make_spec(task: str = "classification", **quality_rules) -> StreamSpec:
    """x0 in [0, 1]; x1 nullable; x2 unbounded. Three classes, so label indices are 0..2."""
    raw = {
        "name": "quality_test",
        "task": task,
        "features": [{"name": "x0", "min": 0, "max": 1}, {"name": "x1", "nullable": True}, {"name": "x2"}],
        "quality": quality_rules,
    }
    if task == "classification":
        raw["label"] = {"classes": ["low", "mid", "high"]}
    else:
        raw["model"] = {"estimator": "sgd_regressor"}
    return StreamSpec.model_validate(raw)


def make_batch(rows: int = ROWS, seed: int = 0, task: str = "classification") -> MicroBatch:
    """Clean rows over two partitions; every fourth row is unlabelled (NaN label is not a violation)."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.uniform(0.1, 0.9, rows), rng.normal(size=rows), rng.normal(5, 2, rows)])
    y = rng.integers(0, 3, rows).astype(np.float64) if task == "classification" else rng.normal(size=rows)
    y[::4] = np.nan
    return MicroBatch(
        stream="quality_test",
        ranges={0: (FIRST_OFFSET, FIRST_OFFSET + rows), 1: (FIRST_OFFSET, FIRST_OFFSET + rows)},
        X=X,
        y=y,
        ids=[f"e{i}" for i in range(rows)],
        partitions=np.arange(rows, dtype=np.int32) % 2,
        offsets=FIRST_OFFSET + np.arange(rows, dtype=np.int64),
        dlq_reasons=Counter({"not valid JSON": 1}),
    )


def set_x(row: int, col: int, value: float):
    def mutate(batch: MicroBatch) -> None:
        batch.X[row, col] = value

    return mutate


def nulls_x1(rows: list[int]):
    def mutate(batch: MicroBatch) -> None:
        batch.X[rows, 1] = np.nan

    return mutate


def set_label(row: int, value: float):
    def mutate(batch: MicroBatch) -> None:
        batch.y[row] = value

    return mutate


def copy_id(src: int, dst: int):
    def mutate(batch: MicroBatch) -> None:
        batch.ids[dst] = batch.ids[src]

    return mutate


def shift_x0(delta: float):
    def mutate(batch: MicroBatch) -> None:
        batch.X[:, 0] = np.clip(batch.X[:, 0] + delta, 0, 1)

    return mutate


def keep(batch: MicroBatch) -> None:
    pass


def first_rows(rows: int):
    def mutate(batch: MicroBatch) -> MicroBatch:
        return split_partial(batch, np.arange(batch.rows) >= rows)[0]

    return mutate


NOT_NULL = "expect_column_values_to_not_be_null"
BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"
UNIQUE = "expect_column_values_to_be_unique"
ROW_COUNT = "expect_table_row_count_to_be_between"
MEAN = "expect_column_mean_to_be_between"
STD = "expect_column_stdev_to_be_between"

# rule, quality rules, a mutation within the rule (at its limit where it has one), a mutation that
# breaks it (mutations change the batch in place or return a new one; None: one row too many),
# the failing expectation, its column, and the rows its sample must name
RULES = [
    ("non-nullable null", {}, keep, set_x(3, 0, np.nan), NOT_NULL, "x0", [3]),
    (
        "nullable null fraction",
        {"max_null_fraction": 0.1},
        nulls_x1([2, 5]),
        nulls_x1([2, 5, 7]),
        NOT_NULL,
        "x1",
        [2, 5, 7],
    ),
    ("nullable, strict default", {}, keep, nulls_x1([6]), NOT_NULL, "x1", [6]),
    ("above max", {}, set_x(5, 0, 1.0), set_x(5, 0, 1.5), BETWEEN, "x0", [5]),
    ("below min", {}, set_x(5, 0, 0.0), set_x(5, 0, -0.01), BETWEEN, "x0", [5]),
    ("infinite", {}, set_x(6, 2, 1e300), set_x(6, 2, np.inf), BETWEEN, "x2", [6]),
    ("label outside classes", {}, set_label(7, 2.0), set_label(7, 3.0), IN_SET, "label", [7]),
    ("fractional label", {}, keep, set_label(9, 0.5), IN_SET, "label", [9]),
    ("duplicate id", {}, keep, copy_id(2, 9), UNIQUE, "event_id", [2, 9]),
    ("min rows", {"min_rows": ROWS}, keep, first_rows(ROWS - 1), ROW_COUNT, None, []),
    ("max rows", {"max_rows": ROWS}, keep, None, ROW_COUNT, None, []),
    ("mean bounds", {"mean_bounds": {"x0": [0.3, 0.7]}}, keep, shift_x0(0.5), MEAN, "x0", []),
    ("std bounds", {"std_bounds": {"x2": [1.0, 3.0]}}, keep, set_x(0, 2, 500.0), STD, "x2", []),
]


@pytest.mark.parametrize(
    "rules, ok, bad, expectation, column, bad_rows",
    [pytest.param(*row[1:], id=row[0]) for row in RULES],
)
def test_each_rule_passes_at_its_limit_and_fails_beyond_it(rules, ok, bad, expectation, column, bad_rows) -> None:
    spec = make_spec(**rules)
    batch = make_batch()
    batch = ok(batch) or batch
    result = validate_batch(batch, spec)
    assert result.passed, result.summary
    assert result.failures == [] and result.unexpected_rows == 0

    batch = make_batch(rows=ROWS + 1) if bad is None else make_batch()  # None: one row too many
    batch = (bad or keep)(batch) or batch
    result = validate_batch(batch, spec)
    assert not result.passed
    assert [(f.expectation, f.column) for f in result.failures] == [(expectation, column)], result.summary
    failure = result.failures[0]
    assert column is None or repr(column) in failure.message
    if bad_rows:
        assert failure.unexpected_count == len(bad_rows)
        assert [s["offset"] for s in failure.sample] == [FIRST_OFFSET + i for i in bad_rows]
        assert [s["partition"] for s in failure.sample] == [i % 2 for i in bad_rows]
        assert [s["event_id"] for s in failure.sample] == [batch.ids[i] for i in bad_rows]
        assert f"{bad_rows[0] % 2}:{FIRST_OFFSET + bad_rows[0]}" in failure.message
    json.dumps(result.as_metadata(), allow_nan=False)


def test_row_count_failure_reports_the_count() -> None:
    result = validate_batch(make_batch(rows=ROWS - 1), make_spec(min_rows=ROWS, max_rows=ROWS + 5))
    assert result.failures[0].observed == ROWS - 1
    assert f"observed {ROWS - 1}" in result.failures[0].message and f"min_value={ROWS}" in result.failures[0].message


def test_failure_carries_offending_value_and_observed_fraction() -> None:
    batch = make_batch()
    batch.X[[4, 8], 0] = [1.5, 2.5]
    failure = validate_batch(batch, make_spec()).failures[0]
    assert [s["value"] for s in failure.sample] == [1.5, 2.5]
    assert failure.observed == pytest.approx(2 / ROWS)


def test_sample_is_capped_at_five_rows() -> None:
    batch = make_batch(rows=200)
    batch.X[10:60, 0] = 7.0
    failure = validate_batch(batch, make_spec()).failures[0]
    assert failure.unexpected_count == 50
    assert [s["offset"] for s in failure.sample] == [FIRST_OFFSET + i for i in range(10, 15)]


def test_unlabelled_rows_and_regression_labels() -> None:
    batch = make_batch()
    batch.y[:] = np.nan
    assert validate_batch(batch, make_spec()).passed

    spec = make_spec(task="regression")
    batch = make_batch(task="regression")
    batch.y[3] = 1e6  # regression labels have no domain beyond being finite
    assert validate_batch(batch, spec).passed
    batch.y[5] = -np.inf
    result = validate_batch(batch, spec)
    assert [(f.expectation, f.column) for f in result.failures] == [("expect_column_values_to_be_between", "label")]
    assert result.failures[0].sample[0]["value"] == "-inf"


def test_several_failures_come_in_suite_order_and_count_distinct_rows() -> None:
    batch = make_batch()
    batch.X[3, 0] = 5.0
    batch.X[3, 2] = np.nan
    batch.y[11] = 7.0
    result = validate_batch(batch, make_spec())
    assert [(f.expectation, f.column) for f in result.failures] == [
        ("expect_column_values_to_be_between", "x0"),
        ("expect_column_values_to_not_be_null", "x2"),
        ("expect_column_values_to_be_in_set", "label"),
    ]
    meta = result.as_metadata()
    assert meta["rows"] == ROWS and meta["failed_expectations"] == 3 and meta["unexpected_rows"] == 2
    assert meta["passed"] is False and len(meta["failures"]) == 3
    assert "3 of" in result.summary and "'x0'" in result.summary


def test_metadata_is_accepted_by_dagster() -> None:
    import dagster as dg

    batch = make_batch()
    batch.X[0, 0] = np.inf
    result = validate_batch(batch, make_spec())
    check = dg.AssetCheckResult(passed=result.passed, metadata=result.as_metadata())
    assert check.metadata["failed_expectations"].value == 1
    assert check.metadata["failures"].value[0]["sample"][0]["value"] == "inf"


# -- empty and tiny batches ------------------------------------------------------------------------


def test_empty_batch_is_decided_by_min_rows_alone() -> None:
    empty = make_batch(rows=0)
    assert empty.X.shape == (0, 3)
    bounds = {"mean_bounds": {"x0": [0.3, 0.7]}, "std_bounds": {"x2": [1, 3]}}
    result = validate_batch(empty, make_spec(**bounds))
    assert [f.expectation for f in result.failures] == ["expect_table_row_count_to_be_between"]
    assert result.rows == 0 and result.unexpected_rows == 0
    assert validate_batch(empty, make_spec(min_rows=0, **bounds)).passed


def test_std_of_a_single_row_is_undefined_and_fails() -> None:
    result = validate_batch(make_batch(rows=1), make_spec(std_bounds={"x2": [0, 10]}))
    assert [(f.expectation, f.observed) for f in result.failures] == [("expect_column_stdev_to_be_between", None)]


# -- schema changes (raw frames) -------------------------------------------------------------------


def test_missing_feature_column_fails_naming_it() -> None:
    spec = make_spec(mean_bounds={"x1": [-1, 1]})
    df = batch_frame(make_batch(), spec).drop(columns=["x1"])
    result = validate_frame(df, spec)
    assert not result.passed
    assert [f.expectation for f in result.failures] == ["expect_table_columns_to_match_set"]
    failure = result.failures[0]
    assert failure.observed["missing"] == ["x1"] and "'x1'" in failure.message
    assert result.unexpected_rows == ROWS  # no row of a frame without the feature can train


def test_extra_column_fails_naming_it() -> None:
    spec = make_spec()
    df = batch_frame(make_batch(), spec)
    df.insert(1, "x9", 0.0)
    result = validate_frame(df, spec)
    assert [f.expectation for f in result.failures] == ["expect_table_columns_to_match_set"]
    assert result.failures[0].observed["unexpected"] == ["x9"] and "'x9'" in result.failures[0].message


def test_column_order_does_not_matter() -> None:
    spec = make_spec()
    df = batch_frame(make_batch(), spec)
    assert validate_frame(df[list(reversed(df.columns))], spec).passed


def test_non_numeric_feature_fails_the_type_rule() -> None:
    spec = make_spec()
    df = batch_frame(make_batch(), spec)
    df["x2"] = df["x2"].map(str)
    result = validate_frame(df, spec)
    kinds = {(f.expectation, f.column) for f in result.failures}
    assert ("expect_column_values_to_be_in_type_list", "x2") in kinds
    assert result.unexpected_rows == ROWS


def test_batch_frame_layout() -> None:
    spec = make_spec()
    batch = make_batch()
    df = batch_frame(batch, spec)
    assert list(df.columns) == ["x0", "x1", "x2", "label", "event_id", "partition", "offset"]
    assert df["label"].dtype == np.float64 and np.isnan(df["label"].iloc[0])
    assert df["offset"].tolist() == batch.offsets.tolist()
    with pytest.raises(ValueError, match="shape"):
        batch_frame(make_batch(), StreamSpec.model_validate({**spec.model_dump(), "features": [{"name": "a"}]}))


def test_batch_frame_ids_are_object_strings_and_a_repeated_id_still_fails() -> None:
    """The ids column holds the batch's own strings as objects, not pandas' default Arrow strings
    (pyarrow's pool costs 30-70 ms on its first large allocation in a run's process); the unique-id
    rule still names both rows of a repeated id."""
    spec = make_spec()
    batch = make_batch()
    df = batch_frame(batch, spec)
    assert df["event_id"].dtype == object and df["event_id"].tolist() == batch.ids
    batch.ids[7] = batch.ids[3]
    failure = next(f for f in validate_batch(batch, spec).failures if f.expectation.endswith("to_be_unique"))
    assert {(row["partition"], row["offset"]) for row in failure.sample} == {
        (1, FIRST_OFFSET + 3),
        (1, FIRST_OFFSET + 7),
    }


# -- suite files -----------------------------------------------------------------------------------


def write_suite(directory: Path, *expectations: dict) -> Path:
    path = directory / "extra_suite.json"
    path.write_text(json.dumps({"name": "extra", "expectations": list(expectations)}))
    return path


def test_suite_file_adds_expectations(tmp_path: Path) -> None:
    write_suite(tmp_path, {"type": "expect_column_max_to_be_between", "kwargs": {"column": "x2", "max_value": 6}})
    spec = make_spec(suite_file="extra_suite.json")  # relative to the spec directory
    result = validate_batch(make_batch(), spec, spec_dir=tmp_path)
    assert [(f.expectation, f.column) for f in result.failures] == [("expect_column_max_to_be_between", "x2")]
    assert result.failures[0].observed > 6
    assert result.evaluated_expectations == quality._compile(make_spec(), tmp_path).size + 1

    # an edited suite file is picked up by the next validation, without a restart
    write_suite(tmp_path, {"type": "expect_column_max_to_be_between", "kwargs": {"column": "x2", "max_value": 1e6}})
    assert validate_batch(make_batch(), spec, spec_dir=tmp_path).passed


def test_suite_file_defaults_to_the_spec_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_suite(tmp_path, {"type": "expect_column_min_to_be_between", "kwargs": {"column": "x0", "min_value": 0.5}})
    monkeypatch.setenv("STREAMFIT_STREAMS", str(tmp_path))
    result = validate_batch(make_batch(), make_spec(suite_file="extra_suite.json"))
    assert [(f.expectation, f.column) for f in result.failures] == [("expect_column_min_to_be_between", "x0")]


def test_suite_file_absolute_path_and_warning_severity(tmp_path: Path) -> None:
    path = write_suite(
        tmp_path,
        {"type": "expect_column_max_to_be_between", "kwargs": {"column": "x2", "max_value": 0}, "severity": "warning"},
    )
    result = validate_batch(make_batch(), make_spec(suite_file=str(path)))
    assert result.passed
    assert [w.expectation for w in result.warnings] == ["expect_column_max_to_be_between"]
    assert result.as_metadata()["warnings"] == 1


@pytest.mark.parametrize(
    "content, error, match",
    [
        (None, FileNotFoundError, "does not exist"),
        ("{not json", ValueError, "not valid JSON"),
        (json.dumps({"expectations": [{"type": "expect_nonsense", "kwargs": {}}]}), ValueError, "expect_nonsense"),
        (
            json.dumps({"expectations": [{"type": "expect_column_max_to_be_between", "kwargs": {"column": "nope"}}]}),
            ValueError,
            "unknown column",
        ),
    ],
    ids=["missing", "not-json", "unknown-type", "unknown-column"],
)
def test_bad_suite_file_is_a_clear_error(tmp_path: Path, content, error, match) -> None:
    if content is not None:
        (tmp_path / "extra_suite.json").write_text(content)
    spec = make_spec(suite_file="extra_suite.json")
    with pytest.raises(error, match=match) as info:
        validate_batch(make_batch(), spec, spec_dir=tmp_path)
    assert "extra_suite.json" in str(info.value)


# -- per-row rules without GX, and partial batches -------------------------------------------------


def broken_batch() -> MicroBatch:
    batch = make_batch()
    batch.X[2, 0] = 9.0  # out of range
    batch.X[5, 2] = np.nan  # null in a non-nullable feature
    batch.y[8] = 4.0  # not a class index
    batch.ids[13] = batch.ids[1]  # a repeat: the first occurrence stays
    batch.X[15, 1] = np.nan  # null in a nullable feature: batch-level rule, not a row rule
    return batch


def test_row_violations_mark_per_row_rules_only() -> None:
    batch = broken_batch()
    lenient = make_spec(max_null_fraction=0.1)
    assert np.flatnonzero(row_violations(batch, lenient)).tolist() == [2, 5, 8, 13]
    # with the strict default no feature may be null, nullable or not
    assert np.flatnonzero(row_violations(batch, make_spec())).tolist() == [2, 5, 8, 13, 15]
    no_unique = make_spec(unique_ids=False, max_null_fraction=0.1)
    assert np.flatnonzero(row_violations(batch, no_unique)).tolist() == [2, 5, 8]
    reasons = row_violation_reasons(batch, lenient)
    assert sorted(reasons) == [2, 5, 8, 13]
    assert "'x0' infinite or outside [0, 1]: 9.0" in reasons[2] and "'x2' is null" in reasons[5]
    assert "not a class index 0..2: 4.0" in reasons[8] and "duplicate event id" in reasons[13]
    assert not row_violations(make_batch(rows=0), lenient).any()


def test_row_violations_agree_with_the_suite() -> None:
    spec = make_spec(max_null_fraction=0.1)
    batch = broken_batch()
    assert validate_batch(batch, spec).unexpected_rows == int(row_violations(batch, spec).sum())


def test_split_partial_keeps_order_and_all_fields() -> None:
    batch = broken_batch()
    mask = row_violations(batch, make_spec(max_null_fraction=0.1))
    kept, rejected = split_partial(batch, mask)
    assert kept.rows == ROWS - 4 and rejected.rows == 4
    assert rejected.offsets.tolist() == [FIRST_OFFSET + i for i in (2, 5, 8, 13)]
    assert rejected.ids == [batch.ids[i] for i in (2, 5, 8, 13)]
    assert np.array_equal(kept.offsets, np.sort(kept.offsets))
    assert kept.X.shape == (ROWS - 4, 3) and kept.partitions.dtype == np.int32
    np.testing.assert_array_equal(rejected.X, batch.X[mask])
    np.testing.assert_array_equal(kept.y, batch.y[~mask])
    assert kept.ranges == batch.ranges and kept.dlq_reasons == batch.dlq_reasons and rejected.dlq == 0
    with pytest.raises(ValueError, match="boolean"):
        split_partial(batch, np.zeros(3, dtype=bool))


def test_the_kept_rows_carry_the_feature_state_the_whole_batch_left() -> None:
    batch = broken_batch()
    batch.feature_state, batch.feature_counters = b'{"format": 1}', {"keys": 3}
    batch.filling = ("count_1h",)
    kept, rejected = split_partial(batch, row_violations(batch, make_spec(max_null_fraction=0.1)))
    # The version learning the kept rows checkpoints the state after every row the batch read.
    assert kept.feature_state == batch.feature_state and kept.feature_counters == {"keys": 3}
    assert kept.filling == ("count_1h",)  # and says which of its derived windows were still filling
    assert rejected.feature_state is None


def test_screen_batch_partial_then_policy() -> None:
    batch = broken_batch()
    screening = screen_batch(batch, make_spec(max_null_fraction=0.1, allow_partial=True))
    assert screening.action == "partial"
    assert screening.kept.rows == ROWS - 4 and screening.kept_result.passed
    assert sorted(screening.reasons) == [2, 5, 8, 13]

    assert screen_batch(make_batch(), make_spec()).action == "train"
    assert screen_batch(batch, make_spec(max_null_fraction=0.1)).action == "halt"
    assert screen_batch(batch, make_spec(max_null_fraction=0.1, policy="quarantine")).action == "quarantine"
    # the split would leave too few rows: the policy decides for the whole batch
    strict_count = make_spec(max_null_fraction=0.1, allow_partial=True, min_rows=ROWS - 1)
    assert screen_batch(batch, strict_count).action == "halt"


# -- spec, caching, imports ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rules, match",
    [
        ({"min_rows": 10, "max_rows": 5}, "below"),
        ({"max_null_fraction": 1.5}, "less than or equal"),
        ({"mean_bounds": {"x0": [2, 1]}}, "exceeds"),
        ({"std_bounds": {"nope": [0, 1]}}, "unknown feature"),
        ({"policy": "ignore"}, "policy"),
        ({"typo": 1}, "typo"),
    ],
)
def test_invalid_quality_rules_are_rejected(rules, match) -> None:
    with pytest.raises(ValidationError, match=match):
        make_spec(**rules)


def test_quality_defaults_and_yaml_round_trip() -> None:
    bare = StreamSpec.model_validate({"name": "d", "features": [{"name": "a"}], "label": {"classes": [0, 1]}})
    assert bare.quality == QualitySpec()
    assert (bare.quality.policy, bare.quality.min_rows, bare.quality.max_null_fraction) == ("halt", 1, 0.0)
    spec = make_spec(mean_bounds={"x0": [0, 1]}, policy="quarantine", allow_partial=True)
    assert StreamSpec.model_validate(yaml.safe_load(yaml.safe_dump(spec.model_dump(mode="json")))) == spec


def test_reserved_feature_names_are_rejected() -> None:
    with pytest.raises(ValidationError, match="reserved"):
        StreamSpec.model_validate({"name": "r", "features": [{"name": "offset"}], "label": {"classes": [0, 1]}})


@pytest.mark.parametrize("spec", load_specs(Path(__file__).resolve().parents[3] / "streams"), ids=lambda s: s.name)
def test_shipped_specs_pass_clean_batches(spec: StreamSpec) -> None:
    rows = 50
    rng = np.random.default_rng(1)
    # The batch the suite sees holds the model inputs: the event's features, then derived ones.
    low = np.array([f.min if f.min is not None else -3.0 for f in spec.inputs])
    high = np.array([f.max if f.max is not None else 3.0 for f in spec.inputs])
    batch = MicroBatch(
        stream=spec.name,
        ranges={0: (0, rows)},
        X=np.round(rng.uniform(low, high, size=(rows, len(spec.inputs)))),
        y=rng.integers(0, len(spec.label.classes), rows).astype(np.float64),
        ids=[str(i) for i in range(rows)],
        partitions=np.zeros(rows, dtype=np.int32),
        offsets=np.arange(rows, dtype=np.int64),
    )
    result = validate_batch(batch, spec)
    assert result.passed, result.summary


def test_suite_is_built_once_per_spec() -> None:
    spec = make_spec(min_rows=3)
    validate_batch(make_batch(), spec)
    before = quality._compiled.cache_info()
    validate_batch(make_batch(seed=1), spec)
    after = quality._compiled.cache_info()
    assert after.hits == before.hits + 1 and after.misses == before.misses


def test_build_suite_lists_the_rules() -> None:
    spec = make_spec(mean_bounds={"x0": [0, 1]}, unique_ids=False)
    kinds = Counter(e.configuration.type for e in quality.build_suite(spec).expectations)
    assert kinds["expect_column_values_to_be_in_type_list"] == 4  # features and label
    assert kinds["expect_column_values_to_not_be_null"] == 3 and kinds["expect_column_mean_to_be_between"] == 1
    assert "expect_column_values_to_be_unique" not in kinds


def test_importing_quality_does_not_import_great_expectations() -> None:
    code = (
        "import sys, dagster_project.quality.suite; print('great_expectations' in sys.modules, 'pandas' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_batches_are_validated_without_gx_fingerprinting_every_row(monkeypatch) -> None:
    from great_expectations.execution_engine import pandas_execution_engine

    hashed: list[int] = []
    monkeypatch.setattr(pandas_execution_engine, "hash_pandas_dataframe", lambda df: hashed.append(len(df)) or "x")
    passed = validate_batch(make_batch(), make_spec())
    broken = make_batch()
    set_x(5, 0, 1.5)(broken)  # above x0's max: a rule GX itself runs on every row
    failed = validate_batch(broken, make_spec())

    assert passed.passed and not failed.passed
    assert [(f.expectation, f.column) for f in failed.failures] == [(BETWEEN, "x0")]
    assert hashed == []
