"""Replaying a quarantined batch (quality/replay.py): trained exactly once on top of the head, the
stream's position never moves back, and a batch that still fails its checks needs `force`.

The CLI path (`streamfit quarantine replay --force`) is exercised end to end in
tests/assets/test_quality_gate.py::test_quarantine_advances_and_replays_exactly_once.
"""

from __future__ import annotations

import numpy as np
import pytest

from dagster_project.learning.pipeline import learn_export_register, learn_from_head
from dagster_project.quality.policy import apply_quality_policy
from dagster_project.quality.quarantine import QuarantineError, QuarantineStore
from dagster_project.quality.replay import replay_quarantined
from dagster_project.spec import StreamSpec
from tests.conftest import synthetic_spec
from tests.helpers import hand_batch


def _spec(name: str | None = None, x0_max: float | None = 10) -> StreamSpec:
    x0 = {"name": "x0", "min": -10, "max": x0_max} if x0_max is not None else {"name": "x0"}
    return synthetic_spec(
        name, partitions=1, features=[x0] + [{"name": f"x{i}"} for i in range(1, 5)], quality={"policy": "quarantine"}
    )


def _learn(registry, spec: StreamSpec, start: int, rows: int, seed: int):
    batch = hand_batch(spec, rows, start=start, seed=seed)
    return learn_export_register(registry, spec, batch, f"run-{start}", lambda: learn_from_head(registry, spec, batch))


def _quarantine(registry, kafka_settings, spec: StreamSpec, start: int, rows: int, labelled: bool = True) -> str:
    batch = hand_batch(spec, rows, start=start, seed=start)
    batch.X[:2, 0] = 50.0  # outside x0's [-10, 10]
    if not labelled:
        batch.y[:] = np.nan
    outcome = apply_quality_policy(kafka_settings, registry, spec, batch, f"run-q{start}")
    assert outcome.metadata["action"] == "quarantine", outcome.message
    return outcome.metadata["quarantine_id"]


def test_forced_replay_trains_once_on_the_head_and_keeps_the_offsets(registry, kafka_settings) -> None:
    spec = _spec()
    store = QuarantineStore()
    _learn(registry, spec, 0, 100, seed=1)
    qid = _quarantine(registry, kafka_settings, spec, 100, 60)
    v2 = _learn(registry, spec, 160, 100, seed=2)  # the stream moved on past the quarantined range
    assert v2.learned == {0: 260}

    v3 = replay_quarantined(registry, store, spec, qid, by="carol", force=True)

    assert v3.parent == v2.name and registry.head(spec.name).name == v3.name
    assert v3.learned == v2.learned, "the stream's position must not move back to the replayed range"
    assert v3.meta["replay"] == {"quarantine": qid, "by": "carol"}
    assert v3.meta["run_id"] == "replay by carol"
    assert v3.meta["offsets"]["batch"] == {"0": [100, 160]}
    assert v3.meta["rows"]["trained"] == 60
    assert v3.meta["rows_learned_total"] == v2.meta["rows_learned_total"] + 60
    assert registry.champion(spec.name) == "v1", "a replayed version must still win the promotion gate"
    replayed = store.get(spec.name, qid).meta["replayed_by"]
    assert replayed["version"] == v3.name and replayed["by"] == "carol"

    with pytest.raises(QuarantineError, match=f"{qid} was already replayed by {v3.name}; nothing to do"):
        replay_quarantined(registry, store, spec, qid, by="dave", force=True)
    assert registry.head(spec.name).name == v3.name, "the second replay registered nothing"


class Crash(RuntimeError):
    """The process died here."""


def test_a_replay_that_died_before_marking_the_batch_is_not_learned_again(
    registry, kafka_settings, monkeypatch
) -> None:
    spec = _spec()
    store = QuarantineStore()
    _learn(registry, spec, 0, 100, seed=1)
    qid = _quarantine(registry, kafka_settings, spec, 100, 60)
    with monkeypatch.context() as crashing:
        crashing.setattr(store, "mark_replayed", lambda *a, **k: (_ for _ in ()).throw(Crash()))
        with pytest.raises(Crash):
            replay_quarantined(registry, store, spec, qid, by="carol", force=True)
    v2 = registry.head(spec.name)
    assert (
        v2.meta["replay"] == {"quarantine": qid, "by": "carol"}
        and store.get(spec.name, qid).meta["replayed_by"] is None
    )

    with pytest.raises(QuarantineError, match=f"{qid} was already replayed by {v2.name}; nothing to do"):
        replay_quarantined(registry, store, spec, qid, by="dave", force=True)
    assert registry.head(spec.name).name == v2.name, "the second replay registered nothing"
    assert store.get(spec.name, qid).meta["replayed_by"]["version"] == v2.name, "and the batch now says so"


