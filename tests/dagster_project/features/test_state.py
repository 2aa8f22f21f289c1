"""Derived features from `FeatureState`: whole-stream reference, batch boundaries, refusals, bounds."""

from __future__ import annotations

import datetime
import re

import numpy as np
import orjson
import pandas as pd
import pytest

from dagster_project.features import EventError, FeatureState, dump_state, load_state
from dagster_project.spec import StreamSpec
from tests.conftest import synthetic_spec
from tests.dagster_project.features.reference import from_scratch, pandas_reference

AGGS = ("count", "sum", "mean", "min", "max", "std")


def rolling_spec(lateness: str = "0s", max_keys: int = 100_000, **overrides) -> StreamSpec:
    derived = [{"name": f"x0_{a}_30s", "of": "x0", "by": "device", "agg": a, "window": "30s"} for a in AGGS]
    derived += [{"name": "x1_mean_5s", "of": "x1", "by": "device", "agg": "mean", "window": "5s", "default": -1.0}]
    derived += [{"name": "site_count_10s", "by": "site", "agg": "count", "window": "10s"}]
    raw = {"event_time": {"field": "ts", "lateness": lateness}, "feature_state": {"max_keys": max_keys}}
    return synthetic_spec(derived=derived, **(raw | overrides))


def stream(rows: int, seed: int = 3, keys: int = 7, gap: float = 0.7) -> pd.DataFrame:
    """Events in time order on two partitions, with ties (times on a 0.1 s grid)."""
    rng = np.random.default_rng(seed)
    ts = np.round(1_700_000_000 + np.cumsum(rng.exponential(gap, rows)), 1)
    frame = pd.DataFrame({f"x{i}": rng.normal(size=rows).round(4) for i in range(5)})
    frame["ts"] = ts
    frame["device"] = [f"d{k}" for k in rng.integers(keys, size=rows)]
    frame["site"] = rng.integers(3, size=rows)  # an integer key
    frame["partition"] = rng.integers(2, size=rows)
    return frame


def event(row: pd.Series) -> dict:
    return {
        "id": "e",
        "ts": float(row["ts"]),
        "device": row["device"],
        "site": int(row["site"]),
        "features": {f"x{i}": float(row[f"x{i}"]) for i in range(5)},
    }


def observe_all(state: FeatureState, frame: pd.DataFrame) -> np.ndarray:
    rows = [
        state.observe(int(r["partition"]), event(r), r[[f"x{i}" for i in range(5)]].to_numpy(float))
        for _, r in frame.iterrows()
    ]
    return np.asarray(rows)


def test_rolling_features_equal_pandas_over_the_whole_stream():
    spec = rolling_spec()
    frame = stream(1500)
    got = observe_all(FeatureState(spec), frame)
    assert np.abs(got - pandas_reference(spec, frame)).max() < 1e-9
    assert got[:, 0].max() > 5  # windows do hold several earlier events


@pytest.mark.parametrize("cuts", [[1], [100, 700], [300, 301, 302, 1499]])
def test_batches_resumed_from_the_saved_state_equal_one_pass(cuts):
    """The checkpoint path: each batch starts from the previous batch's saved bytes."""
    spec = rolling_spec()
    frame = stream(1500, seed=4)
    whole = FeatureState(spec)
    expected = observe_all(whole, frame)
    saved, parts = dump_state(FeatureState(spec)), []
    for lo, hi in zip([0, *cuts], [*cuts, len(frame)], strict=True):
        state = load_state(spec, saved)
        parts.append(observe_all(state, frame.iloc[lo:hi]))
        saved = dump_state(state)
    assert np.array_equal(np.concatenate(parts), expected)  # bit for bit
    assert saved == dump_state(whole)  # and the same state, however the stream was split


def test_values_do_not_depend_on_how_partitions_interleave():
    spec = rolling_spec()
    frame = stream(800, seed=5)
    in_order = observe_all(FeatureState(spec), frame)
    by_partition = frame.sort_values("partition", kind="stable")
    regrouped = observe_all(FeatureState(spec), by_partition)
    assert np.array_equal(regrouped, in_order[by_partition.index.to_numpy()])


