"""The drift sensor on real training runs: roll back a bad champion, retrain after a concept change,
leave a stationary stream alone, and on a halted stream defer a retrain but not a rollback."""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from dagster_project.cli import main
from dagster_project.dev.datasets import synthetic_events
from dagster_project.dev.producer import produce
from dagster_project.factory import build_stream_definitions
from dagster_project.ingest.events import make_event
from dagster_project.kafka.io import probe_partitions
from dagster_project.learning.estimators import build_model, partial_fit
from dagster_project.onnx.export import export_onnx
from dagster_project.resources import KafkaResource, RegistryResource
from tests.conftest import synthetic_spec
from tests.helpers import produce_synthetic, run_batch

# The subject is the drift monitor's decisions on a model's live metrics, not how Streamfit talks to
# a broker (tests/sensors/test_kafka_sensor.py and tests/faults/ run on both): once, in the Tansu session.
pytestmark = pytest.mark.one_broker

BATCH = 500


def _defs(spec, bootstrap, registry) -> dg.Definitions:
    resources = {"kafka": KafkaResource(bootstrap=bootstrap), "registry": RegistryResource(root=str(registry.root))}
    return dg.Definitions.merge(build_stream_definitions(spec), dg.Definitions(resources=resources))


def _tick(defs, spec, instance, registry):
    sensor = defs.resolve_sensor_def(f"{spec.name}_drift_sensor")
    context = dg.build_sensor_context(
        instance=instance, resources={"registry": RegistryResource(root=str(registry.root))}
    )
    return sensor(context)


def _execute(defs, request: dg.RunRequest, instance):
    return defs.resolve_job_def(request.job_name).execute_in_process(run_config=request.run_config, instance=instance)


def _batches(settings, spec, size: int):
    """Consecutive single-partition batches of `size` rows over everything produced."""
    (state,) = probe_partitions(settings, spec.events_topic, {})
    return [{0: (start, min(start + size, state.high_water))} for start in range(0, state.high_water, size)]


def _halting_spec(**overrides):
    """A synthetic stream whose batches halt when x0 leaves [-10, 10] (the synthetic rows never do)."""
    features = [{"name": "x0", "min": -10, "max": 10}] + [{"name": f"x{i}"} for i in range(1, 5)]
    return synthetic_spec(partitions=1, features=features, quality={"policy": "halt"}, **overrides)


def _halt_on_a_bad_batch(defs, settings, spec, instance, registry, start: int) -> dict:
    """Produce three rows that break x0's range and run them as a batch from `start`: a real halt."""
    bad = {"x0": 50.0, "x1": 0.0, "x2": 0.0, "x3": 0.0, "x4": 0.0}
    produce(settings, spec, ((f"bad-{i}".encode(), make_event(f"bad-{i}", bad, 1)) for i in range(3)))
    (state,) = probe_partitions(settings, spec.events_topic, {})
    halted = run_batch(defs, spec, {0: (start, state.high_water)}, instance, raise_on_error=False)
    halt = registry.halt(spec.name)
    assert not halted.success and halt and halt["run_id"] == halted.run_id
    return halt


def _promote_a_bad_champion_by_hand(defs, kafka_settings, spec, instance, registry) -> None:
    """Two batches learned, with v2 (an inverted model) made champion by hand between them: the second
    batch's champion check sees v2 lose to v1."""
    produce_synthetic(kafka_settings, spec, 1000)
    first, second = _batches(kafka_settings, spec, BATCH)
    assert run_batch(defs, spec, first, instance).success
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2000, 5))
    inverted = (X @ np.array([1.5, -2.0, 1.0, 0.0, 0.5]) <= 0).astype(int)
    bad = partial_fit(build_model(spec), X, inverted, np.array([0, 1]))
    registry.register(spec.name, "v1", export_onnx(bad, 5), bad, {**registry.head(spec.name).meta, "metrics": {}})
    registry.set_champion(spec.name, "v2", reason="manual: operator error")
    assert run_batch(defs, spec, second, instance).success  # the champion check sees v2 lose to v1


