"""Batch planning over plain partition states: triggers, exact ranges, the row cap, gaps, run keys."""

from __future__ import annotations

import random

import pytest

from dagster_project.kafka.offsets import (
    CUT_REASON_PREFIX,
    BatchPlan,
    Gap,
    NoBatch,
    PartitionState,
    decode_ranges,
    encode_ranges,
    find_gaps,
    plan_batch,
    ranges_key,
)

NOW_MS = 1_700_000_000_000
ROWS, MAX_ROWS, MAX_WAIT_S = 100, 1000, 30.0


def state(partition: int, next_offset: int, high_water: int, log_start: int = 0, age_s: float | None = None):
    ts = None if age_s is None else NOW_MS - int(age_s * 1000)
    return PartitionState(partition, next_offset, log_start, high_water, ts)


def plan(states: list[PartitionState], rows: int = ROWS, max_rows: int = MAX_ROWS, max_wait_s: float = MAX_WAIT_S):
    return plan_batch(states, rows, max_rows, max_wait_s, NOW_MS)


@pytest.mark.parametrize(
    "states",
    [
        pytest.param([], id="no-partitions"),
        pytest.param([state(0, 0, 0), state(1, 0, 0)], id="empty-topic"),
        pytest.param([state(0, 50, 50, age_s=None), state(1, 7, 7)], id="caught-up"),
        pytest.param([state(0, 60, 50)], id="ahead-of-broker-is-not-lag"),
    ],
)
def test_no_lag_is_no_batch(states: list[PartitionState]) -> None:
    result = plan(states)
    assert isinstance(result, NoBatch)
    assert "caught up" in result.reason


@pytest.mark.parametrize(
    ("states", "lag", "age_text"),
    [
        ([state(0, 0, 10, age_s=1.0), state(1, 0, 5, age_s=2.0)], 15, "2.0s"),
        ([state(0, 40, 139, age_s=29.9)], 99, "29.9s"),
    ],
)
def test_small_young_lag_waits_and_says_why(states: list[PartitionState], lag: int, age_text: str) -> None:
    result = plan(states)
    assert isinstance(result, NoBatch)
    assert f"lag {lag}" in result.reason
    assert f"batch.rows {ROWS}" in result.reason
    assert age_text in result.reason
    assert f"{MAX_WAIT_S:g}s" in result.reason


def test_an_unknown_age_waits_and_says_it_is_unknown_not_zero() -> None:
    """No record polled for the oldest waiting row: the rows wait (the lag trigger still counts them), and
    the reason says the age is unknown rather than "0.0s old", which read as a fresh row."""
    result = plan([state(0, 0, 3)])
    assert isinstance(result, NoBatch)
    assert "lag 3" in result.reason and "oldest row's age unknown" in result.reason and "0.0s" not in result.reason


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        pytest.param([state(0, 0, 100)], {0: (0, 100)}, id="exactly-rows"),
        pytest.param([state(0, 0, 60), state(1, 0, 40)], {0: (0, 60), 1: (0, 40)}, id="split-over-two"),
        pytest.param(
            [state(0, 1000, 1070), state(1, 20, 55), state(2, 9, 9)],
            {0: (1000, 1070), 1: (20, 55)},
            id="resumes-at-next-offset",
        ),
        pytest.param([state(0, 0, 0), state(1, 0, 250)], {1: (0, 250)}, id="idle-partition-left-out"),
        pytest.param(
            [state(0, 5, 900, log_start=5), state(1, 0, 0), state(2, 3, 3)],
            {0: (5, 900)},
            id="only-the-partition-with-data",
        ),
    ],
)
def test_lag_at_least_rows_covers_exactly_next_to_high_water(states, expected) -> None:
    result = plan(states)
    assert isinstance(result, BatchPlan)
    assert result.ranges == expected
    assert result.rows == sum(s.lag for s in states)
    assert f"batch.rows {ROWS}" in result.reason
    assert "capped" not in result.reason


@pytest.mark.parametrize(
    ("states", "triggers"),
    [
        ([state(0, 0, 1, age_s=30.0)], True),
        ([state(0, 0, 1, age_s=3600.0), state(1, 0, 2, age_s=1.0)], True),  # the oldest one counts
        ([state(0, 0, 1, age_s=29.0)], False),
        # an old timestamp on a partition with no lag is not a waiting row
        ([state(0, 5, 5, age_s=3600.0), state(1, 0, 2, age_s=1.0)], False),
    ],
)
def test_max_wait_triggers_a_small_batch(states: list[PartitionState], triggers: bool) -> None:
    result = plan(states)
    if not triggers:
        assert isinstance(result, NoBatch)
        return
    assert isinstance(result, BatchPlan)
    assert result.ranges == {s.partition: (s.next_offset, s.high_water) for s in states if s.lag}
    assert "oldest waiting row" in result.reason
    assert f"batch.max_wait_s {MAX_WAIT_S:g}" in result.reason


