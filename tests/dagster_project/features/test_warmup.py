"""Which derived features' windows were still filling in a batch (`features.warmup`)."""

from __future__ import annotations

import orjson

from dagster_project.features import FeatureState, dump_state, load_state
from dagster_project.features.warmup import windows_filling
from tests.dagster_project.features.test_state import rolling_spec

T0 = 1_700_000_000.0


def observe(state: FeatureState, partition: int, times: list[float]) -> dict[int, list[float]]:
    """Feed a batch of events at `times` (seconds after T0); returns its accepted times per partition."""
    for t in times:
        state.observe(partition, {"ts": T0 + t, "device": "d1", "site": 1}, [0.5] * 5)
    return {partition: [T0 + t for t in times]}


def test_a_window_fills_a_window_after_the_partition_s_first_event() -> None:
    """The spec's windows are 30 s, 5 s and 10 s: a batch whose events are 9 s and more into the
    partition has filled the 5 s window only; one 30 s in, all of them."""
    state = FeatureState(rolling_spec())
    first = observe(state, 0, [0.0, 4.0, 8.0])
    assert set(windows_filling(state, first)) == {f.name for f in state.spec.derived}  # the first batch
    thirty = {f"x0_{a}_30s" for a in ("count", "sum", "mean", "min", "max", "std")}
    assert set(windows_filling(state, observe(state, 0, [9.0, 12.0]))) == {*thirty, "site_count_10s"}
    assert set(windows_filling(state, observe(state, 0, [29.0]))) == thirty
    assert windows_filling(state, observe(state, 0, [30.0, 40.0])) == ()
    assert windows_filling(state, {}) == ()  # a batch without an accepted event (all dead letters)


def test_a_first_batch_that_spans_many_windows_is_not_filling() -> None:
    """A backfill: rows within a window of the first event are few, and the profile stands. The 30 s
    windows hold 15 of 250 rows (6 %, above `FILLING_SHARE`), the 10 s one 5 (2 %)."""
    thirty = {f"x0_{a}_30s" for a in ("count", "sum", "mean", "min", "max", "std")}
    state = FeatureState(rolling_spec())
    assert set(windows_filling(state, observe(state, 0, [float(t) for t in range(0, 500, 2)]))) == thirty
    state = FeatureState(rolling_spec())
    assert windows_filling(state, observe(state, 0, [float(t) for t in range(0, 1250, 2)])) == ()  # 15 of 625


def test_a_partition_that_starts_later_fills_on_its_own_clock() -> None:
    state = FeatureState(rolling_spec())
    observe(state, 0, [0.0, 100.0])
    assert windows_filling(state, observe(state, 0, [101.0])) == ()
    assert "x1_mean_5s" in windows_filling(state, observe(state, 1, [102.0]))  # partition 1's first events
    assert windows_filling(state, observe(state, 1, [200.0])) == ()  # long after its first event


def test_a_state_saved_before_starts_were_kept_counts_as_filled() -> None:
    """Saved by the previous release (no `first`): it had learned batches, so its windows are taken
    as filled rather than begun anew at the upgrade."""
    state = FeatureState(rolling_spec())
    observe(state, 0, [0.0, 1.0])
    raw = orjson.loads(dump_state(state))
    del raw["partitions"]["0"]["first"]
    loaded = load_state(state.spec, orjson.dumps(raw))
    assert windows_filling(loaded, observe(loaded, 0, [2.0])) == ()
    assert load_state(state.spec, dump_state(state)).partitions[0].first == T0  # kept across versions