def test_an_empty_window_gives_the_documented_defaults():
    spec = rolling_spec()
    values = FeatureState(spec).observe(0, event(stream(1).iloc[0]), [0.5] * 5)
    names = [d.name for d in spec.derived]
    assert dict(zip(names, values, strict=True)) == {
        **{f"x0_{a}_30s": 0.0 for a in AGGS},
        "x1_mean_5s": -1.0,
        "site_count_10s": 0.0,
    }


DEEP = orjson.loads("[" * 1000 + "]" * 1000)


def test_events_without_key_or_time_or_too_late_are_refused_and_leave_the_state_alone():
    spec = rolling_spec(lateness="5s")
    state = FeatureState(spec)
    base = {"id": "e", "device": "d1", "site": 1, "features": {}}
    state.observe(0, {**base, "ts": 100.0}, [1.0] * 5)
    before = dump_state(state)
    cases = {
        "no key: the event has no 'device'": {**base, "device": None, "ts": 101.0},
        "key 'site' must be a non-empty string or an integer": {**base, "site": 1.5, "ts": 101.0},
        "no event time: 'ts' is None; it must be a number (epoch seconds)": {**base, "ts": None},
        "late event: event time 94.000 is 6.000 s behind the newest on partition 0": {**base, "ts": 94.0},
        # Far future: accepted, it would make every later event of the partition late.
        "is not a date between the years 1 and 9999 in epoch s": {**base, "ts": 1e300},
        "'ts' = 1767225600000 is not a date": {**base, "ts": 1_767_225_600_000},  # milliseconds sent as seconds
        # Nested 1,000 deep (valid JSON): quoted short, not a RecursionError that halts the stream.
        "key 'device' must be a non-empty string or an integer, got list [[[[...]]]]": {
            **base,
            "device": DEEP,
            "ts": 1.0,
        },
        # An integer beyond 64 bits, as orjson reads it: not "got float"
        "got a number beyond 64 bits (1.23457e+29; send it as a string)": {
            **base,
            "site": 1.2345678901234568e29,
            "ts": 1.0,
        },
        "event time 'ts' must be a number (epoch seconds), got list": {**base, "ts": DEEP},
    }
    for reason, bad in cases.items():
        with pytest.raises(EventError, match=re.escape(reason)):
            state.observe(0, bad, [1.0] * 5)
    assert dump_state(state) == before
    assert state.observe(0, {**base, "ts": 95.0}, [3.0] * 5)[0] == 0.0  # within lateness: accepted (100 is later)
    assert state.observe(0, {**base, "ts": 101.0}, [3.0] * 5)[:2] == [2.0, 4.0]  # both earlier events count
    assert state.observe(1, {**base, "ts": 1.0}, [3.0] * 5)[0] == 0.0  # another partition, its own watermark


def test_a_missing_time_names_what_its_field_takes_iso_8601_only_outside_ts():
    """`ts` is numeric by the event contract: offering ISO-8601 for it led to a refusal of an ISO `ts`."""
    base = {"id": "e", "device": "d1", "site": 1, "features": {}}
    in_ms = FeatureState(rolling_spec(event_time={"field": "ts", "unit": "ms"}))
    with pytest.raises(EventError) as ts_error:
        in_ms.observe(0, base, [1.0] * 5)
    assert str(ts_error.value) == "no event time: 'ts' is None; it must be a number (epoch milliseconds)"
    other = FeatureState(rolling_spec(event_time={"field": "at"}))
    with pytest.raises(EventError) as at_error:
        other.observe(0, base, [1.0] * 5)
    assert str(at_error.value) == (
        "no event time: 'at' is None; it must be a number (epoch seconds) or an ISO-8601 string with a UTC offset"
    )
    assert other.observe(0, {**base, "at": "2026-01-01T00:00:00Z"}, [1.0] * 5)[0] == 0.0


def test_out_of_order_events_within_lateness_see_only_earlier_times():
    spec = rolling_spec(lateness="10s")
    state = FeatureState(spec)
    ev = {"id": "e", "device": "d", "site": 0, "features": {}}
    state.observe(0, {**ev, "ts": 20.0}, [2.0] * 5)
    state.observe(0, {**ev, "ts": 10.0}, [1.0] * 5)  # late but allowed
    count, total = state.observe(0, {**ev, "ts": 15.0}, [0.0] * 5)[:2]
    assert (count, total) == (1.0, 1.0)  # the event at 20 is in its future, not its window


