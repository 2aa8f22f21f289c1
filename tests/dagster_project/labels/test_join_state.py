"""The join rules in memory: pairing in either order, window, cap, eviction, duplicates, checkpoints."""

from __future__ import annotations

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