def test_a_bad_champion_promoted_by_hand_is_rolled_back_once(kafka_bootstrap, kafka_settings, registry, instance):
    spec = synthetic_spec(partitions=1, drift={"min_comparison_rows": 200})
    defs = _defs(spec, kafka_bootstrap, registry)
    _promote_a_bad_champion_by_hand(defs, kafka_settings, spec, instance, registry)

    request = _tick(defs, spec, instance, registry)

    assert isinstance(request, dg.RunRequest), request
    assert request.job_name == f"{spec.name}_rollback"
    config = request.run_config["ops"][f"{spec.name}_rollback_champion"]["config"]
    assert config["from_version"] == "v2" and config["to_version"] == "v1"
    assert any("v2" in reason for reason in config["reasons"])
    (check,) = [d for d in registry.decisions(spec.name) if d["kind"] == "champion_check"]
    p = check["test"]["p_value"]  # the paired test recorded with the check: v1 (A) better than v2
    assert check["test"]["test"] == "DeLong" and check["test"]["rows"] == check["rows"] and p < 1e-6
    assert json.loads(config["evidence"])["comparison"]["p_value"] == p
    tested = f"(DeLong p={p:.1e} < 0.0304 at look 1 of 0.05 spent over looks)"
    assert any(tested in reason for reason in config["reasons"]), config["reasons"]
    assert _execute(defs, request, instance).success
    assert registry.champion(spec.name) == "v1"
    assert registry.champion_history(spec.name)[-1]["reason"].startswith("rollback:")
    again = _tick(defs, spec, instance, registry)
    assert isinstance(again, dg.SkipReason), "acted twice on the same evidence (flapping)"


def test_stationary_stream_gets_no_action(kafka_bootstrap, kafka_settings, registry, instance):
    spec = synthetic_spec(partitions=1)
    defs = _defs(spec, kafka_bootstrap, registry)
    produce_synthetic(kafka_settings, spec, 6000)
    for ranges in _batches(kafka_settings, spec, BATCH):
        assert run_batch(defs, spec, ranges, instance).success
        result = _tick(defs, spec, instance, registry)
        assert isinstance(result, dg.SkipReason), f"false alarm on a stationary stream: {result}"
        assert "no action" in result.skip_message or "no champion" in result.skip_message


def test_concept_change_is_detected_retrained_and_recovered(kafka_bootstrap, kafka_settings, registry, instance):
    change_at = 5000
    spec = synthetic_spec(partitions=1)
    defs = _defs(spec, kafka_bootstrap, registry)
    events = list(synthetic_events(rows=10_000, change_at=change_at, seed=11))
    produce(kafka_settings, spec, ((e.event_id.encode(), make_event(e.event_id, e.features, e.label)) for e in events))
    accuracy: list[float] = []
    retrained_at = None
    for index, ranges in enumerate(_batches(kafka_settings, spec, BATCH)):
        assert run_batch(defs, spec, ranges, instance).success
        head = registry.head(spec.name)
        accuracy.append(head.meta["metrics"].get("accuracy", np.nan))
        result = _tick(defs, spec, instance, registry)
        if isinstance(result, dg.RunRequest):
            assert result.job_name == f"{spec.name}_retrain", result
            assert retrained_at is None, "a second action inside the cooldown"
            assert _execute(defs, result, instance).success
            retrained_at = index
    change_batch = change_at // BATCH
    print(f"change at batch {change_batch}, retrain after batch {retrained_at}, accuracy {np.round(accuracy, 3)}")
    assert retrained_at is not None, f"no retrain; accuracy per batch: {np.round(accuracy, 3)}"
    assert change_batch <= retrained_at <= change_batch + 2, (retrained_at, np.round(accuracy, 3))
    pre_drift = np.nanmean(accuracy[2:change_batch])
    assert accuracy[change_batch] < pre_drift - 0.2  # the change really hurt
    assert np.mean(accuracy[-3:]) >= pre_drift - 0.05, np.round(accuracy, 3)  # and the stream recovered
    retrains = [v for v in registry.versions(spec.name) if v.meta.get("retrain")]
    assert len(retrains) == 1 and retrains[0].meta["retrain"]["since"]


def test_a_live_only_change_waits_until_training_has_learned_the_change() -> None:
    """The served champion's live error can rise before any run has read the new concept's rows: a
    retrain then would re-learn the old concept, so the sensor waits (the prequential detector, or
    data drift, names the change point once training reaches it)."""
    from types import SimpleNamespace

    from monitors.decisions import Decision
    from sensors.drift_sensor import _live_change_not_learned_yet

    live = {"metric": "live_error_rate"}
    calm = {"consecutive_drifted": 0, "hysteresis": 3}
    decision = Decision(
        "retrain", ["concept drift: live_error_rate: ..."], {"concept_drift": [live], "data_drift": calm}
    )

    assert "no learned batch shows the change yet" in _live_change_not_learned_yet(
        decision, SimpleNamespace(change_version=None)
    )
    assert _live_change_not_learned_yet(decision, SimpleNamespace(change_version="v9")) is None
    prequential = Decision("retrain", [], {"concept_drift": [{"metric": "error_rate"}, live], "data_drift": calm})
    assert _live_change_not_learned_yet(prequential, SimpleNamespace(change_version=None)) is None