@pytest.mark.parametrize(
    ("states", "reason"),
    [
        ([state(0, 10, 70, age_s=1.0), state(1, 5, 30, age_s=2.0)], CUT_REASON_PREFIX + "flat, cut"),
        ([state(0, 0, 150, age_s=1.0)], f"lag 150 >= batch.rows {ROWS}"),  # lag fired: it names the batch
        ([state(0, 0, 40, age_s=60.0)], "oldest waiting row is 60.0s old"),  # so did age
    ],
)
def test_a_cut_plans_what_waits_now_only_when_neither_trigger_fired(states, reason: str) -> None:
    result = plan_batch(states, ROWS, MAX_ROWS, MAX_WAIT_S, NOW_MS, cut="flat, cut")

    assert isinstance(result, BatchPlan) and result.reason.startswith(reason)
    assert result.ranges == {s.partition: (s.next_offset, s.high_water) for s in states if s.lag}
    if reason.startswith(CUT_REASON_PREFIX):
        assert isinstance(plan(states), NoBatch)  # without the cut these rows would wait


def check_cap(states: list[PartitionState], cap: int) -> BatchPlan:
    """The invariants of a capped batch; returns the plan for case-specific checks."""
    result = plan(states, rows=1, max_rows=cap)
    assert isinstance(result, BatchPlan)
    lag = sum(s.lag for s in states)
    by_partition = {s.partition: s for s in states}
    assert result.rows == min(cap, lag)
    for p, (start, end) in result.ranges.items():
        s = by_partition[p]
        assert start == s.next_offset
        assert start < end <= s.high_water, f"partition {p}: range {start}..{end} outside its lag"
    waiting = [s for s in states if s.lag]
    if cap >= len(waiting):
        assert {s.partition for s in waiting} == set(result.ranges), "a waiting partition was starved"
    if lag > cap:
        assert f"capped at batch.max_rows {cap} ({lag - cap} rows left" in result.reason
    return result


@pytest.mark.parametrize(
    ("lags", "cap", "expected_rows"),
    [
        pytest.param([500, 500], 100, [50, 50], id="even"),
        pytest.param([900, 100], 100, [90, 10], id="proportional"),
        pytest.param([10_000, 1], 100, [99, 1], id="tiny-partition-still-gets-one"),
        pytest.param([10_000, 1, 1], 100, [98, 1, 1], id="two-tiny-partitions"),
        pytest.param([7, 7, 7], 10, [4, 3, 3], id="integer-division-leftover"),
        pytest.param([3, 0, 300], 30, [1, 0, 29], id="idle-partition-takes-nothing"),
        pytest.param([5, 5], 10, [5, 5], id="cap-equals-lag"),
        pytest.param([1, 1, 1], 3, [1, 1, 1], id="cap-equals-partitions"),
    ],
)
def test_row_cap_is_shared_between_partitions(lags: list[int], cap: int, expected_rows: list[int]) -> None:
    states = [state(p, 10 * p, 10 * p + lag) for p, lag in enumerate(lags)]
    result = check_cap(states, cap)
    got = [result.ranges.get(p, (0, 0))[1] - result.ranges.get(p, (0, 0))[0] for p in range(len(lags))]
    assert got == expected_rows


def test_row_cap_invariants_on_random_states() -> None:
    rng = random.Random(1234)
    for _ in range(2000):
        states = []
        for p in range(rng.randint(1, 6)):
            start = rng.randint(0, 10**6)
            states.append(state(p, start, start + rng.choice([0, 1, 2, 5, 17, 1000, rng.randint(0, 10**5)])))
        lag = sum(s.lag for s in states)
        waiting = [s for s in states if s.lag]
        if not waiting:
            continue
        cap = rng.randint(len(waiting), max(len(waiting), lag + 10))
        result = check_cap(states, cap)
        budget = min(cap, lag)
        for s in waiting:  # proportional within the rounding slack of one row per waiting partition
            start, end = result.ranges[s.partition]
            assert abs((end - start) - budget * s.lag / lag) <= len(waiting)


