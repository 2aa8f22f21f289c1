"""The training chain on a real broker and a real Dagster instance: one batch, DLQ, crashes."""

from __future__ import annotations

import dataclasses

import dagster as dg
import numpy as np
import orjson
import pytest

from assets.training import BatchConfig, batch_run_config, parity_summary, recorded_dlq_from
from dagster_project.dev.datasets import synthetic_events
from dagster_project.dev.producer import produce
from dagster_project.ingest.events import make_event
from dagster_project.kafka import clients
from dagster_project.kafka.io import committed_group_offsets, probe_partitions, read_range
from dagster_project.learning.pipeline import OnnxArtifact
from dagster_project.onnx.export import OnnxModel
from dagster_project.resources import KafkaResource
from dagster_project.spec import StreamSpec
from tests.conftest import synthetic_spec
from tests.helpers import (
    assert_second_version_learned_in_two_workers,
    defs_for,
    high_waters,
    kafka_sensor_tick,
    produce_synthetic,
    read_topic,
    run_batch,
)


def _all_ranges(settings, spec: StreamSpec) -> dict[int, tuple[int, int]]:
    return {s.partition: (0, s.high_water) for s in probe_partitions(settings, spec.events_topic, {})}


def test_full_batch_registers_a_version_with_its_offsets(kafka_settings, spec, registry, stream_defs, instance):
    produced = produce_synthetic(kafka_settings, spec, 600)
    ranges = _all_ranges(kafka_settings, spec)

    result = run_batch(stream_defs, spec, ranges, instance)

    assert result.success
    (version,) = registry.versions(spec.name)
    assert version.learned == {p: end for p, (_, end) in ranges.items()}
    assert version.meta["rows_learned_total"] == produced == 600
    assert registry.champion(spec.name) == version.name
    assert committed_group_offsets(kafka_settings, spec.trainer_group, spec.events_topic) == version.learned
    onnx = OnnxModel(registry.load_onnx(spec.name, version.name))
    assert onnx.predict(np.zeros((3, 5))).labels.shape == (3,)
    checks = [e for e in result.get_asset_check_evaluations() if e.check_name == "onnx_parity"]
    assert checks and checks[0].passed
    assert checks[0].metadata["max_abs_diff"].value <= spec.parity.atol
    assert checks[0].description.startswith("passed on 600 rows: max |onnx - sklearn| ")  # the UI's line


def test_a_failed_parity_check_says_why_in_its_description() -> None:
    """The check's description was empty: the reason was only in its metadata."""
    parity = {"max_abs_diff": 0.00677, "label_mismatches": 5, "rows": 440, "passed": False}
    summary = parity_summary(OnnxArtifact(b"", parity, "5/440 rows differ beyond atol"))
    assert summary == "FAILED on 440 rows: 5/440 rows differ beyond atol; the version is not registered"


