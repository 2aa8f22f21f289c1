"""Rules the parser enforces, the row count and unique ids are verified outside GX, and agree with GX
on every frame: a check that says a rule holds never hides a GX failure, and a batch that breaks one
goes to GX whole."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dagster_project.quality import suite as quality
from dagster_project.quality.suite import batch_frame, validate_batch, validate_frame
from dagster_project.spec import StreamSpec
from tests.dagster_project.quality.test_suite import make_batch, make_spec


def gx_outcomes(spec, df: pd.DataFrame) -> dict[int, bool]:
    """Suite position -> success of that expectation when GX runs the whole suite on `df`."""
    compiled = quality._compile(spec, None)
    batch = compiled.batch_definition.get_batch(batch_parameters={"dataframe": df})
    run = batch.validate(compiled.suite, result_format="BOOLEAN_ONLY")
    return {compiled.order[r.expectation_config.id]: r.success for r in run.results}


def kinds(spec, positions) -> list[tuple[str, str | None]]:
    expectations = quality._compile(spec, None).suite.expectations
    return sorted((expectations[i].expectation_type, getattr(expectations[i], "column", None)) for i in positions)


def test_the_parser_rules_the_row_count_and_unique_ids_are_guaranteed() -> None:
    spec = make_spec()  # x0 in [0, 1]; x1 nullable; x2 unbounded; three classes
    guaranteed = kinds(spec, quality._compile(spec, None).guarantees)
    assert guaranteed == sorted(
        [
            ("expect_table_columns_to_match_set", None),
            *(("expect_column_values_to_be_in_type_list", c) for c in ("x0", "x1", "x2", "label")),
            ("expect_column_values_to_not_be_null", "x0"),
            ("expect_column_values_to_not_be_null", "x2"),
            ("expect_column_values_to_be_between", "x1"),
            ("expect_column_values_to_be_between", "x2"),
            ("expect_column_values_to_be_in_set", "label"),
            ("expect_table_row_count_to_be_between", None),
            ("expect_column_values_to_be_unique", "event_id"),
        ]
    )  # x0's range and x1's null fraction are the data's: GX checks them on every batch


def test_a_batch_with_every_rule_verified_outside_gx_still_fails_on_a_repeated_id() -> None:
    spec = StreamSpec.model_validate(
        {
            "name": "quality_test",
            "features": [{"name": name} for name in ("x0", "x1", "x2")],  # no range, no nulls: nothing left for GX
            "label": {"classes": ["low", "mid", "high"]},
        }
    )
    compiled = quality._compile(spec, None)
    assert len(compiled.guarantees) == compiled.size
    assert validate_batch(make_batch(), spec).passed
    batch = make_batch()
    batch.ids[9] = batch.ids[2]
    result = validate_batch(batch, spec)
    assert [(f.expectation, f.column) for f in result.failures] == [("expect_column_values_to_be_unique", "event_id")]
    assert [(s["partition"], s["offset"]) for s in result.failures[0].sample] == [
        (0, batch.offsets[2]),
        (1, batch.offsets[9]),
    ]


def test_regression_label_finiteness_is_guaranteed() -> None:
    spec = make_spec(task="regression")
    assert ("expect_column_values_to_be_between", "label") in kinds(spec, quality._compile(spec, None).guarantees)


def test_a_parsed_batch_sends_only_the_data_rules_to_gx() -> None:
    spec = make_spec()
    result = validate_batch(make_batch(), spec)
    assert result.passed, result.summary
    assert result.evaluated_expectations == quality._compile(spec, None).size
    assert result.guaranteed_expectations == len(quality._compile(spec, None).guarantees) == 12
    assert result.as_metadata()["guaranteed_expectations"] == 12


def _mutations():
    """Frames that break (or nearly break) each guaranteed rule, and some that break several."""

    def frame(spec):
        return batch_frame(make_batch(), spec)

    def nan_x0(df):
        df.loc[3, "x0"] = np.nan

    def inf_x2(df):
        df.loc[4, "x2"] = -np.inf

    def huge_x2(df):
        df.loc[4, "x2"] = 1e300  # finite: the unbounded range holds

    def inf_x1(df):
        df.loc[2, "x1"] = np.inf

    def nan_x1(df):
        df.loc[2, "x1"] = np.nan  # nullable: not the parser's rule

    def label_3(df):
        df.loc[5, "label"] = 3.0

    def label_half(df):
        df.loc[5, "label"] = 0.5

    def label_text(df):
        df["label"] = df["label"].map(lambda v: "x" if v == 1 else v).astype(object)

    def x2_int(df):
        df["x2"] = np.arange(len(df), dtype=np.int64)

    def x2_text(df):
        df["x2"] = df["x2"].astype(str)

    def drop_x1(df):
        del df["x1"]

    def extra(df):
        df["extra"] = 1.0

    def renamed_to_int(df):
        df.rename(columns={"x2": 2}, inplace=True)

    def repeated_id(df):
        df.loc[6, "event_id"] = df.loc[5, "event_id"]

    def null_ids(df):
        df.loc[[1, 2], "event_id"] = None  # GX ignores null ids; the check refuses them (GX then decides)

    def no_rows(df):
        df.drop(df.index, inplace=True)  # below min_rows (1)

    def several(df):
        nan_x0(df)
        inf_x2(df)
        label_3(df)

    cases = [nan_x0, inf_x2, huge_x2, inf_x1, nan_x1, label_3, label_half, label_text, x2_int, x2_text]
    return frame, [*cases, repeated_id, null_ids, no_rows, drop_x1, extra, renamed_to_int, several]


NOT_FLOAT = ("label_text", "x2_text", "x2_int")  # the checks refuse a column that is not float; GX may pass it
CONSERVATIVE = (*NOT_FLOAT, "null_ids")  # a check may refuse what GX passes, never the other way round


@pytest.mark.parametrize("mutate", _mutations()[1], ids=lambda f: f.__name__)
def test_a_check_that_holds_never_hides_a_gx_failure(mutate) -> None:
    spec = make_spec()
    df = _mutations()[0](spec)
    mutate(df)
    outcomes = gx_outcomes(spec, df)
    guarantees = quality._compile(spec, None).guarantees
    for position, holds in guarantees.items():
        if position not in outcomes:
            continue
        if holds(df):
            assert outcomes[position], kinds(spec, [position])
        elif mutate.__name__ not in CONSERVATIVE:  # on float frames the checks are exact, so parsed batches stay fast
            assert not outcomes[position], kinds(spec, [position])


@pytest.mark.parametrize("mutate", _mutations()[1], ids=lambda f: f.__name__)
def test_failures_are_those_of_gx_on_the_whole_suite(mutate) -> None:
    spec = make_spec()
    df = _mutations()[0](spec)
    mutate(df)
    outcomes = gx_outcomes(spec, df)
    result = validate_frame(df, spec)
    missing = set(quality.expected_columns(spec)) - set(df.columns)
    failed = kinds(spec, [p for p, ok in outcomes.items() if not ok])
    assert sorted((f.expectation, f.column) for f in result.failures) == [k for k in failed if k[1] not in missing]
    assert result.passed == all(outcomes.values())
    broken = [p for p, holds in quality._compile(spec, None).guarantees.items() if not holds(df)]
    assert result.guaranteed_expectations == (0 if broken else len(quality._compile(spec, None).guarantees))
