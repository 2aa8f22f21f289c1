"""The rollback and retrain jobs (assets/remediation.py) run on a real Dagster instance: what each
does to the registry, what it records, and what it refuses.

How the drift sensor decides to launch them is in tests/sensors/test_drift_sensor.py.
"""

from __future__ import annotations

import json
import shutil

import dagster as dg
import pytest

from dagster_project import names
from dagster_project.kafka.io import probe_partitions
from monitors.evidence import ACTION_KIND
from tests.dagster_project.cli.test_offsets import delete_before
from tests.helpers import full_retrain_tick, high_waters, produce_synthetic, run_batch


def _action_config(spec, op: str, **config) -> dict:
    return {"ops": {op(spec.name): {"config": config}}}


def _learn_two_batches(kafka_settings, spec, stream_defs, instance) -> None:
    produce_synthetic(kafka_settings, spec, 600)
    states = probe_partitions(kafka_settings, spec.events_topic, {})
    assert run_batch(stream_defs, spec, {s.partition: (0, s.high_water // 2) for s in states}, instance).success
    second = {s.partition: (s.high_water // 2, s.high_water) for s in states}
    assert run_batch(stream_defs, spec, second, instance).success


@pytest.fixture
def two_versions(kafka_settings, spec, registry, stream_defs, instance):
    """v1 (the first champion) and v2, promoted by hand: the situation a rollback undoes."""
    _learn_two_batches(kafka_settings, spec, stream_defs, instance)
    assert [v.name for v in registry.versions(spec.name)] == ["v1", "v2"]
    registry.set_champion(spec.name, "v2", reason="promoted for the test")
    return registry


@pytest.mark.one_broker  # the registry's decisions, not the broker: window reads run on both
def test_rollback_returns_the_champion_and_records_why(two_versions, spec, stream_defs, instance) -> None:
    registry = two_versions
    job = stream_defs.resolve_job_def(names.rollback_job(spec.name))
    reasons = ["regression: champion v2 accuracy 0.61 vs predecessor v1 0.90", "second reason"]
    evidence = {"comparison": {"metric": "accuracy", "champion": 0.61, "predecessor": 0.9}}
    config = _action_config(
        spec,
        names.rollback_op,
        from_version="v2",
        to_version="v1",
        reasons=reasons,
        evidence=json.dumps(evidence),
    )

    result = job.execute_in_process(run_config=config, instance=instance)

    assert result.success
    assert registry.champion(spec.name) == "v1"
    change = registry.champion_history(spec.name)[-1]
    assert change["version"] == "v1" and change["previous"] == "v2"
    assert change["reason"] == f"rollback: {'; '.join(reasons)}" and change["evidence"] == evidence
    decision = registry.decisions(spec.name)[-1]
    assert decision["kind"] == ACTION_KIND and decision["action"] == "rollback"
    assert (decision["from_version"], decision["to_version"]) == ("v2", "v1")
    assert decision["reasons"] == reasons and decision["run_id"] == result.run_id
    (materialization,) = result.asset_materializations_for_node(names.rollback_op(spec.name))
    assert materialization.asset_key == dg.AssetKey([spec.name, "champion"])
    assert materialization.metadata["champion"].value == "v1"
    assert materialization.metadata["rolled_back_from"].value == "v2"
    assert result.output_for_node(names.rollback_op(spec.name)) == "v1"
    assert [v.name for v in registry.versions(spec.name)] == ["v1", "v2"], "a rollback registers nothing"
    # the UI shows the champion asset changed, with the reason, on the instance
    event = instance.get_latest_materialization_event(dg.AssetKey([spec.name, "champion"]))
    assert event.run_id == result.run_id


@pytest.mark.one_broker  # the registry's decisions, not the broker: window reads run on both
def test_a_stale_rollback_changes_nothing(two_versions, spec, stream_defs, instance) -> None:
    registry = two_versions
    registry.set_champion(spec.name, "v1", reason="someone rolled back by hand already")
    decisions_before = registry.decisions(spec.name)
    job = stream_defs.resolve_job_def(names.rollback_job(spec.name))
    config = _action_config(spec, names.rollback_op, from_version="v2", to_version="v1", reasons=["regression"])

    result = job.execute_in_process(run_config=config, instance=instance, raise_on_error=False)

    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "champion is v1, not v2: the decision is stale, nothing done" in str(failure.event_specific_data.error)
    assert registry.champion(spec.name) == "v1"
    assert registry.decisions(spec.name) == decisions_before


@pytest.mark.one_broker  # the registry's decisions, not the broker: window reads run on both
def test_a_rollback_to_a_version_scorers_would_refuse_changes_nothing(
    two_versions, spec, stream_defs, instance
) -> None:
    """The alias moved to a damaged v1 while every scorer kept serving v2 (they refuse a failed checksum)."""
    registry = two_versions
    (registry.root / spec.name / "v1" / "model.onnx").write_bytes(b"\x00truncated")
    job = stream_defs.resolve_job_def(names.rollback_job(spec.name))
    config = _action_config(spec, names.rollback_op, from_version="v2", to_version="v1", reasons=["regression"])

    result = job.execute_in_process(run_config=config, instance=instance, raise_on_error=False)

    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "v1 cannot be served, nothing done" in str(failure.event_specific_data.error)
    assert registry.champion(spec.name) == "v2"


@pytest.mark.one_broker  # the registry's decisions, not the broker: window reads run on both
def test_retrain_registers_a_new_head_and_records_the_action(
    kafka_settings, spec, registry, stream_defs, instance
) -> None:
    _learn_two_batches(kafka_settings, spec, stream_defs, instance)
    v2 = registry.head(spec.name)
    job = stream_defs.resolve_job_def(names.retrain_job(spec.name))
    reasons = ["concept drift: error_rate: adwin detected an increase"]
    config = _action_config(spec, names.retrain_op, from_version="v2", reasons=reasons, window_from_version="v2")

    result = job.execute_in_process(run_config=config, instance=instance)

    assert result.success
    v3 = registry.head(spec.name)
    assert v3.name == "v3" and v3.parent == "v2"
    assert v3.meta["retrain"]["reasons"] == reasons and v3.meta["retrain"]["since"] == "v2"
    assert v3.meta["offsets"]["batch"] == v2.meta["offsets"]["batch"], "since v2: the window is v2's batch"
    assert v3.learned == v2.learned and v3.meta["rows_learned_total"] == v2.meta["rows_learned_total"] == 600
    assert v3.meta["run_id"] == result.run_id
    assert registry.champion(spec.name) == "v1", "the retrained version still has to win the promotion gate"
    decision, gate = registry.decisions(spec.name)[-2:]
    assert decision["kind"] == ACTION_KIND and decision["action"] == "retrain" and decision["since"] == "v2"
    assert (decision["from_version"], decision["to_version"]) == ("v2", "v3") and decision["reasons"] == reasons
    # gated in its own run, on v2's unseen tail: this spec holds none out, so the gate defers
    assert gate["kind"] == "promotion_gate" and gate["candidate"] == "v3" and not gate["promote"]
    assert "decision deferred" in gate["reason"]
    materialization, gated = result.asset_materializations_for_node(names.retrain_op(spec.name))
    assert materialization.asset_key == dg.AssetKey([spec.name, "model_version"])
    assert gated.asset_key == dg.AssetKey([spec.name, "champion"]) and gated.metadata["candidate"].value == "v3"
    assert materialization.metadata["version"].value == "v3"
    assert materialization.metadata["retrain"].value == spec.drift.retrain_mode
    assert materialization.metadata["rows"].value == v3.meta["rows"]["trained"] == 300


@pytest.mark.one_broker  # the registry's decisions, not the broker: window reads run on both
def test_a_retrain_that_starts_on_a_halted_stream_registers_nothing_until_the_halt_is_cleared(
    kafka_settings, spec, registry, stream_defs, instance
) -> None:
    """The drift sensor and the schedule check the halt when they request a retrain, but a halt could
    land before the run started: it then registered a head under the halted batch."""
    _learn_two_batches(kafka_settings, spec, stream_defs, instance)
    registry.set_halt(spec.name, {"kind": "failed_run", "summary": "the batch p0[300, 400) failed", "run_id": "abc"})
    decisions = registry.decisions(spec.name)
    job = stream_defs.resolve_job_def(names.retrain_job(spec.name))
    config = _action_config(spec, names.retrain_op, from_version="v2", reasons=["drift"], window_from_version="v2")

    result = job.execute_in_process(run_config=config, instance=instance)

    assert result.success  # a failed run would be retried by the daemon, for nothing
    assert [v.name for v in registry.versions(spec.name)] == ["v1", "v2"]
    assert registry.decisions(spec.name) == decisions and registry.halt(spec.name)
    logged = [e.message or "" for e in instance.all_logs(result.run_id)]
    assert any(f"{spec.name} is HALTED by a failed run" in m and "registers nothing" in m for m in logged), logged
    assert not result.asset_materializations_for_node(names.retrain_op(spec.name))

    registry.clear_halt(spec.name, {"resolution": "fixed"})
    assert job.execute_in_process(run_config=config, instance=instance).success
    assert registry.head(spec.name).name == "v3"


@pytest.mark.one_broker  # the registry's decisions, not the broker: window reads run on both
def test_a_retrain_after_a_registry_restore_takes_a_name_never_given(
    kafka_settings, spec, registry, stream_defs, instance, tmp_path
) -> None:
    """v2 and its retrain v3 were registered, then the registry was restored from a backup holding
    v1 and v2: a retrain of v2 is v4, not a second model called v3."""
    _learn_two_batches(kafka_settings, spec, stream_defs, instance)
    backup = tmp_path / "backup"
    shutil.copytree(registry.root, backup)
    job = stream_defs.resolve_job_def(names.retrain_job(spec.name))
    config = _action_config(spec, names.retrain_op, from_version="v2", reasons=["drift"], window_from_version="v2")
    assert job.execute_in_process(run_config=config, instance=instance).success
    assert registry.head(spec.name).name == "v3"
    shutil.rmtree(registry.root)
    shutil.copytree(backup, registry.root)

    result = job.execute_in_process(run_config=config, instance=instance)

    assert result.success
    head = registry.head(spec.name)
    assert (head.name, head.parent) == ("v4", "v2") and head.meta["names_skipped"]["to"] == "v3"
    assert [v.name for v in registry.versions(spec.name)] == ["v1", "v2", "v4"]
    assert registry.decisions(spec.name)[-2]["to_version"] == "v4"


@pytest.mark.one_broker  # the registry's decisions, not the broker: window reads run on both
def test_the_scheduled_full_retrain_runs(kafka_settings, spec, registry, stream_defs, instance) -> None:
    _learn_two_batches(kafka_settings, spec, stream_defs, instance)
    request = full_retrain_tick(stream_defs, spec, instance, registry)
    job = stream_defs.resolve_job_def(names.retrain_job(spec.name))

    result = job.execute_in_process(run_config=request.run_config, tags=request.tags, instance=instance)

    assert result.success
    v3 = registry.head(spec.name)
    assert not v3.meta["retrain"]["since"] and v3.meta["rows"]["trained"] == 600  # window: every batch
    assert v3.meta["retrain"]["reasons"][0].startswith("scheduled full retrain on the last")
    assert instance.get_run_by_id(result.run_id).tags[names.ACTION_TAG] == "scheduled_retrain"


def test_a_scheduled_full_retrain_whose_window_is_read_in_chunks_learns_all_of_it(
    kafka_settings, spec, registry, stream_defs, instance, monkeypatch
) -> None:
    """The retrain job reads a window larger than one read in chunks (`retraining.WINDOW_READ_ROWS`, made
    small here) and learns every row of it, as from one read."""
    from dagster_project.ingest.micro_batch import read_batch
    from dagster_project.learning import retraining

    _learn_two_batches(kafka_settings, spec, stream_defs, instance)
    v2 = registry.head(spec.name)
    reads = []

    def counted(*args, **kwargs):
        reads.append(args[2])
        return read_batch(*args, **kwargs)

    monkeypatch.setattr(retraining, "read_batch", counted)
    monkeypatch.setattr(retraining, "WINDOW_READ_ROWS", 100)
    request = full_retrain_tick(stream_defs, spec, instance, registry)
    job = stream_defs.resolve_job_def(names.retrain_job(spec.name))

    result = job.execute_in_process(run_config=request.run_config, tags=request.tags, instance=instance)

    assert result.success
    assert len(reads) >= 6, reads  # 600 offsets, 100 a read
    v3 = registry.head(spec.name)
    assert v3.meta["rows"]["trained"] == 600 and v3.learned == v2.learned
    window = {p: (0, end) for p, end in high_waters(kafka_settings, spec.events_topic).items()}
    assert {int(p): tuple(r) for p, r in v3.meta["offsets"]["batch"].items()} == window


@pytest.mark.one_broker  # the registry's decisions, not the broker: window reads run on both
def test_the_scheduled_full_retrain_leaves_out_a_passed_over_batch(
    kafka_settings, spec, registry, stream_defs, instance
) -> None:
    """The middle third was passed over (as a quarantined or skipped batch is: a pending offset move).
    The retrain's window spanned it: it learned those 300 rows and recorded [0, end) as learned."""
    produce_synthetic(kafka_settings, spec, 900)
    third = {s.partition: s.high_water // 3 for s in probe_partitions(kafka_settings, spec.events_topic, {})}
    assert run_batch(stream_defs, spec, {p: (0, e) for p, e in third.items()}, instance).success
    registry.set_pending_offsets(spec.name, {p: 2 * e for p, e in third.items()}, reason="skipped: poison", by="ops")
    ends = high_waters(kafka_settings, spec.events_topic)
    assert run_batch(stream_defs, spec, {p: (2 * third[p], e) for p, e in ends.items()}, instance).success
    request = full_retrain_tick(stream_defs, spec, instance, registry)
    job = stream_defs.resolve_job_def(names.retrain_job(spec.name))

    assert job.execute_in_process(run_config=request.run_config, tags=request.tags, instance=instance).success

    v2, v3 = registry.versions(spec.name)[1:]
    assert v3.meta["retrain"] and v3.meta["offsets"]["batch"] == v2.meta["offsets"]["batch"]
    assert v3.meta["rows"]["trained"] == v2.meta["rows"]["trained"] == sum(ends.values()) - 2 * sum(third.values())


def test_the_scheduled_full_retrain_learns_what_retention_left_of_its_window(
    kafka_settings, spec, registry, stream_defs, instance
) -> None:
    """Partition 0's log starts inside the second batch now (Apache Kafka: Tansu cannot delete records).
    The retrain read the window from offset 0 and failed with an OFFSET GAP asking for an offset reset,
    which cannot move a window of learned batches: it failed every night."""
    produce_synthetic(kafka_settings, spec, 900)
    ends = high_waters(kafka_settings, spec.events_topic)
    for k in range(3):
        ranges = {p: (e * k // 3, e * (k + 1) // 3) for p, e in ends.items()}
        assert run_batch(stream_defs, spec, ranges, instance).success
    kept = ends[0] // 3 + 20
    delete_before(kafka_settings, spec.events_topic, 0, kept)
    request = full_retrain_tick(stream_defs, spec, instance, registry)
    job = stream_defs.resolve_job_def(names.retrain_job(spec.name))

    assert job.execute_in_process(run_config=request.run_config, tags=request.tags, instance=instance).success

    v4 = registry.head(spec.name)
    assert v4.meta["offsets"]["batch"] == {"0": [kept, ends[0]], "1": [0, ends[1]]}
    assert v4.meta["rows"]["trained"] == sum(ends.values()) - kept
    assert v4.meta["retrain"]["lost_to_retention"] == {"0": [0, kept]}
    assert v4.learned == registry.get(spec.name, "v3").learned


@pytest.mark.one_broker  # the registry's decisions, not the broker: window reads run on both
def test_the_scheduled_full_retrain_waits_for_versions_a_halt_and_a_drift_action(
    spec, registry, stream_defs, instance
) -> None:
    """It launched a run that failed every day on a stream with nothing learned yet, registered a head
    on a halted stream (whose fix is re-executing the halted run on the head it failed on), and
    raced a drift retrain or rollback in flight."""
    skip = full_retrain_tick(stream_defs, spec, instance, registry)
    assert isinstance(skip, dg.SkipReason) and "has no versions yet" in skip.skip_message
    registry.register(spec.name, None, b"onnx", {"fake": "estimator"}, {"offsets": {"learned": {"0": 10}}})
    assert isinstance(full_retrain_tick(stream_defs, spec, instance, registry), dg.RunRequest)

    registry.set_halt(spec.name, {"kind": "failed_run", "summary": "the batch p0[10, 20) failed", "run_id": "abc"})
    skip = full_retrain_tick(stream_defs, spec, instance, registry)
    assert isinstance(skip, dg.SkipReason) and "HALTED (the batch p0[10, 20) failed)" in skip.skip_message
    registry.clear_halt(spec.name, {"resolution": "fixed"})

    job = stream_defs.resolve_job_def(names.retrain_job(spec.name))
    config = _action_config(spec, names.retrain_op, from_version="v1", reasons=["drift"])
    drift = instance.create_run_for_job(job_def=job, run_config=config, tags={names.STREAM_TAG: spec.name})
    skip = full_retrain_tick(stream_defs, spec, instance, registry)
    assert isinstance(skip, dg.SkipReason) and f"run {drift.run_id[:8]} is in flight" in skip.skip_message
    instance.report_run_canceled(drift)
    assert isinstance(full_retrain_tick(stream_defs, spec, instance, registry), dg.RunRequest)


@pytest.mark.one_broker  # the registry's decisions, not the broker: window reads run on both
def test_retrain_with_nothing_learned_fails_with_the_reason(spec, registry, stream_defs, instance) -> None:
    job = stream_defs.resolve_job_def(names.retrain_job(spec.name))
    config = _action_config(spec, names.retrain_op, from_version="", reasons=["scheduled"])

    result = job.execute_in_process(run_config=config, instance=instance, raise_on_error=False)

    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert f"{spec.name} has no versions to retrain from" in str(failure.event_specific_data.error)
    assert registry.decisions(spec.name) == []