def test_second_batch_reports_prequential_metrics(kafka_settings, spec, registry, stream_defs, instance):
    produce_synthetic(kafka_settings, spec, 1000)
    states = probe_partitions(kafka_settings, spec.events_topic, {})
    first = {s.partition: (0, s.high_water // 2) for s in states}
    second = {s.partition: (s.high_water // 2, s.high_water) for s in states}

    assert run_batch(stream_defs, spec, first, instance).success
    result = run_batch(stream_defs, spec, second, instance)

    v1, v2 = registry.versions(spec.name)
    assert v2.parent == v1.name
    assert v2.meta["metrics"]["accuracy"] > 0.85  # the synthetic concept is learnable
    materializations = result.asset_materializations_for_node(f"{spec.name}__model")
    assert materializations[0].metadata["roc_auc"].value > 0.9
    step = materializations[0].metadata["adaptive_sgd"].value  # the default learner says which step serves
    assert materializations[0].metadata["adaptive_serving_passes"].value == step["serving_passes"] in (8, 2)
    assert set(step["recent_loss"]) == {"8_passes", "2_passes"}
    assert step["rows_scored"] == sum(end - start for start, end in second.values())  # scored before learned
    assert v2.meta["adaptive_sgd"] == step  # the version records it too (the exporter reads it from there)


@pytest.mark.parametrize("spec", [synthetic_spec(task="regression", label={})], ids=["regression_without_estimator"])
def test_a_regression_stream_that_names_no_estimator_learns_with_adaptive_sgd(
    kafka_settings, spec, registry, stream_defs, instance
):
    produce_synthetic(kafka_settings, spec, 1000)
    states = probe_partitions(kafka_settings, spec.events_topic, {})
    assert run_batch(stream_defs, spec, {s.partition: (0, s.high_water // 2) for s in states}, instance).success
    result = run_batch(stream_defs, spec, {s.partition: (s.high_water // 2, s.high_water) for s in states}, instance)

    assert result.success
    v1, v2 = registry.versions(spec.name)
    assert type(registry.load_estimator(spec.name, v2.name).steps[-1][1]).__name__ == "AdaptiveSGDRegressor"
    assert 0 <= v2.meta["metrics"]["mae"] < 0.5  # 0/1 targets: better than always guessing one end
    (materialization,) = result.asset_materializations_for_node(f"{spec.name}__model")
    assert materialization.metadata["adaptive_sgd"].value["measure"] == "squared_error"
    values = OnnxModel(registry.load_onnx(spec.name, v2.name)).predict(np.zeros((3, 5), dtype=np.float32)).values
    assert values is not None and values.shape[0] == 3  # served as a regressor


def _send_raw(settings, topic: str, values: list[bytes]) -> None:
    producer = clients.producer(settings)
    for value in values:
        producer.send(topic, value=value, partition=0)
    producer.flush()
    producer.close()


def test_bad_messages_go_to_the_dlq_with_reason_and_source(kafka_settings, spec, registry, stream_defs, instance):
    produce_synthetic(kafka_settings, spec, 300)
    good = {f"x{i}": 0.5 for i in range(5)}
    bad = [
        b"{not json",
        orjson.dumps({"id": "wrong-type", "features": {**good, "x2": "high"}, "label": 1}),
        orjson.dumps({"id": "missing", "features": {k: v for k, v in good.items() if k != "x4"}, "label": 0}),
    ]
    _send_raw(kafka_settings, spec.events_topic, bad)
    ranges = _all_ranges(kafka_settings, spec)

    result = run_batch(stream_defs, spec, ranges, instance)

    assert result.success
    dlq_ranges = {s.partition: (0, s.high_water) for s in probe_partitions(kafka_settings, spec.dlq_topic, {})}
    dead = [orjson.loads(r.value) for r in read_range(kafka_settings, spec.dlq_topic, dlq_ranges)]
    reasons = sorted(d["reason"] for d in dead)
    assert len(dead) == 3
    assert any("not valid JSON" in r for r in reasons)
    assert any("'x2' must be a number" in r for r in reasons)
    assert any("missing feature(s) ['x4']" in r for r in reasons)
    assert {d["topic"] for d in dead} == {spec.events_topic}
    assert all(d["partition"] == 0 and d["offset"] >= ranges[0][0] for d in dead)
    (version,) = registry.versions(spec.name)
    assert version.meta["rows"] == {"read": 303, "valid": 300, "trained": 300, "dlq": 3, "tail": 0}
    assert version.learned == {p: end for p, (_, end) in ranges.items()}  # the bad offsets are handled too


@pytest.mark.parametrize("fault", ["after_train", "after_register"])
def test_crash_then_retry_learns_every_row_exactly_once(
    fault, kafka_settings, spec, registry, stream_defs, instance, monkeypatch
):
    produced = produce_synthetic(kafka_settings, spec, 800)
    states = probe_partitions(kafka_settings, spec.events_topic, {})
    first = {s.partition: (0, s.high_water // 2) for s in states}
    second = {s.partition: (s.high_water // 2, s.high_water) for s in states}
    assert run_batch(stream_defs, spec, first, instance).success

    monkeypatch.setenv("STREAMFIT_FAULT", fault)
    crashed = run_batch(stream_defs, spec, second, instance, raise_on_error=False)
    assert not crashed.success
    versions_after_crash = len(registry.versions(spec.name))
    assert versions_after_crash == (1 if fault == "after_train" else 2)
    committed = committed_group_offsets(kafka_settings, spec.trainer_group, spec.events_topic)
    assert committed == {p: end for p, (_, end) in first.items()}  # the commit comes after the version

    monkeypatch.delenv("STREAMFIT_FAULT")
    assert run_batch(stream_defs, spec, second, instance).success  # the retry replays the same range

    versions = registry.versions(spec.name)
    assert len(versions) == 2
    head = versions[-1]
    assert head.meta["rows_learned_total"] == produced == 800
    assert head.learned == {s.partition: s.high_water for s in states}
    assert committed_group_offsets(kafka_settings, spec.trainer_group, spec.events_topic) == head.learned


def test_a_run_re_executed_after_its_batch_was_learned_registers_nothing(
    kafka_bootstrap, kafka_settings, registry, instance, monkeypatch
):
    """Re-execution reuses the batch an older run read: from failure after another run learned it,
    or from the model step of a run that succeeded, it registered a version learning it twice."""
    batch = {"rows": 200, "max_rows": 1000, "max_wait_s": 3600, "step_retries": 0}
    spec = synthetic_spec(batch=batch)
    job = dg.build_reconstructable_job(
        "tests.helpers",
        "reconstructable_training_job",
        reconstructable_kwargs={
            "name": spec.name,
            "root": str(registry.root),
            "bootstrap": kafka_bootstrap,
            "batch": orjson.dumps(batch).decode(),
        },
    )

    def launch(ranges=None, **options):
        config = None if ranges is None else batch_run_config(spec, ranges).to_config_dict()
        with dg.execute_job(job, instance, run_config=config, raise_on_error=False, **options) as result:
            return result.run_id, result.success

    produced = produce_synthetic(kafka_settings, spec, 600)
    ends = high_waters(kafka_settings, spec.events_topic)
    first, second = {p: (0, e // 2) for p, e in ends.items()}, {p: (e // 2, e) for p, e in ends.items()}
    assert launch(first)[1]
    monkeypatch.setenv("STREAMFIT_FAULT", "after_train")
    failed, ok = launch(second)
    assert not ok
    monkeypatch.delenv("STREAMFIT_FAULT")
    learned, ok = launch(second)  # the sensor plans the same batch again, and it is learned
    assert ok and registry.head(spec.name).meta["rows_learned_total"] == produced

    for parent, options in (
        (failed, dg.ReexecutionOptions.from_failure(failed, instance)),
        (learned, dg.ReexecutionOptions(parent_run_id=learned, step_selection=[f"{spec.name}__model*"])),
    ):
        run_id, ok = launch(reexecution_options=options)
        assert not ok, f"re-executing {parent[:8]} learned its batch again"
        failure = next(e for e in instance.all_logs(run_id) if e.dagster_event and e.dagster_event.is_step_failure)
        assert "was already learned (v2); nothing was registered" in str(
            failure.dagster_event.event_specific_data.error
        )
        assert [v.name for v in registry.versions(spec.name)] == ["v1", "v2"]
        assert registry.head(spec.name).meta["rows_learned_total"] == produced


@pytest.mark.parametrize(
    ("written", "why"),
    [
        # start > end on one partition, beside the next batch on the other: v3 recorded p0 back at 150
        ([(0, 200, 150, None), (1, 200, 250, None)], "must satisfy start <= learn_end <= end"),
        ([(0, 200, 250, 120), (1, 200, 250, None)], "must satisfy start <= learn_end <= end"),  # learned back to 120
        ([(0, 200, 250, None), (0, 250, 260, None)], "partition(s) [0] appear more than once"),
        ([], "at least 1 item"),
        ([(2**40, 0, 5, None)], "less than or equal to 2147483647"),
        ([(0, -5, 5, None)], "greater than or equal to 0"),
    ],
    ids=["start_after_end", "learn_end_before_start", "partition_twice", "no_range", "huge_partition", "negative"],
)
def test_a_hand_written_run_config_that_would_break_exactly_once_is_refused_before_reading(
    kafka_settings, spec, registry, stream_defs, instance, written, why
):
    produce_synthetic(kafka_settings, spec, 600)
    for ranges in ({p: (0, 100) for p in (0, 1)}, {p: (100, 200) for p in (0, 1)}):
        assert run_batch(stream_defs, spec, ranges, instance).success
    config = {"ranges": [{"partition": p, "start": s, "end": e, "learn_end": learn} for p, s, e, learn in written]}
    result = stream_defs.resolve_job_def(f"{spec.name}_training").execute_in_process(
        run_config={"ops": {f"{spec.name}__micro_batch": {"config": config}}}, instance=instance, raise_on_error=False
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert why in str(failure.event_specific_data.error)
    assert [v.name for v in registry.versions(spec.name)] == ["v1", "v2"]
    assert registry.head(spec.name).learned == {0: 200, 1: 200}


@pytest.mark.parametrize("workers", [1, 2], ids=["one_step", "partition_groups"])
def test_a_run_s_config_carries_the_dlq_offsets_its_plan_recorded(workers) -> None:
    """A re-execution reuses the config, so it finds the offsets its first attempt was planned with;
    a config written before they were recorded still validates, and has none (found by time then)."""
    spec = synthetic_spec(partitions=2, model={"scale_out": {"workers": workers}})
    ranges = {0: (0, 10), 1: (5, 9)}
    planned = batch_run_config(spec, ranges, {0: 7, 1: 0}).to_config_dict()
    run = dg.DagsterRun(job_name=f"{spec.name}_training", run_config=planned)
    assert recorded_dlq_from(spec, run) == {0: 7, 1: 0}
    older = batch_run_config(spec, ranges).to_config_dict()
    assert recorded_dlq_from(spec, dg.DagsterRun(job_name=f"{spec.name}_training", run_config=older)) is None
    assert recorded_dlq_from(spec, None) is None
    before_upgrade = {"ranges": [{"partition": 0, "start": 0, "end": 10, "learn_end": None}]}
    assert BatchConfig(**before_upgrade).dlq_offsets() is None
    assert BatchConfig(**before_upgrade, dlq_from={}).dlq_offsets() == {}  # planned when no DLQ existed


def test_a_partition_the_head_never_learned_starts_at_the_broker_s_first_offset(
    kafka_settings, spec, registry, stream_defs, instance
):
    """Partitions the head has not learned may be new: they start where the broker's log does, or
    the rows before their start were recorded as learned (and a missing partition as an offset)."""
    produce_synthetic(kafka_settings, spec, 400)
    assert run_batch(stream_defs, spec, {0: (0, 50)}, instance).success  # p1 not learned yet

    for ranges, why in (
        (
            {0: (50, 100), 1: (20, 60)},
            "partition 1 was never learned and starts at 20, but the broker's first offset is 0",
        ),
        ({0: (50, 100), 5: (7, 7)}, "partition 5 does not exist in the topic"),
    ):
        result = run_batch(stream_defs, spec, ranges, instance, raise_on_error=False)
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        assert why in str(failure.event_specific_data.error) and "batch refused (gap)" in str(
            failure.event_specific_data.error
        )
        assert registry.head(spec.name).learned == {0: 50}

    assert run_batch(stream_defs, spec, {0: (50, 100), 1: (0, 60)}, instance).success
    assert registry.head(spec.name).learned == {0: 100, 1: 60}


def test_a_spec_whose_columns_mean_something_else_now_stops_training_before_reading(
    kafka_bootstrap, kafka_settings, spec, registry, stream_defs, instance
):
    """Features reordered: training went on from v2 reading x4 into x0's weight, and the gate judged
    v2 on the wrong columns; no error anywhere."""
    produce_synthetic(kafka_settings, spec, 600)
    for ranges in ({p: (0, 100) for p in (0, 1)}, {p: (100, 200) for p in (0, 1)}):
        assert run_batch(stream_defs, spec, ranges, instance).success
    edited = synthetic_spec(spec.name, features=[{"name": f"x{i}"} for i in reversed(range(5))])
    defs = defs_for(edited, kafka_bootstrap, registry)

    refused = run_batch(defs, edited, {p: (200, 250) for p in (0, 1)}, instance, raise_on_error=False)
    assert not refused.success
    failure = next(e for e in refused.all_events if e.event_type_value == "STEP_FAILURE")
    error = str(failure.event_specific_data.error)
    assert f"SPEC CHANGED in {spec.name} since v2: input columns reordered" in error and "Restore the spec" in error
    assert [v.name for v in registry.versions(spec.name)] == ["v1", "v2"]
    tick = kafka_sensor_tick(defs, edited, instance, KafkaResource(bootstrap=kafka_bootstrap), registry)
    assert isinstance(tick, dg.SkipReason) and "SPEC CHANGED" in tick.skip_message  # nothing is launched

    assert run_batch(stream_defs, spec, {p: (200, 250) for p in (0, 1)}, instance).success  # restored: learns on


def test_a_spec_whose_estimator_changed_learns_a_fresh_model_of_it(
    kafka_bootstrap, kafka_settings, spec, registry, stream_defs, instance
):
    """The old estimator was continued for ever while the spec and the version's meta named the new one."""
    produce_synthetic(kafka_settings, spec, 600)
    assert run_batch(stream_defs, spec, {p: (0, 100) for p in (0, 1)}, instance).success
    edited = synthetic_spec(spec.name, model={"estimator": "mlp_classifier"})

    assert run_batch(
        defs_for(edited, kafka_bootstrap, registry), edited, {p: (100, 200) for p in (0, 1)}, instance
    ).success
    v2 = registry.head(spec.name)
    assert type(registry.load_estimator(spec.name, "v2")[-1]).__name__ == "MLPClassifier"
    assert v2.meta["estimator"] == "mlp_classifier" and v2.parent == "v1" and v2.learned == {0: 200, 1: 200}
    assert v2.meta["lineage"]["from"] is None and "model changed" in v2.meta["lineage"]["why"]


def test_a_spec_whose_model_parameters_changed_learns_a_fresh_model_with_them(
    kafka_bootstrap, kafka_settings, spec, registry, stream_defs, instance
):
    """The continued estimator kept the step size it was built with: the spec's new one was never used."""
    produce_synthetic(kafka_settings, spec, 600)
    assert run_batch(stream_defs, spec, {p: (0, 100) for p in (0, 1)}, instance).success
    edited = synthetic_spec(spec.name, model={"params": {"eta0": 0.05}})
    edited_defs = defs_for(edited, kafka_bootstrap, registry)

    assert run_batch(edited_defs, edited, {p: (100, 200) for p in (0, 1)}, instance).success
    v2 = registry.head(spec.name)
    assert registry.load_estimator(spec.name, "v2")[-1].eta0 == 0.05
    assert v2.meta["models"][edited.model.label]["params"] == {"eta0": 0.05} and v2.learned == {0: 200, 1: 200}
    assert v2.meta["lineage"]["from"] is None and 'params {} -> {"eta0":0.05}' in v2.meta["lineage"]["why"]

    assert run_batch(edited_defs, edited, {p: (200, 280) for p in (0, 1)}, instance).success  # unchanged since
    assert registry.head(spec.name).meta["lineage"]["from"] == "v2"


def test_a_batch_that_skips_offsets_is_refused(kafka_settings, spec, registry, stream_defs, instance):
    produce_synthetic(kafka_settings, spec, 400)
    states = probe_partitions(kafka_settings, spec.events_topic, {})
    assert run_batch(stream_defs, spec, {s.partition: (0, 50) for s in states}, instance).success

    result = run_batch(stream_defs, spec, {s.partition: (60, 100) for s in states}, instance, raise_on_error=False)

    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "batch refused (gap)" in str(failure.event_specific_data.error)
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]  # it fails alike every time
    assert len(registry.versions(spec.name)) == 1


@pytest.mark.parametrize(
    "spec", [synthetic_spec(model={"scale_out": {"workers": 2, "min_rows_per_worker": 100}})], ids=["scale_out"]
)
def test_scaled_out_batch_registers_one_version_with_the_batch_offsets(
    kafka_settings, spec, registry, stream_defs, instance
):
    produce_synthetic(kafka_settings, spec, 1000)
    states = probe_partitions(kafka_settings, spec.events_topic, {})
    first = {s.partition: (0, s.high_water // 2) for s in states}
    second = {s.partition: (s.high_water // 2, s.high_water) for s in states}

    assert run_batch(stream_defs, spec, first, instance).success
    result = run_batch(stream_defs, spec, second, instance)

    assert result.success
    assert_second_version_learned_in_two_workers(registry, spec, second, kafka_settings)
    (materialization,) = result.asset_materializations_for_node(f"{spec.name}__model")
    assert materialization.metadata["scale_out_workers"].value == 2
    assert materialization.metadata["scale_out"].value["groups"] == ["p0", "p1"]  # one learner per partition
    assert materialization.metadata["scale_out"].value["group_rows"] == [end - start for start, end in second.values()]


@pytest.mark.parametrize(
    "spec",
    [
        synthetic_spec(),
        synthetic_spec(model={"scale_out": {"workers": 2, "min_rows_per_worker": 100}}),
        synthetic_spec(task="regression", label={}),
    ],
    ids=["sequential", "scale_out", "regression_label"],
)
def test_a_batch_with_a_wild_value_learns_it_clipped_and_says_so(kafka_settings, spec, registry, stream_defs, instance):
    """One reading of 1e9 among standard-normal ones (or a regression label of 1e9 among 0s and 1s)
    is clipped to 10 learned standard deviations for learning, and the run names it: the operator
    sees the sensor gone wild."""
    in_label = spec.task == "regression"
    events = list(synthetic_events(rows=1000, change_at=10**9, seed=7))
    wild = events[700]
    if in_label:
        events[700] = dataclasses.replace(wild, label=1e9)
    else:
        events[700] = dataclasses.replace(wild, features={**wild.features, "x0": 1e9})
    pairs = ((e.event_id.encode(), make_event(e.event_id, e.features, e.label, 0.0)) for e in events)
    produce(kafka_settings, spec, pairs)
    states = probe_partitions(kafka_settings, spec.events_topic, {})
    assert run_batch(stream_defs, spec, {s.partition: (0, s.high_water // 2) for s in states}, instance).success

    result = run_batch(stream_defs, spec, {s.partition: (s.high_water // 2, s.high_water) for s in states}, instance)

    assert result.success
    (materialization,) = result.asset_materializations_for_node(f"{spec.name}__model")
    assert materialization.metadata["clipped_labels" if in_label else "clipped_values"].value == 1
    (line,) = [e.user_message for e in instance.all_logs(result.run_id) if "were clipped" in e.user_message]
    assert "1 value(s) beyond 10 learned standard deviations were clipped" in line
    assert f"{'label' if in_label else 'x0'}: 1 (e.g. 1e+09; learned range " in line
    model = registry.load_estimator(spec.name, "v2")
    if in_label:
        assert model.label_moments_.std < 1  # unclipped, this one label made it about 3e7
    else:
        assert model.steps[0][1].var_[0] < 2  # unclipped, this one value made it about 2e15


WINDOWED = synthetic_spec(model={"estimator": "hist_gradient_boosting_classifier", "window_rows": 500})
# kNN's ONNX graph embeds its window and computes distances with onnxruntime's CDist: it passes the
# product's parity check and registers like any windowed model.
WINDOWED_KNN = synthetic_spec(model={"estimator": "k_neighbors_classifier", "window_rows": 500})


def _thirds(settings, spec: StreamSpec) -> list[dict[int, tuple[int, int]]]:
    states = probe_partitions(settings, spec.events_topic, {})
    cuts = [{s.partition: s.high_water * k // 3 for s in states} for k in range(4)]
    return [{p: (cuts[k][p], cuts[k + 1][p]) for p in cuts[0]} for k in range(3)]


@pytest.mark.parametrize("spec", [WINDOWED, WINDOWED_KNN], ids=["windowed", "knn"])
def test_a_windowed_refit_reads_exactly_its_window_and_records_it(
    kafka_settings, spec, registry, stream_defs, instance
):
    produce_synthetic(kafka_settings, spec, 600)
    _send_raw(kafka_settings, spec.events_topic, [b"{not json"])  # a dead letter on partition 0
    produce_synthetic(kafka_settings, spec, 300, start=600)
    batches = _thirds(kafka_settings, spec)

    for ranges in batches:
        assert run_batch(stream_defs, spec, ranges, instance).success

    v1, v2, v3 = registry.versions(spec.name)
    assert v3.learned == {p: end for p, (_, end) in batches[2].items()}  # offsets advance as for any model
    assert v3.meta["rows_learned_total"] == 900
    window = v3.meta["window"]
    # 901 offsets in thirds of ~300: the window holds the newest whole batches within 500 offsets.
    expected = {str(p): [[s, e]] for p, (s, e) in batches[2].items()}
    assert window["fitted_on"]["ranges"] == expected
    assert window["fitted_on"]["read"] == {}  # the newest batch alone: nothing older to read back
    assert window["refit"] and window["reason"] == "refit every 1 batch(es)"
    v2_window = v2.meta["window"]["fitted_on"]
    # v2's window is batches 1 and 2 (600 offsets > 500: batch 2 alone); v1's was its own batch.
    assert v2_window["ranges"] == {str(p): [[s, e]] for p, (s, e) in batches[1].items()}
    assert v3.meta["metrics"]["accuracy"] > 0.85
    assert len(read_topic(kafka_settings, spec.dlq_topic)) == 1  # dead-lettered once, when its batch was learned


@pytest.mark.parametrize(
    "spec",
    [synthetic_spec(model={"estimator": "random_forest_classifier", "window_rows": 2000, "refit_every": 1})],
    ids=["windowed"],
)
def test_a_refit_reads_older_batches_back_without_the_rows_training_excluded(
    kafka_settings, spec, registry, stream_defs, instance
):
    produce_synthetic(kafka_settings, spec, 300)
    _send_raw(kafka_settings, spec.events_topic, [b"{not json", b"[]"])
    produce_synthetic(kafka_settings, spec, 600, start=300)
    batches = _thirds(kafka_settings, spec)

    for ranges in batches:
        assert run_batch(stream_defs, spec, ranges, instance).success

    head = registry.versions(spec.name)[-1]
    fitted_on = head.meta["window"]["fitted_on"]
    assert fitted_on["ranges"] == {str(p): [[0, batches[2][p][1]]] for p in batches[2]}
    assert fitted_on["read"] == {str(p): [0, batches[2][p][0]] for p in batches[2]}
    assert fitted_on["offsets"] == 902 and fitted_on["rows"] == 900  # the two dead letters stay out
    assert len(read_topic(kafka_settings, spec.dlq_topic)) == 2  # re-reading the window dead-letters nothing again


@pytest.mark.parametrize(
    "spec",
    [synthetic_spec(model={"estimator": "hist_gradient_boosting_classifier", "window_rows": 2000})],
    ids=["windowed"],
)
def test_crash_during_a_refit_then_retry_learns_every_row_exactly_once(
    kafka_settings, spec, registry, stream_defs, instance, monkeypatch
):
    produced = produce_synthetic(kafka_settings, spec, 900)
    first, second, third = _thirds(kafka_settings, spec)
    assert run_batch(stream_defs, spec, first, instance).success

    monkeypatch.setenv("STREAMFIT_FAULT", "during_refit")  # after the window is read back, before the fit
    crashed = run_batch(stream_defs, spec, second, instance, raise_on_error=False)
    assert not crashed.success
    assert len(registry.versions(spec.name)) == 1
    monkeypatch.delenv("STREAMFIT_FAULT")
    assert run_batch(stream_defs, spec, second, instance).success
    assert run_batch(stream_defs, spec, third, instance).success

    versions = registry.versions(spec.name)
    assert len(versions) == 3
    head = versions[-1]
    assert head.meta["rows_learned_total"] == produced == 900
    assert head.learned == {p: end for p, (_, end) in third.items()}
    assert versions[1].meta["window"]["fitted_on"]["read"] == {str(p): list(r) for p, r in first.items()}
    assert head.meta["window"]["fitted_on"]["rows"] == 900  # every row once in the window, none twice
    assert committed_group_offsets(kafka_settings, spec.trainer_group, spec.events_topic) == head.learned


@pytest.mark.parametrize(
    "spec",
    [synthetic_spec(partitions=1, model={"estimator": "k_neighbors_classifier", "window_rows": 1000})],
    ids=["knn"],
)
def test_after_a_located_drift_retrain_the_knn_window_reads_only_post_change_offsets_and_grows_back(
    kafka_settings, spec, registry, stream_defs, instance
):
    """The concept flips at row 650, inside the batch [400, 800) the detector names. The drift retrain
    fits kNN from the located change; the training runs after it read back and record only offsets
    from there, until the window reaches its cap and slides in whole batches."""
    from dagster_project.dev.datasets import synthetic_events
    from dagster_project.dev.producer import produce
    from dagster_project.ingest.events import make_event
    from dagster_project.learning.retraining import retrain

    events = list(synthetic_events(rows=2_000, change_at=650, seed=3))
    produce(
        kafka_settings, spec, ((e.event_id.encode(), make_event(e.event_id, e.features, e.label, 0.0)) for e in events)
    )
    for k in range(2):
        assert run_batch(stream_defs, spec, {0: (400 * k, 400 * (k + 1))}, instance).success
    _, v2 = registry.versions(spec.name)

    retrained = retrain(kafka_settings, registry, spec, ["error rate rose"], "run-retrain", since=v2.name)
    start = retrained.meta["retrain"]["change_at"]["0"]
    assert 600 <= start <= 700, f"the change (row 650) was located at {start}"
    assert retrained.meta["window"]["fitted_on"]["ranges"] == {"0": [[start, 800]]}

    fitted = []
    for k in range(2, 5):
        assert run_batch(stream_defs, spec, {0: (400 * k, 400 * (k + 1))}, instance).success
        head = registry.head(spec.name)
        assert head.meta["window"]["reason"] == "refit every 1 batch(es)"
        fitted.append(head.meta["window"]["fitted_on"])
    assert [f["ranges"]["0"] for f in fitted] == [[[start, 1200]], [[start, 1600]], [[1200, 2000]]]
    assert [f["read"] for f in fitted] == [{"0": [start, 800]}, {"0": [start, 1200]}, {"0": [1200, 1600]}]
    assert fitted[-1]["offsets"] == 800 and all(f["offsets"] <= spec.model.window for f in fitted)
    head = registry.head(spec.name)
    assert head.learned == {0: 2_000} and head.meta["rows_learned_total"] == 2_000  # exactly once throughout


def test_a_candidate_family_whose_settings_changed_is_not_judged_by_its_old_model() -> None:
    """The run's clipping warning is judged by the member that learns the batch: a family whose
    parameters changed starts afresh (and clips nothing yet), so its old model must not speak for it."""
    from types import SimpleNamespace

    from assets.training import clipped_outliers_metadata
    from tests.dagster_project.learning.test_families import FAMILIES, learn, make_spec
    from tests.dagster_project.learning.test_windowed import RecordingReader, stream

    X, y = stream(1000, seed=2)
    model, _ = learn(make_spec(), RecordingReader(X, y), range(3))
    wild = X[:100].copy()
    wild[5, 0] = 1e9
    warnings: list[str] = []
    context = SimpleNamespace(log=SimpleNamespace(warning=warnings.append))
    edited = StreamSpec(
        **{
            **make_spec().model_dump(),
            "model": {"candidates": [{**FAMILIES[0], "params": {"alpha": 0.05}}, FAMILIES[1]]},
        }
    )

    assert clipped_outliers_metadata(make_spec(), model, wild, y[:100], context) == {"clipped_values": 1}
    assert clipped_outliers_metadata(edited, model, wild, y[:100], context) == {}
    assert len(warnings) == 1
