"""The typed decode of `/predict` bodies accepts nothing the general path refuses, with bit-identical rows.

The general path is orjson + `validate_rows` (which words every error); `decode_rows` may only
answer for bodies that path accepts, with the same float32 matrix, and otherwise says None.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from dagster_project.serving.api import parse_json
from dagster_project.serving.limits import RequestError
from dagster_project.serving.rows import validate_rows
from dagster_project.serving.typed_body import decode_rows
from dagster_project.spec import StreamSpec
from tests.conftest import synthetic_spec
from tests.dagster_project.serving.test_rows import MIXED, ONE

FLOATS = synthetic_spec(features=[{"name": "a"}, {"name": "b"}, {"name": "c", "type": "int"}])
SPECS = {"mixed": MIXED, "one": ONE, "floats": FLOATS}
MAX_ROWS = 50

# JSON number texts and near-misses: what a client may send where a number belongs
WEIRD = [
    "01", "1.", ".5", "+1", "1e", "-", "Infinity", "-Infinity", "NaN", "1E+2", "1e-400", "-0", "-0.0", "1e400",
    "1e37", "1.0000001e37", "-1e38", "true", "false", "null", '"1"', "[1]", "{}", "0x10", "1_000", "2.0", "3.5",
    "18446744073709551616", "123456789012345678901234567890", "9007199254740993", "0.1", "4.9e-324",
]  # fmt: skip
numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(lambda x: orjson.dumps(x).decode()),
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    st.sampled_from(["0", "1", "0.0", "1.0"]),
    st.sampled_from(WEIRD),
)


@st.composite
def bodies(draw: Any, spec: StreamSpec) -> bytes:
    """A body as text, mostly well formed, with every way a row can go wrong now and then."""
    rows = []
    for _ in range(draw(st.integers(min_value=0, max_value=12))):
        names = list(spec.feature_names)
        if draw(st.integers(0, 9)) == 0:
            names.remove(draw(st.sampled_from(names)))  # a missing feature
        if draw(st.integers(0, 9)) == 0:
            names.append(draw(st.sampled_from(["extra", names[0] if names else "z"])))  # unknown or duplicate key
        rows.append("{" + ",".join(f'"{n}": {draw(numbers)}' for n in names) + "}")
    text = '{"rows": [' + ", ".join(rows) + "]"
    if draw(st.integers(0, 19)) == 0:
        text += ', "id": 1'  # a top-level field beside the rows
    return (text + "}").encode()


def general(spec: StreamSpec, raw: bytes) -> tuple[str, Any]:
    try:
        return "ok", validate_rows(spec, parse_json(raw), MAX_ROWS)
    except RequestError as exc:
        return "error", (exc.status, exc.body)


def assert_agrees(spec: StreamSpec, raw: bytes) -> np.ndarray | None:
    typed = decode_rows(spec, raw, MAX_ROWS)
    kind, expected = general(spec, raw)
    if typed is not None:
        assert kind == "ok", (raw, expected)
        assert typed.dtype == np.float32 and typed.shape == expected.shape
        np.testing.assert_array_equal(typed, expected, strict=True)
    return typed


@settings(max_examples=400, database=None, deadline=None)
@given(st.sampled_from(sorted(SPECS)).flatmap(lambda name: st.tuples(st.just(name), bodies(SPECS[name]))))
def test_random_bodies_agree_with_the_general_path(case: tuple[str, bytes]) -> None:
    name, raw = case
    assert_agrees(SPECS[name], raw)


def test_plain_bodies_of_any_size_take_the_typed_decode() -> None:
    for n in (1, 8, 9, MAX_ROWS):
        raw = orjson.dumps({"rows": [{"a": 0.25 * i, "b": -i, "c": 3} for i in range(n)]})
        assert assert_agrees(FLOATS, raw) is not None, n


def test_every_refused_body_is_left_to_the_general_path() -> None:
    good = '{"a": 1.5, "b": 2, "c": 3}'
    refused = [
        b'{"rows": []}',  # 422: empty
        ('{"rows": [' + ",".join([good] * (MAX_ROWS + 1)) + "]}").encode(),  # 413: too many rows
        b'{"rows": [{"a": 1.5, "b": 2, "c": 3.5}]}',  # an int feature that is not integral
        b'{"rows": [{"a": 1e38, "b": 2, "c": 3}]}',  # beyond the magnitude limit
        b'{"rows": [{"a": true, "b": 2, "c": 3}]}',  # a boolean where a number belongs
        b'{"rows": [{"a": 1.5, "b": 2}]}',  # missing feature
        b'{"rows": [{"a": 1.5, "b": 2, "c": 3, "d": 4}]}',  # unknown feature
        b'{"rows": [{"a": 1.5, "b": 2, "c": 3}]',  # broken JSON
    ]
    for raw in refused:
        assert decode_rows(FLOATS, raw, MAX_ROWS) is None, raw
        assert general(FLOATS, raw)[0] == "error", raw
