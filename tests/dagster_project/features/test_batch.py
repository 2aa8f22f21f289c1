"""Derived columns for a parsed batch: rows whose window adds up past what a float32 model takes are refused."""

from __future__ import annotations

import numpy as np
import orjson

from dagster_project.features import FeatureState
from dagster_project.features.batch import beyond_limit, derive
from dagster_project.ingest.events import EventParser, make_event
from tests.conftest import synthetic_spec


def _spec():
    derived = [{"name": "x0_sum_60s", "of": "x0", "by": "device", "agg": "sum", "window": "60s"}]
    return synthetic_spec(derived=derived, event_time={"field": "ts"})


def test_a_window_that_adds_up_past_the_magnitude_limit_refuses_its_rows_and_keeps_the_event() -> None:
    """Each value is within the limit, their sum is not: float32 made it inf, so the trainer's parity
    check failed on every retry (the stream halted) while the scorer scored inf."""
    spec = _spec()
    whale = {f"x{i}": 0.0 for i in range(5)} | {"x0": 9.9e36}
    values = [make_event(f"w{i}", whale, 1, 1_700_000_000.0 + i, device="whale") for i in range(3)]
    values.append(make_event("small", whale | {"x0": 1.0}, 0, 1_700_000_003.0, device="other"))
    state = FeatureState(spec)

    batch = derive(state, [0] * len(values), values, EventParser(spec).parse_many(values))

    assert batch.ids == ["w0", "w1", "small"]  # w1's window holds one whale, w2's two: 1.98e37
    ((position, reason),) = batch.failures
    assert position == 2 and reason.startswith("derived feature 'x0_sum_60s' = 1.98e+37 is beyond the magnitude limit")
    assert "(sum of x0 in its window)" in reason
    assert np.abs(batch.X).max() <= 1e37
    later = make_event("w3", whale, 1, 1_700_000_004.0, device="whale")  # w2 entered the state: it happened
    assert state.peek(orjson.loads(later))[0] == 9.9e36 * 3
    assert beyond_limit(spec, [1e37]) is None and beyond_limit(spec, [-1.1e37]) is not None