def test_a_drift_retrain_waits_for_a_halt_and_follows_once_it_is_skipped(
    kafka_bootstrap, kafka_settings, registry, instance, tmp_path, monkeypatch
):
    """The sensor launched a drift retrain on a stream halted by data quality: a new head under the
    halted batch, while an operator was deciding about it. It now says the stream is halted and how
    to clear it, records nothing, and retrains at the first tick after `streamfit batches skip`."""
    spec = _halting_spec()
    defs = _defs(spec, kafka_bootstrap, registry)
    events = list(synthetic_events(rows=5000, change_at=3000, seed=11))
    produce(kafka_settings, spec, ((e.event_id.encode(), make_event(e.event_id, e.features, e.label)) for e in events))
    for ranges in _batches(kafka_settings, spec, BATCH):
        assert run_batch(defs, spec, ranges, instance).success
    drifted = _tick(defs, spec, instance, registry)
    assert isinstance(drifted, dg.RunRequest) and drifted.job_name == f"{spec.name}_retrain", drifted

    halt = _halt_on_a_bad_batch(defs, kafka_settings, spec, instance, registry, start=5000)
    decisions = len(registry.decisions(spec.name))
    for _ in range(2):  # every tick while halted: the same skip, nothing recorded
        deferred = _tick(defs, spec, instance, registry)
        assert isinstance(deferred, dg.SkipReason), f"a drift retrain on a halted stream: {deferred}"
        message = deferred.skip_message
        assert f"{spec.name} is HALTED by data quality at run {halt['run_id'][:8]}" in message, message
        assert "Drift retrain deferred until the halt is cleared" in message and "concept drift" in message
        assert f"re-execute run {halt['run_id'][:8]}" in message and f"streamfit batches skip {spec.name}" in message
    assert len(registry.decisions(spec.name)) == decisions
    assert not [v for v in registry.versions(spec.name) if v.meta.get("retrain")]

    streams = tmp_path / "streams"
    streams.mkdir()
    (streams / f"{spec.name}.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    monkeypatch.setenv("STREAMFIT_STREAMS", str(streams))
    skipped = CliRunner().invoke(main, ["batches", "skip", spec.name, "--reason", "bad x0 from a broken sensor"])
    assert skipped.exit_code == 0, skipped.output
    assert registry.halt(spec.name) is None

    request = _tick(defs, spec, instance, registry)
    assert isinstance(request, dg.RunRequest) and request.job_name == f"{spec.name}_retrain", request
    config = request.run_config["ops"][f"{spec.name}_retrain_model"]["config"]
    assert config["reasons"] == drifted.run_config["ops"][f"{spec.name}_retrain_model"]["config"]["reasons"]
    assert _execute(defs, request, instance).success
    assert [v for v in registry.versions(spec.name) if v.meta.get("retrain")]


def test_a_regressed_champion_is_rolled_back_on_a_halted_stream_and_the_halt_stays(
    kafka_bootstrap, kafka_settings, registry, instance
):
    """A rollback trains nothing and moves no offsets; deferring it would leave the regressed champion
    serving for the whole halt and let its rollback window pass (`sensors/drift_halt.py`). It runs,
    says the stream is halted, and leaves the halt to the operator."""
    spec = _halting_spec(drift={"min_comparison_rows": 200})
    defs = _defs(spec, kafka_bootstrap, registry)
    _promote_a_bad_champion_by_hand(defs, kafka_settings, spec, instance, registry)
    halt = _halt_on_a_bad_batch(defs, kafka_settings, spec, instance, registry, start=1000)

    request = _tick(defs, spec, instance, registry)

    assert isinstance(request, dg.RunRequest) and request.job_name == f"{spec.name}_rollback", request
    config = request.run_config["ops"][f"{spec.name}_rollback_champion"]["config"]
    assert config["from_version"] == "v2" and config["to_version"] == "v1"
    (note,) = [r for r in config["reasons"] if "HALTED" in r]
    assert f"{spec.name} is HALTED by data quality at run {halt['run_id'][:8]}" in note and "halt stays" in note
    assert _execute(defs, request, instance).success
    assert registry.champion(spec.name) == "v1"
    assert registry.halt(spec.name) == halt
    (action,) = [d for d in registry.decisions(spec.name) if d.get("action") == "rollback"]
    assert note in action["reasons"]
