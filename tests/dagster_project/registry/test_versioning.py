"""Registering a version (registry/versioning.py `register_batch`): the parent check, the learned
offsets (with a pending reset, a replay or a retrain), the first champion and the meta.json every
version carries."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from dagster_project.ingest.micro_batch import MicroBatch
from dagster_project.learning.pipeline import export_checked, learn_from_head
from dagster_project.registry.contract import SpecChanged
from dagster_project.registry.store import StaleParent
from dagster_project.registry.versioning import register_batch
from dagster_project.spec import StreamSpec
from tests.conftest import synthetic_spec
from tests.helpers import hand_batch


@pytest.fixture
def spec() -> StreamSpec:
    return synthetic_spec(partitions=2)


def _register(registry, spec: StreamSpec, batch: MicroBatch, run_id: str = "run-1", trained=None, **extra):
    trained = trained or learn_from_head(registry, spec, batch)
    artifact = export_checked(spec, trained.estimator, batch.X)
    return register_batch(registry, spec, batch, trained, artifact.onnx_bytes, artifact.parity, run_id, **extra)


def _two_partitions(spec: StreamSpec, start: int, rows: int, seed: int = 0) -> MicroBatch:
    """`rows` rows from each of partitions 0 and 1, both at offsets [start, start+rows)."""
    a, b = hand_batch(spec, rows, start, seed), hand_batch(spec, rows, start, seed + 1, partition=1)
    return MicroBatch(
        stream=spec.name,
        ranges={0: (start, start + rows), 1: (start, start + rows)},
        X=np.vstack([a.X, b.X]),
        y=np.concatenate([a.y, b.y]),
        ids=a.ids + b.ids,
        partitions=np.concatenate([a.partitions, b.partitions]),
        offsets=np.concatenate([a.offsets, b.offsets]),
    )


def test_the_first_version_records_its_batch_and_becomes_champion(registry, spec) -> None:
    batch = _two_partitions(spec, 0, 100)

    v1 = _register(registry, spec, batch, run_id="run-first")

    assert v1.name == "v1" and v1.parent is None
    assert v1.learned == {0: 100, 1: 100}
    assert v1.meta["rows_learned_total"] == 200
    assert v1.meta["offsets"] == {
        "topic": spec.events_topic,
        "batch": {"0": [0, 100], "1": [0, 100]},
        "learned": {"0": 100, "1": 100},
        "identity": None,  # a hand-built batch names no cluster or topic incarnation
    }
    assert v1.meta["rows"] == {"read": 200, "valid": 200, "trained": 200, "dlq": 0, "tail": 0}
    assert (v1.meta["estimator"], v1.meta["task"], v1.meta["classes"]) == (
        "adaptive_sgd_classifier",
        "classification",
        [0, 1],
    )
    assert v1.meta["features"] == spec.feature_names and set(v1.meta["profile"]["features"]) == set(spec.feature_names)
    assert v1.meta["parity"]["passed"] is True and v1.meta["run_id"] == "run-first"
    assert v1.meta["offset_reset_applied"] is None
    assert registry.champion(spec.name) == "v1"
    assert registry.champion_history(spec.name)[-1]["reason"] == "first version: nothing to compare against"


def test_later_versions_grow_from_the_head_but_do_not_take_the_champion(registry, spec) -> None:
    _register(registry, spec, _two_partitions(spec, 0, 100))
    v2 = _register(registry, spec, _two_partitions(spec, 100, 50, seed=5))

    assert v2.parent == "v1" and v2.learned == {0: 150, 1: 150}
    assert v2.meta["rows_learned_total"] == 300
    assert registry.champion(spec.name) == "v1", "later versions must pass the promotion gate first"


def test_a_model_trained_on_a_stale_parent_is_refused(registry, spec) -> None:
    first = _two_partitions(spec, 0, 100)
    stale = learn_from_head(registry, spec, first)  # trained while there was no version yet
    _register(registry, spec, first)

    with pytest.raises(StaleParent, match=f"{spec.name}: trained on None but the head is now v1"):
        _register(registry, spec, first, trained=stale)

    assert [v.name for v in registry.versions(spec.name)] == ["v1"], "the batch must never be counted twice"
    with pytest.raises(StaleParent):
        _register(registry, spec, _two_partitions(spec, 100, 10), trained=replace(stale, parent="v7"))


def test_a_pending_offset_reset_is_applied_once_and_recorded(registry, spec) -> None:
    _register(registry, spec, _two_partitions(spec, 0, 100))
    reset = registry.set_pending_offsets(spec.name, {1: 400}, reason="lost segment", by="alice")
    batch = hand_batch(spec, 80, start=100)  # partition 0 only; partition 1 jumps to 400 by the reset

    v2 = _register(registry, spec, batch)

    assert v2.learned == {0: 180, 1: 400}
    assert v2.meta["offset_reset_applied"] == reset
    assert registry.pending_offset_reset(spec.name) is None
    v3 = _register(registry, spec, hand_batch(spec, 20, start=400, partition=1))
    assert v3.learned == {0: 180, 1: 420} and v3.meta["offset_reset_applied"] is None


def test_a_replay_keeps_the_streams_position(registry, spec) -> None:
    _register(registry, spec, _two_partitions(spec, 0, 100))
    registry.set_pending_offsets(spec.name, {0: 150, 1: 150}, reason="quarantined q-1", by="run r")
    v2 = _register(registry, spec, _two_partitions(spec, 150, 50))  # [100, 150) was quarantined, then skipped
    behind = _two_partitions(spec, 100, 50, seed=3)

    v3 = _register(registry, spec, behind, replay={"quarantine": "q-1", "by": "bob"})

    assert v3.parent == "v2" and v3.learned == v2.learned == {0: 200, 1: 200}
    assert v3.meta["offsets"]["batch"] == {"0": [100, 150], "1": [100, 150]}
    assert v3.meta["rows_learned_total"] == v2.meta["rows_learned_total"] + 100, "the replayed rows are new"
    assert v3.meta["replay"] == {"quarantine": "q-1", "by": "bob"}


def test_a_retrain_moves_neither_offsets_nor_rows_and_leaves_a_reset_pending(registry, spec) -> None:
    _register(registry, spec, _two_partitions(spec, 0, 100))
    v2 = _register(registry, spec, _two_partitions(spec, 100, 100))
    pending = registry.set_pending_offsets(spec.name, {0: 900}, reason="skip", by="alice")
    window = _two_partitions(spec, 0, 200, seed=9)

    v3 = _register(registry, spec, window, retrain={"mode": "fresh", "from": "v2"})

    assert v3.learned == v2.learned == {0: 200, 1: 200}
    assert v3.meta["rows_learned_total"] == v2.meta["rows_learned_total"] == 400
    assert v3.meta["rows"]["trained"] == 400 and v3.meta["offset_reset_applied"] is None
    assert registry.pending_offset_reset(spec.name) == pending, "the next learned batch applies the reset"


def test_a_replay_under_a_spec_whose_columns_changed_is_refused(registry, spec) -> None:
    """Registered under the new contract, the old model's meanings would have gone on unseen by any check."""
    _register(registry, spec, _two_partitions(spec, 0, 100))
    reordered = synthetic_spec(spec.name, features=[{"name": f"x{i}"} for i in reversed(range(5))])
    with pytest.raises(SpecChanged, match=f"SPEC CHANGED in {spec.name} since v1: input columns reordered"):
        _register(registry, reordered, _two_partitions(reordered, 0, 50, seed=3), replay={"quarantine": "q-1"})
    assert [v.name for v in registry.versions(spec.name)] == ["v1"]


def test_a_replay_under_a_spec_whose_estimator_changed_learns_a_fresh_model_of_it(registry, spec) -> None:
    _register(registry, spec, _two_partitions(spec, 0, 100))
    mlp = synthetic_spec(spec.name, model={"estimator": "mlp_classifier"})
    trained = learn_from_head(registry, mlp, _two_partitions(mlp, 0, 50, seed=3))
    assert type(trained.estimator[-1]).__name__ == "MLPClassifier" and trained.parent == "v1"
