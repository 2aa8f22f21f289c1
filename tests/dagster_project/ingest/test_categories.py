"""Category features: the spec's rules, the value -> code encoding, and what the parser dead-letters."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from dagster_project.ingest.categories import (
    NULL_CODE,
    category_code,
    encoder_categories,
    stable_bucket,
    unseen_counts,
)
from dagster_project.ingest.events import EventParser, make_event
from dagster_project.spec import FeatureSpec, StreamSpec
from tests.conftest import census_spec, synthetic_spec


def _feature(**fields) -> FeatureSpec:
    return FeatureSpec.model_validate({"name": "f", "type": "category", **fields})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "give exactly one of categories: [...] (a fixed vocabulary) or buckets: N"),
        ({"categories": ["a"], "buckets": 4}, "give exactly one of categories"),
        ({"categories": []}, "categories is empty; list the known values, or use buckets: N"),
        ({"categories": ["a", "b", "a"]}, "duplicate categories ['a']; list each value once"),
        ({"categories": ["a", 1]}, "must be all strings or all integers, got ['int', 'str']; quote the numbers"),
        ({"categories": [True]}, "categories.0"),  # neither a string nor an integer
        ({"buckets": 1}, "buckets must be between 2 and 65536, got 1"),
        ({"categories": ["a"], "min": 0}, "is a category: remove min/max"),
        ({"categories": ["a"], "unseen": "drop"}, "'zero' or 'other'"),
    ],
)
def test_spec_mistakes_are_named_with_their_fix(fields: dict, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        _feature(**fields)
    assert message in str(raised.value)


def test_categories_on_a_numeric_feature_are_refused() -> None:
    with pytest.raises(ValueError, match="has categories/buckets but type 'float': set type: category"):
        FeatureSpec(name="f", categories=["a"])


def test_scale_out_is_refused_for_category_streams() -> None:
    with pytest.raises(ValueError, match="set model.scale_out.workers to 1"):
        census_spec(model={"estimator": "sgd_classifier", "scale_out": {"workers": 2}})


@pytest.mark.parametrize(
    ("unseen", "codes", "encoder"),
    [("zero", [0.0, 2.0, 3.0], [0.0, 1.0, 2.0]), ("other", [0.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0])],
)
def test_vocabulary_codes_and_unseen_handling(unseen: str, codes: list[float], encoder: list[float]) -> None:
    feature = _feature(categories=["a", "b", "c"], unseen=unseen)
    assert [category_code(feature, v) for v in ("a", "c", "never-seen")] == codes
    # "zero": the unseen code (3) has no encoder column, so it one-hot encodes as all zeros
    assert encoder_categories(feature).tolist() == encoder


def test_integer_vocabularies_take_integers_only() -> None:
    feature = _feature(categories=[10, 20])
    assert category_code(feature, 20) == 1.0
    for wrong in ("20", 20.0, True):
        with pytest.raises(ValueError, match="is a category with int values: send an integer"):
            category_code(feature, wrong)


def test_hashing_is_crc32_of_the_utf8_text_and_stable_across_processes() -> None:
    assert stable_bucket("94110", 64) == zlib.crc32(b"94110") % 64
    assert stable_bucket(94110, 64) == stable_bucket("94110", 64)
    assert stable_bucket("Zürich", 1000) == zlib.crc32("Zürich".encode()) % 1000
    code = "from dagster_project.ingest.categories import stable_bucket; print(stable_bucket('user-42', 1000))"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], env=os.environ | {"PYTHONHASHSEED": seed}, capture_output=True, text=True
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert outputs == {str(stable_bucket("user-42", 1000))}


def _parse(spec: StreamSpec, features: list[dict]):
    return EventParser(spec).parse_many([make_event(f"e{i}", f, label=0) for i, f in enumerate(features)])


GOOD = {"age": 39, "hours_per_week": 40.0, "workclass": "Private", "education": "Bachelors", "zip": 94110}


def test_parser_encodes_categories_and_keeps_unseen_values() -> None:
    spec = census_spec()
    parsed = _parse(spec, [GOOD, GOOD | {"workclass": "Never-worked", "education": None, "zip": "94110"}])
    assert parsed.failures == []
    zip_code = float(stable_bucket(94110, 64))
    assert parsed.X.tolist() == [[39.0, 40.0, 0.0, 2.0, zip_code], [39.0, 40.0, 4.0, NULL_CODE, zip_code]]
    assert parsed.unseen == [(1, "workclass", "Never-worked")]
    assert unseen_counts(spec, parsed.X) == {"workclass": 1, "education": 0}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"workclass": 3}, "feature 'workclass' is a category with str values: send a string, got int 3"),
        ({"workclass": ["Private"]}, "feature 'workclass' is a category with str values: send a string, got list"),
        ({"workclass": {"v": 1}}, "feature 'workclass' is a category with str values: send a string, got dict"),
        ({"workclass": True}, "got bool True"),
        ({"workclass": None}, "feature 'workclass' is null but the spec does not allow nulls"),
        ({"zip": 94110.5}, "feature 'zip' is a hashed category: send a string or an integer, got float 94110.5"),
        ({"zip": False}, "feature 'zip' is a hashed category"),
    ],
)
def test_wrong_category_values_are_dead_lettered_with_the_reason(change: dict, reason: str) -> None:
    parsed = _parse(census_spec(), [GOOD, GOOD | change, GOOD])
    assert parsed.ids == ["e0", "e2"]
    ((position, why),) = parsed.failures
    assert position == 1 and reason in why


def test_numeric_streams_keep_the_fast_path_and_its_results() -> None:
    spec = synthetic_spec()
    row = {f"x{i}": float(i) for i in range(5)}
    parsed = _parse(spec, [row, row | {"x0": "a string"}])
    assert parsed.X.tolist() == [[0.0, 1.0, 2.0, 3.0, 4.0]]
    assert "must be a number" in parsed.failures[0][1]
    assert np.array_equal(parsed.index, [0])


ODD_VALUES = ["Private", "Never-worked", None, 3, 3.5, True, ["Gov"], {"a": 1}, "", "Gov", "Gov", "Private"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_batch_fast_path_equals_parsing_each_message(seed: int) -> None:
    """parse_many's fast path codes categories itself (`fast_coder`): it must agree with `parse`
    message by message on codes, refusals and unseen values, for every kind of category."""
    spec = census_spec(
        features=[
            {"name": "age", "type": "int"},
            {"name": "workclass", "type": "category", "categories": ["Private", "Gov"], "unseen": "other"},
            {"name": "grade", "type": "category", "categories": [1, 2, 3], "nullable": True},
            {"name": "zip", "type": "category", "buckets": 16},
        ]
    )
    rng = np.random.default_rng(seed)
    pool = {
        "age": [30, 41, 52, 30.5, "x"],
        "workclass": ODD_VALUES,
        "grade": [1, 3, 2, 7, "2", 2.0, None, False, 2**64 - 1, "BIG"],
        "zip": [*ODD_VALUES, -(2**63), "BIG"],
    }
    rows = [{name: values[rng.integers(len(values))] for name, values in pool.items()} for _ in range(1000)]
    # "BIG": an integer beyond 64 bits, which orjson decodes as a float (it cannot encode one either)
    messages = [
        make_event(f"e{i}", row, label=int(rng.integers(2))).replace(b'"BIG"', b"100000000000000000000000")
        for i, row in enumerate(rows)
    ]
    parser = EventParser(spec)

    batch = parser.parse_many(messages)

    expected_rows, expected_failures, expected_unseen = [], [], []
    for i, message in enumerate(messages):
        try:
            event = parser.parse(message)
        except ValueError as exc:
            expected_failures.append((i, str(exc)))
        else:
            expected_rows.append(event.values)
            expected_unseen.extend((i, name, value) for name, value in event.unseen)
    assert batch.failures == expected_failures
    assert batch.X.tolist() == expected_rows
    assert batch.unseen == expected_unseen
    assert len(expected_rows) > 50 and len(expected_failures) > 50 and expected_unseen  # both paths ran