def test_a_shuffled_stream_within_lateness_gives_the_brute_force_values_bit_for_bit():
    """Out-of-order events rebuild the running windows; every value is still the aggregate of
    exactly the earlier-accepted events of the key in [t - window, t)."""
    spec = rolling_spec(lateness="8s")
    frame = stream(1200, seed=11, keys=4, gap=0.4)
    jitter = np.random.default_rng(12).uniform(0, 6, size=len(frame))
    frame = frame.iloc[np.argsort(frame["ts"].to_numpy() + jitter, kind="stable")]  # late by up to 6 s
    got = observe_all(FeatureState(spec), frame)
    accepted: list[dict] = []
    for r, row in enumerate(frame.to_dict("records")):
        want = []
        for d in spec.derived:
            earlier = [
                e
                for e in accepted
                if e["partition"] == row["partition"]
                and e[d.by] == row[d.by]
                and row["ts"] - d.window <= e["ts"] < row["ts"]
            ]
            earlier.sort(key=lambda e: e["ts"])  # stable: equal times in arrival order, as the state keeps them
            want.append(from_scratch(d, [float(e[d.of]) for e in earlier] if d.of else [0.0] * len(earlier)))
        assert got[r].tolist() == want, r
        accepted.append(row)
    assert (np.diff(frame["ts"].to_numpy()) < 0).sum() > 100  # many events did arrive out of order


def test_iso_and_millisecond_times_agree_with_seconds():
    spec_ms = rolling_spec(event_time={"field": "when", "unit": "ms"})
    spec_iso = rolling_spec(event_time={"field": "when"})
    ev = {"id": "e", "device": "d", "site": 0, "features": {}}
    by_ms, by_iso = FeatureState(spec_ms), FeatureState(spec_iso)
    for seconds, value in ((0.0, 1.0), (10.5, 2.0), (29.0, 4.0), (40.0, 8.0)):
        iso = pd.Timestamp(1_700_000_000 + seconds, unit="s", tz="UTC").isoformat()
        a = by_ms.observe(0, {**ev, "when": int((1_700_000_000 + seconds) * 1000)}, [value] * 5)
        b = by_iso.observe(0, {**ev, "when": iso}, [value] * 5)
        assert a == b
    assert a[:2] == [2.0, 6.0]  # at 40 s: the events at 10.5 and 29 in [10, 40)
    with pytest.raises(EventError, match="has no UTC offset"):
        by_iso.observe(0, {**ev, "when": "2026-01-01T00:00:00"}, [0.0] * 5)


@pytest.mark.parametrize("written", ["ms", "iso", "seconds"])
def test_an_event_exactly_one_window_earlier_is_in_the_window_however_its_time_is_written(written: str) -> None:
    """[t - window, t) holds an event exactly `window` earlier. In float seconds `t - window` rounded
    past it: with epoch ms and a 100 ms window 4 in 10 such edges were dropped (a count of 0 for 1).
    Times on a millisecond grid with many exact edges, against integer arithmetic."""
    windows_ms = {"100ms": 100, "300ms": 300, "1.1s": 1100, "60s": 60_000}
    unit = {"ms": "ms", "iso": "s", "seconds": "s"}[written]
    derived = [{"name": f"n_{w.replace('.', '_')}", "by": "device", "agg": "count", "window": w} for w in windows_ms]
    derived += [{"name": "x0_sum_100ms", "of": "x0", "by": "device", "agg": "sum", "window": "100ms"}]
    spec = synthetic_spec(derived=derived, event_time={"field": "when", "unit": unit, "max_ahead": None})
    rng = np.random.default_rng(5)
    times = 1_767_225_600_007 + np.cumsum(rng.choice([0, 1, 50, 100, 100, 200, 300, 1100], size=600))
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    state = FeatureState(spec)
    for i, ms in enumerate(times.tolist()):
        when = {
            "ms": ms,
            "iso": (epoch + datetime.timedelta(milliseconds=ms)).isoformat(),
            "seconds": ms / 1000,  # what a producer writing seconds with decimals sends
        }[written]
        got = state.observe(0, {"id": str(i), "when": when, "device": "d", "features": {}}, [float(i % 7)] * 5)

        earlier = times[:i]
        counts = [float(np.count_nonzero((earlier >= ms - w) & (earlier < ms))) for w in windows_ms.values()]
        total = float(sum(j % 7 for j in np.flatnonzero((earlier >= ms - 100) & (earlier < ms))))
        assert got == [*counts, total], (i, ms, got, counts, total)


