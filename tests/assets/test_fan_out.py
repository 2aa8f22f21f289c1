"""The fanned-out `model` asset (assets/fan_out.py) on a real broker and a real Dagster instance."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from dagster_project import names
from dagster_project.factory import build_stream_definitions
from dagster_project.kafka.io import committed_group_offsets, probe_partitions
from dagster_project.learning.adaptive_sgd import step_of
from dagster_project.orchestration.jobs import run_training_job
from dagster_project.resources import KafkaResource, RegistryResource
from dagster_project.spec import StreamSpec
from tests.conftest import synthetic_spec
from tests.helpers import assert_second_version_learned_in_two_workers, produce_synthetic, read_topic, run_batch


def fanned() -> StreamSpec:
    """A 4-partition stream learned by 2 partition-group steps (a fresh name: topics are never shared)."""
    return synthetic_spec(partitions=4, model={"scale_out": {"workers": 2, "min_rows_per_worker": 100}})


@pytest.fixture
def spec() -> StreamSpec:
    return fanned()


def _halves(settings, spec: StreamSpec) -> tuple[dict, dict]:
    states = probe_partitions(settings, spec.events_topic, {})
    first = {s.partition: (0, s.high_water // 2) for s in states}
    return first, {s.partition: (s.high_water // 2, s.high_water) for s in states}


def _job(spec: StreamSpec) -> dg.JobDefinition:
    resources = {"kafka": KafkaResource(bootstrap="unused:9092"), "registry": RegistryResource()}
    defs = dg.Definitions.merge(build_stream_definitions(spec), dg.Definitions(resources=resources))
    return defs.resolve_job_def(names.training_job(spec.name))


def _step_keys(result) -> set[str]:
    return {e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}


def test_a_batch_over_four_partitions_learned_by_two_group_steps_is_one_version(
    kafka_settings, spec, registry, stream_defs, instance
):
    produce_synthetic(kafka_settings, spec, 2000)
    first, second = _halves(kafka_settings, spec)
    assert run_batch(stream_defs, spec, first, instance).success

    result = run_batch(stream_defs, spec, second, instance)

    assert {f"{spec.name}__model.{spec.name}__fit_group[g0]", f"{spec.name}__model.{spec.name}__fit_group[g1]"} <= (
        _step_keys(result)
    )
    # one version per batch, not one per group
    v2 = assert_second_version_learned_in_two_workers(registry, spec, second, kafka_settings)
    (materialization,) = result.asset_materializations_for_node(f"{spec.name}__model")
    assert materialization.metadata["scale_out"].value["groups"] == ["p0,2", "p1,3"]
    assert sum(materialization.metadata["scale_out"].value["group_rows"]) == sum(e - s for s, e in second.values())
    # The default learner (adaptive SGD) says which step the combined model serves, as a one-step batch does.
    step = step_of(registry.load_estimator(spec.name, v2.name))
    assert step["rows_scored"] == sum(e - s for s, e in second.values())  # the first batch is never scored
    assert materialization.metadata["adaptive_serving_passes"].value == step["serving_passes"]
    assert materialization.metadata["adaptive_sgd"].value == step

    # The combined model's scaler is the one a single process fitting every row would have.
    rows = read_topic(kafka_settings, spec.events_topic)
    X = np.array([[r["features"][f"x{i}"] for i in range(5)] for r in rows])
    sequential = StandardScaler().partial_fit(X)
    merged = registry.load_estimator(spec.name, v2.name).steps[0][1]
    assert merged.n_samples_seen_ == sequential.n_samples_seen_ == 2000
    for attr in ("mean_", "var_", "scale_"):
        np.testing.assert_allclose(getattr(merged, attr), getattr(sequential, attr), rtol=1e-10, atol=1e-12)


def test_a_failed_group_step_registers_nothing_and_the_retry_learns_the_batch_once(
    kafka_settings, spec, registry, stream_defs, instance, monkeypatch
):
    produced = produce_synthetic(kafka_settings, spec, 1600)
    first, second = _halves(kafka_settings, spec)
    assert run_batch(stream_defs, spec, first, instance).success

    monkeypatch.setenv("STREAMFIT_FAULT", "fit_group_g1")
    crashed = run_batch(stream_defs, spec, second, instance, raise_on_error=False)
    assert not crashed.success
    assert f"{spec.name}__model.{spec.name}__fit_group[g0]" in _step_keys(crashed)  # the other group did finish
    assert len(registry.versions(spec.name)) == 1
    assert committed_group_offsets(kafka_settings, spec.trainer_group, spec.events_topic) == {
        p: end for p, (_, end) in first.items()
    }

    monkeypatch.delenv("STREAMFIT_FAULT")
    assert run_batch(stream_defs, spec, second, instance).success  # the retry replays the same ranges

    v1, v2 = registry.versions(spec.name)
    assert v2.meta["rows_learned_total"] == produced == 1600
    assert v2.learned == {p: end for p, (_, end) in second.items()}


def test_workers_1_keeps_the_single_in_process_step() -> None:
    spec = fanned()
    plain, fanned_out = _job(synthetic_spec()), _job(spec)

    assert plain.executor_def.name == "in_process"
    assert not any(isinstance(node.definition, dg.GraphDefinition) for node in plain.graph.nodes)
    assert sorted(node.name.split("__")[1] for node in plain.graph.nodes) == [
        "champion",
        "micro_batch",
        "model",
        "model_version",
        "onnx_model",
    ]
    assert fanned_out.executor_def.name == "fan_out_executor"
    assert sorted(node.name for node in fanned_out.graph.nodes if isinstance(node.definition, dg.GraphDefinition)) == [
        f"{spec.name}__micro_batch",
        f"{spec.name}__model",
    ]


@pytest.mark.one_broker  # the subject is Dagster's multiprocess executor; the broker reads are the tests above
def test_the_group_steps_run_in_their_own_processes_on_the_multiprocess_executor(
    kafka_bootstrap, kafka_settings, spec, registry, instance, specs_dir, monkeypatch
):
    monkeypatch.setenv("STREAMFIT_KAFKA_BOOTSTRAP", kafka_bootstrap)
    produce_synthetic(kafka_settings, spec, 800)
    ranges = {s.partition: (0, s.high_water) for s in probe_partitions(kafka_settings, spec.events_topic, {})}

    result = run_training_job(spec, ranges, instance)

    assert result.success
    starts = {
        e.step_key: e.pid for e in result.all_events if e.event_type_value == "STEP_START" and "fit_group" in e.step_key
    }
    assert len(starts) == 2 and len(set(starts.values())) == 2, starts
    (version,) = registry.versions(spec.name)
    assert version.learned == {p: end for p, (_, end) in ranges.items()}
