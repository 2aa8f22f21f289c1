"""The join rules in memory: pairing in either order, window, cap, eviction, duplicates, checkpoints."""

from __future__ import annotations

import orjson

from dagster_project.labels import JoinState


def test_join_state_rules() -> None:
    state = JoinState("classification", window_s=10, max_pending=4)
    assert state.add_label("a", 1.0, ts=1000) == "pending"  # label first
    assert state.add_prediction("a", "v1", 1, ts=5000) == "joined"  # 1.0 == 1
    assert state.add_prediction("a", "v1", 1, ts=5100) == "duplicate"  # repeated after the join
    assert state.add_label("a", 1, ts=5200) == "duplicate"
    assert state.add_prediction("b", "v2", 0, ts=6000) == "pending"
    assert state.add_label("b", 1, ts=6500) == "joined"  # wrong
    # Too far apart: the old prediction is evicted, the label waits for a (new) prediction.
    assert state.add_prediction("c", "v1", 1, ts=7000) == "pending"
    assert state.add_label("c", 1, ts=17_001) == "pending"
    assert state.counters["evicted_predictions"] == 1
    assert {v: t.quality("classification") for v, t in state.totals.items()} == {
        "v1": {"rows": 1, "accuracy": 1.0},
        "v2": {"rows": 1, "accuracy": 0.0},
    }
    # Eviction by stream time, oldest first; joined ids are forgotten after a window too.
    state.add_prediction("d", "v1", 0, ts=20_000)
    assert state.evict(clock_ms=27_002) == 1 and list(state.pending_labels) == [] and "d" in state.pending_predictions
    assert list(state.joined_recent) == []
    # max_pending evicts the oldest waiting entries early.
    for i in range(5):
        state.add_prediction(f"p{i}", "v1", 0, ts=21_000 + i)
    assert len(state.pending_predictions) == 4 and "d" not in state.pending_predictions
    assert state.counters["overflow"] == 2 and state.counters["evicted_predictions"] == 3
    # The checkpoint round-trips exactly, value types included (True stays apart from 1).
    state.add_label("t", True, ts=30_000)
    restored = JoinState.from_json(state.to_json(7, 1.0e9), "classification", 10, 100)
    assert restored.seq == 7 and restored.pending_labels["t"] == (True, 30_000)
    assert restored.pending_predictions == state.pending_predictions
    assert restored.counters == state.counters and restored.totals == state.totals


def test_joined_rows_are_kept_by_their_events_time_in_the_checkpoint_line() -> None:
    state = JoinState("classification", window_s=600, max_pending=100)
    state.add_prediction("a", "v1", 1, ts=100_000, event_ms=40_100)  # served at 100 s, its event at 40.1 s
    state.add_label("a", 1, ts=101_000)
    state.add_label("b", 1, ts=101_000)  # label first: the prediction's event time still counts
    state.add_prediction("b", "v1", 0, ts=102_000, event_ms=40_300)
    state.add_prediction("c", "v2", 1, ts=103_500)  # no event time: counted at its prediction's time
    state.add_label("c", 1, ts=104_000)
    line = state.record(1, "s", 1.0e9)
    assert line["event_buckets"] == {
        "width_ms": 250,
        "versions": {
            "v1": {"40000": {"rows": 1, "correct": 1}, "40250": {"rows": 1, "correct": 0}},
            "v2": {"103500": {"rows": 1, "correct": 1}},
        },
    }
    state.checkpointed(1, 1.0e9)
    assert state.record(2, "s", 1.0e9)["event_buckets"]["versions"] == {}, "a delta, as `versions` is"


def test_a_backlog_s_checkpoint_widens_its_event_buckets() -> None:
    state = JoinState("regression", window_s=600, max_pending=1000)
    for i in range(200):  # 200 rows over 200 s of events: 800 buckets of 250 ms would be
        state.add_prediction(f"r{i}", "v1", 1.0, ts=500_000, event_ms=i * 1000.0)
        state.add_label(f"r{i}", 0.5, ts=500_000)
    buckets = state.record(1, "s", 1.0e9)["event_buckets"]
    assert buckets["width_ms"] == 4000 and len(buckets["versions"]["v1"]) == 50
    assert sum(b["rows"] for b in buckets["versions"]["v1"].values()) == 200
    assert buckets["versions"]["v1"]["0"] == {"rows": 4, "abs_err": 2.0, "sq_err": 1.0}


def test_a_state_file_from_before_event_times_restores() -> None:
    old = orjson.loads(JoinState("classification", 10, 100).to_json(3, 1.0e9))
    old["pending_predictions"] = [["p", "v1", 1, 5000.0]]  # no event time
    restored = JoinState.from_json(orjson.dumps(old), "classification", 10, 100)
    assert restored.pending_predictions["p"] == ("v1", 1, 5000.0, 5000.0)