def test_an_event_exactly_the_lateness_behind_is_accepted_in_milliseconds_too() -> None:
    derived = [{"name": "n_1s", "by": "device", "agg": "count", "window": "1s"}]
    spec = synthetic_spec(derived=derived, event_time={"field": "when", "unit": "ms", "lateness": "300ms"})
    state = FeatureState(spec)
    newest = 1_767_225_600_107
    state.observe(0, {"id": "a", "when": newest, "device": "d", "features": {}}, [0.0] * 5)

    assert state.observe(0, {"id": "b", "when": newest - 300, "device": "d", "features": {}}, [0.0] * 5) == [0.0]
    with pytest.raises(EventError, match="late event"):
        state.observe(0, {"id": "c", "when": newest - 301, "device": "d", "features": {}}, [0.0] * 5)


def test_idle_keys_expire_without_changing_any_value():
    spec = rolling_spec(lateness="2s")
    state = FeatureState(spec)
    frame = stream(600, seed=6, keys=40, gap=2.0)
    got = observe_all(state, frame)
    assert np.abs(got - pandas_reference(spec, frame)).max() < 1e-9
    state.settle()
    for part in state.partitions.values():
        for keys in part.tables.values():  # what is left can still be in a future event's window
            assert all(h.times[-1] >= part.newest - 2 - 30 for h in keys.values())
    assert state.counters["expired_keys"] > 0
    assert state.counters["evicted_keys"] == 0


def test_the_key_cap_evicts_the_least_recently_seen_key_and_counts_it():
    spec = rolling_spec(max_keys=2)
    state = FeatureState(spec)
    ev = {"id": "e", "site": 0, "features": {}}
    for t, device in enumerate(["a", "b", "a", "c"]):  # c arrives at the cap: b is the least recently seen
        state.observe(0, {**ev, "device": device, "ts": float(t)}, [1.0] * 5)
    assert list(state.partitions[0].tables["device"]) == ["a", "c"]
    assert state.counters["evicted_keys"] == 1
    assert state.observe(0, {**ev, "device": "b", "ts": 4.0}, [1.0] * 5)[0] == 0.0  # b starts again: empty window
    assert state.counters["evicted_keys"] == 2
    assert state.keys() <= 2 * 1 + 1  # at most max_keys per partition and key field (site has one key)


def test_peek_is_observe_without_the_change():
    spec = rolling_spec()
    state = FeatureState(spec)
    frame = stream(200, seed=8)
    observe_all(state, frame.iloc[:199])
    last = frame.iloc[199]
    before = dump_state(state)
    peeked = state.peek(event(last))
    assert dump_state(state) == before
    assert peeked == state.observe(
        int(last["partition"]), event(last), last[[f"x{i}" for i in range(5)]].to_numpy(float)
    )
    never = state.peek({**event(last), "device": "never-seen", "site": 99})
    assert never == FeatureState(spec).peek(event(last) | {"device": "never-seen", "site": 99})
    assert never[0] == 0.0


def test_a_state_saved_for_other_aggregations_is_refused_with_the_fix():
    saved = dump_state(FeatureState(rolling_spec()))
    other = synthetic_spec(
        event_time={"field": "ts"}, derived=[{"name": "m", "of": "x3", "by": "device", "agg": "mean", "window": 10}]
    )
    with pytest.raises(ValueError, match="restore the derived features it was learned with"):
        load_state(other, saved)