@pytest.mark.parametrize(
    ("lags", "cap"),
    [
        pytest.param([10, 10, 10], 2, id="one-partition-more-than-cap"),
        pytest.param([10, 10, 10, 10, 10], 2, id="three-partitions-more-than-cap"),
        pytest.param([1, 1, 1, 1], 1, id="cap-of-one"),
    ],
)
def test_cap_smaller_than_waiting_partitions(lags: list[int], cap: int) -> None:
    """'At least one row each' cannot hold: the cap must win, and every range must be a real range."""
    states = [state(p, 100, 100 + lag) for p, lag in enumerate(lags)]
    result = plan(states, rows=1, max_rows=cap)
    assert isinstance(result, BatchPlan)
    assert result.rows == cap
    assert all(100 < end <= 100 + lags[p] for p, (_, end) in result.ranges.items()), result.ranges
    assert len(result.ranges) == cap


@pytest.mark.parametrize(
    ("s", "expected_text"),
    [
        (
            state(0, next_offset=500, high_water=120),
            "partition 0: learned up to offset 500 but the broker ends at 120 (topic recreated",
        ),
        (
            state(3, next_offset=10, high_water=900, log_start=250),
            "partition 3: offsets 10..249 were deleted before they were learned (retention)",
        ),
        (
            state(1, next_offset=1, high_water=0, log_start=0),
            "partition 1: learned up to offset 1 but the broker ends at 0",
        ),
    ],
)
def test_find_gaps_reports_lost_offsets(s: PartitionState, expected_text: str) -> None:
    healthy = [state(7, 5, 10, log_start=5), state(8, 10, 10, log_start=10), state(9, 0, 0)]
    gaps = find_gaps([*healthy, s])
    assert gaps == [Gap(s.partition, s.next_offset, s.log_start, s.high_water)]
    assert expected_text in gaps[0].describe()


def test_find_gaps_none_when_next_offset_within_log() -> None:
    assert find_gaps([state(0, 5, 10, log_start=5), state(1, 10, 10, log_start=3), state(2, 0, 0)]) == []


def test_ranges_key_is_deterministic_and_order_independent() -> None:
    a = {0: (10, 20), 1: (5, 9), 12: (0, 3)}
    b = {12: (0, 3), 1: (5, 9), 0: (10, 20)}
    assert ranges_key("clicks", "v3", a) == ranges_key("clicks", "v3", b) == "clicks@v3:p0:10-20,p1:5-9,p12:0-3"
    assert ranges_key("clicks", None, a) == ranges_key("clicks", None, b)
    assert ranges_key("clicks", None, a).startswith("clicks@v0:")


@pytest.mark.parametrize(
    ("other_stream", "other_head", "other_ranges"),
    [
        ("clicks", "v4", {0: (10, 20)}),  # same batch, newer head
        ("clicks", None, {0: (10, 20)}),
        ("clicks", "v3", {0: (10, 21)}),
        ("clicks", "v3", {1: (10, 20)}),
        ("views", "v3", {0: (10, 20)}),
    ],
)
def test_ranges_key_differs_for_a_different_batch_or_head(other_stream, other_head, other_ranges) -> None:
    assert ranges_key("clicks", "v3", {0: (10, 20)}) != ranges_key(other_stream, other_head, other_ranges)


@pytest.mark.parametrize(
    "ranges",
    [{}, {0: (0, 1)}, {3: (5, 9), 0: (10**12, 10**12 + 7), 1: (0, 0)}],
)
def test_encode_decode_round_trip(ranges: dict[int, tuple[int, int]]) -> None:
    text = encode_ranges(ranges)
    assert decode_ranges(text) == ranges
    assert encode_ranges(dict(reversed(list(ranges.items())))) == text


def test_the_default_cap_takes_a_sustained_backlog_in_one_batch():
    """Runs of a stream never overlap and each costs a fixed ~10 s (30 s on a loaded machine), so the
    default cap must hold tens of seconds of a 20 k events/s stream, or the lag grows without bound
    whatever the data (100,000 did not: benchmarks/README.md, "Sustained load")."""
    from dagster_project.spec import BatchSpec

    batch = BatchSpec()
    backlog = 20_000 * 30  # 30 s of 20 k events/s over two partitions
    result = plan([state(0, 0, backlog // 2), state(1, 0, backlog // 2)], batch.rows, batch.max_rows, batch.max_wait_s)
    assert isinstance(result, BatchPlan) and result.rows == backlog and "capped" not in result.reason
