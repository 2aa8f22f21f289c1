"""What an operator reads in the Dagster UI, asserted through the instance the webserver reads (its
event log: materialization metadata, check results, step failures), with no browser: which offsets a
version learned and how it fared against the champion, why a run failed and what to do, and what the
champion is after a retrain."""

from __future__ import annotations

import dagster as dg
import pytest

from dagster_project import names
from tests.assets.test_quality_gate import _bad_rows, _next_range, _send, _spec
from tests.assets.test_self_healing import TAIL, _next
from tests.conftest import synthetic_spec
from tests.helpers import defs_for, high_waters, produce_synthetic, run_batch


def _latest(instance: dg.DagsterInstance, stream: str, asset: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey([stream, asset]))
    assert event is not None, f"{stream}/{asset} was never materialized"
    return event.asset_materialization.metadata


def _step_failure(instance: dg.DagsterInstance, run_id: str) -> str:
    (record,) = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    error = record.dagster_event.event_specific_data.error
    return f"{error.cls_name}: {error.message}"


@pytest.mark.parametrize("spec", [synthetic_spec(promotion=TAIL)], ids=["tails"])
def test_model_version_says_which_offsets_it_learned_from_which_batch_with_typed_numbers(
    kafka_settings, spec, registry, stream_defs, instance
):
    produce_synthetic(kafka_settings, spec, 1500)
    for rows in (250, 300):
        assert run_batch(stream_defs, spec, _next(kafka_settings, registry, spec, rows), instance).success
    v2 = registry.head(spec.name)

    md = _latest(instance, spec.name, "model_version")

    assert md["version"].value == "v2" and md["parent"].value == "v1"
    assert isinstance(md["offsets_batch"], dg.JsonMetadataValue)  # [start, end) read, by partition
    assert md["offsets_batch"].value == v2.meta["offsets"]["batch"] == {"0": [200, 500], "1": [200, 500]}
    assert md["offsets_learned"].value == {"0": 450, "1": 450}  # the tail [450, 500) is the next batch's
    # rows of [200, 450) per partition: the offsets it learned (its tail is counted by the next version)
    for key, rows in (("rows_read", 500), ("rows_valid", 500), ("dead_letters", 0)):
        assert isinstance(md[key], dg.IntMetadataValue) and md[key].value == rows, key
    assert isinstance(md["roc_auc"], dg.FloatMetadataValue)
    # ... and against the champion, on the champion asset of the same run: typed, with the test's p-value
    gate = _latest(instance, spec.name, "champion")
    assert gate["candidate"].value == "v2" and isinstance(gate["p_value"], dg.FloatMetadataValue)
    assert isinstance(gate["champion_metrics"], dg.JsonMetadataValue) and gate["reason"].value.startswith("v2 ")


def test_a_run_halted_by_data_quality_fails_naming_the_rule_and_the_fix(
    kafka_bootstrap, kafka_settings, registry, instance
):
    spec = _spec(policy="halt")
    defs = defs_for(spec, kafka_bootstrap, registry)
    produce_synthetic(kafka_settings, spec, 200)
    _send(kafka_settings, spec, _bad_rows(3))

    result = run_batch(defs, spec, _next_range(kafka_settings, spec, 0), instance, raise_on_error=False)

    assert not result.success
    failure = _step_failure(instance, result.run_id)  # what the run page shows as the run's error
    assert "data_quality" in failure and "'x0'" in failure and "0:200" in failure, failure
    assert f"re-execute run {result.run_id[:8]}" in failure and f"streamfit batches skip {spec.name}" in failure
    assert instance.get_run_by_id(result.run_id).tags["dagster/max_retries"] == "0"  # still not retried


def test_a_run_failing_onnx_parity_fails_naming_the_difference_and_the_fix(
    kafka_bootstrap, kafka_settings, registry, instance
):
    spec = synthetic_spec(parity={"atol": 0.0, "rtol": 0.0})  # float32 rounding fails it
    defs = defs_for(spec, kafka_bootstrap, registry)
    produce_synthetic(kafka_settings, spec, 400)
    ranges = {p: (0, min(e, 150)) for p, e in high_waters(kafka_settings, spec.events_topic).items()}

    result = run_batch(defs, spec, ranges, instance, raise_on_error=False)

    assert not result.success and registry.versions(spec.name) == []
    failure = _step_failure(instance, result.run_id)
    assert "onnx_parity" in failure and "max abs diff" in failure, failure
    assert "parity.atol" in failure and f"re-execute run {result.run_id[:8]}" in failure, failure
    steps = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert not steps, "the same model fails parity alike on every step retry"


def test_a_retrain_shows_its_offsets_and_its_gate_decision_on_the_champion_asset(
    kafka_settings, spec, registry, stream_defs, instance
):
    produce_synthetic(kafka_settings, spec, 600)
    ends = high_waters(kafka_settings, spec.events_topic)
    assert run_batch(stream_defs, spec, {p: (0, e // 2) for p, e in ends.items()}, instance).success
    assert run_batch(stream_defs, spec, {p: (e // 2, e) for p, e in ends.items()}, instance).success
    registry.set_champion(spec.name, "v2", reason="for the test")  # the champion asset still says v1
    job = stream_defs.resolve_job_def(names.retrain_job(spec.name))
    config = {"from_version": "v2", "reasons": ["concept drift"], "window_from_version": "v2"}

    result = job.execute_in_process(
        run_config={"ops": {names.retrain_op(spec.name): {"config": config}}}, instance=instance
    )

    assert result.success and registry.head(spec.name).name == "v3"
    version = _latest(instance, spec.name, "model_version")
    assert version["version"].value == "v3" and version["parent"].value == "v2"
    assert version["offsets_learned"].value == {str(p): e for p, e in ends.items()}
    assert isinstance(version["offsets_batch"], dg.JsonMetadataValue)
    gate = _latest(instance, spec.name, "champion")  # the retrain's decision, not the last training run's
    assert gate["candidate"].value == "v3"
    assert gate["champion"].value == registry.champion(spec.name) == "v2"  # no tail to judge on: kept
    assert gate["promoted"].value == 0 and "decision deferred" in gate["reason"].value