def test_an_event_too_far_ahead_of_its_kafka_timestamp_is_refused_and_leaves_the_state_alone():
    """One event from a clock far ahead would hold the watermark there: every later event late."""
    state = FeatureState(rolling_spec(lateness="5s"))
    base = {"id": "e", "device": "d1", "site": 1, "features": {}}
    state.observe(0, {**base, "ts": 100.0}, [1.0] * 5, produced=100.0)
    before = dump_state(state)
    with pytest.raises(EventError, match=re.escape("event time 4000.000 is 3900 s ahead of its Kafka timestamp")):
        state.observe(0, {**base, "ts": 4000.0}, [1.0] * 5, produced=100.0)
    assert dump_state(state) == before
    assert state.observe(0, {**base, "ts": 110.0}, [1.0] * 5, produced=110.0 - 290)[0] == 1.0  # within 5 minutes
    assert state.observe(0, {**base, "ts": 115.0}, [1.0] * 5, produced=None)[0] == 2.0  # no timestamp: not checked
    unbounded = FeatureState(
        rolling_spec(lateness="5s", event_time={"field": "ts", "lateness": "5s", "max_ahead": None})
    )
    assert unbounded.observe(0, {**base, "ts": 9e9}, [1.0] * 5, produced=100.0)[0] == 0.0


def test_a_clock_twenty_minutes_ahead_is_refused_instead_of_making_every_other_event_late():
    """With Kafka's own one-hour bound, one event 59 minutes ahead (accepted) made every later event of
    its partition late for 59 minutes: half of a probe's good events went to the DLQ, all keys."""
    state = FeatureState(rolling_spec(lateness="5s"))
    now = 1_767_225_600.0
    skewed = {"id": "e", "device": "fast-clock", "site": 1, "features": {}, "ts": now + 1200}
    with pytest.raises(
        EventError, match=r"1200 s ahead of its Kafka timestamp .* more than event_time.max_ahead 300 s"
    ) as refused:
        state.observe(0, skewed, [1.0] * 5, produced=now)
    # An upgraded stream never chose the new default: the refusal says it is one, and the setting.
    assert "300 s (the default; it was 1 h before 2026-12-05): " in str(refused.value)
    assert str(refused.value).endswith("or set event_time.max_ahead to how far clocks run ahead")
    chosen = FeatureState(rolling_spec(event_time={"field": "ts", "lateness": "5s", "max_ahead": "5m"}))
    with pytest.raises(EventError, match=r"more than event_time.max_ahead 300 s: check the producer's clock"):
        chosen.observe(0, skewed, [1.0] * 5, produced=now)
    on_time = {"id": "e", "device": "d1", "site": 1, "features": {}, "ts": now + 1}
    assert state.observe(0, on_time, [1.0] * 5, produced=now + 1)[0] == 0.0  # not late: its empty window


def test_a_request_behind_the_lateness_is_refused_because_its_windows_may_be_cut_short():
    """History is dropped below the watermark minus the longest window: a request further behind than the
    lateness may miss events its windows need (a backfill got empty-window values, with 200)."""
    state = FeatureState(rolling_spec(lateness="0s"))
    frame = stream(300, seed=4)
    observe_all(state, frame)
    newest = max(p.newest for p in state.partitions.values())
    known = event(frame.iloc[-1])
    with pytest.raises(EventError, match=r"late request: .* raise event_time.lateness to how far behind"):
        state.peek({**known, "ts": newest - 1.0})
    with pytest.raises(EventError, match="late request"):  # a key never seen: judged against every partition
        state.peek({**known, "device": "never-seen", "ts": newest - 1.0})
    assert len(state.peek({**known, "ts": newest})) == len(rolling_spec().derived)


def test_a_request_further_ahead_of_its_arrival_than_max_ahead_is_refused_as_the_stream_refuses_it():
    """`peek` had no Kafka timestamp to judge by, so `/predict` answered a time three years ahead."""
    state = FeatureState(rolling_spec(lateness="5s"))
    now = 1_767_225_600.0
    request = {"id": "e", "device": "d1", "site": 1, "features": {}, "ts": now + 3 * 365 * 86400.0}
    with pytest.raises(EventError, match=r"ahead of the request's arrival .* more than event_time.max_ahead 300 s"):
        state.peek(request, now=now)
    assert state.peek({**request, "ts": now + 60}, now=now)[0] == 0.0  # within max_ahead: its empty window