def test_a_quarantine_retried_after_a_crash_keeps_one_entry_of_the_batch(registry, kafka_settings, monkeypatch) -> None:
    """The run died after saving the batch, before recording the skip; its retry quarantines the same
    batch again: one entry, so the rows can be replayed only once."""
    spec = _spec()
    _learn(registry, spec, 0, 100, seed=1)
    with monkeypatch.context() as crashing:
        crashing.setattr(type(registry), "set_pending_offsets", lambda *a, **k: (_ for _ in ()).throw(Crash()))
        with pytest.raises(Crash):
            _quarantine(registry, kafka_settings, spec, 100, 60)
    assert registry.pending_offset_reset(spec.name) is None

    qid = _quarantine(registry, kafka_settings, spec, 100, 60)

    assert [entry.id for entry in QuarantineStore().list(spec.name)] == [qid]
    assert registry.pending_offset_reset(spec.name)["reason"].startswith(f"quarantined {qid}")
    other_rows = hand_batch(spec, 60, start=100, seed=999)  # the same offsets read again as other rows
    assert QuarantineStore().save(other_rows, {}, "run-later") != qid


def test_replay_before_the_next_batch_applies_the_pending_skip(registry, kafka_settings) -> None:
    spec = _spec()
    v1 = _learn(registry, spec, 0, 100, seed=1)
    qid = _quarantine(registry, kafka_settings, spec, 100, 60)

    v2 = replay_quarantined(registry, QuarantineStore(), spec, qid, by="carol", force=True)

    assert v1.learned == {0: 100}
    assert v2.learned == {0: 160}, "the quarantine's offset skip is what the next batch starts from"
    assert v2.meta["offset_reset_applied"]["reason"].startswith(f"quarantined {qid}")
    assert registry.pending_offset_reset(spec.name) is None


def test_a_batch_that_still_fails_needs_force(registry, kafka_settings) -> None:
    spec = _spec()
    store = QuarantineStore()
    _learn(registry, spec, 0, 100, seed=1)
    qid = _quarantine(registry, kafka_settings, spec, 100, 60)

    with pytest.raises(QuarantineError) as refused:
        replay_quarantined(registry, store, spec, qid, by="carol")

    message = str(refused.value)
    assert message.startswith(f"{qid} still fails its checks (") and "x0" in message
    assert message.endswith("fix the spec or pass --force")
    assert [v.name for v in registry.versions(spec.name)] == ["v1"]
    assert store.get(spec.name, qid).meta["replayed_by"] is None

    fixed = _spec(spec.name, x0_max=None)  # the operator widened the rule: the batch now passes as is
    version = replay_quarantined(registry, store, fixed, qid, by="carol")
    assert version.meta["replay"]["quarantine"] == qid


def test_refusals_name_the_problem(registry, kafka_settings) -> None:
    spec = _spec()
    store = QuarantineStore()
    with pytest.raises(QuarantineError, match=rf"{spec.name} has no quarantined batch 'q-nope'; `streamfit quarantine"):
        replay_quarantined(registry, store, spec, "q-nope", by="carol", force=True)

    qid = _quarantine(registry, kafka_settings, spec, 0, 40, labelled=False)
    with pytest.raises(QuarantineError, match=f"{qid} has no labelled rows to train"):
        replay_quarantined(registry, store, spec, qid, by="carol", force=True)
    assert registry.versions(spec.name) == []


def test_a_replay_into_a_windowed_model_refits_on_its_window_with_the_batch_in_offset_order(
    kafka_settings, kafka_bootstrap, registry, instance
) -> None:
    """The quarantined batch lies between two learned ones: the replay's refit fits all three (the
    newer one read back from Kafka, derived features continuing the state training had)."""
    from tests.dagster_project.features.support import learn_around_a_quarantine

    model = {"estimator": "hist_gradient_boosting_classifier", "window_rows": 5000}
    spec, skip = learn_around_a_quarantine(kafka_settings, kafka_bootstrap, registry, instance, model=model)
    v1, v2 = registry.versions(spec.name)
    (entry,) = QuarantineStore().list(spec.name)
    stored = QuarantineStore().get(spec.name, entry.id).batch
    assert v2.meta["window"]["fitted_on"]["ranges"] == {  # the quarantined offsets are not in it yet
        str(p): [[0, v1.learned[p]], [skip[p], v2.learned[p]]] for p in skip
    }

    v3 = replay_quarantined(registry, QuarantineStore(), spec, entry.id, by="ops", force=True, settings=kafka_settings)

    assert v3.learned == v2.learned and v3.meta["replay"]["quarantine"] == entry.id
    fitted_on = v3.meta["window"]["fitted_on"]
    assert fitted_on["ranges"] == {str(p): [[0, v2.learned[p]]] for p in skip}  # one span: all three batches
    assert fitted_on["read"] == {str(p): [0, v2.learned[p]] for p in skip}
    rows = v2.meta["window"]["fitted_on"]["rows"] + int(stored.labelled.sum())
    assert fitted_on["rows"] == rows  # every labelled row of the three once: the replayed ones from memory
    assert v3.meta["rows_learned_total"] == v2.meta["rows_learned_total"] + int(stored.labelled.sum())
