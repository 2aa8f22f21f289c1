"""Data-quality policies end to end on a real broker and Dagster instance: halt, quarantine, split."""

from __future__ import annotations

import dagster as dg
import orjson
import pytest
from click.testing import CliRunner

from assets.training import restore_inherited_retries
from dagster_project.cli import main
from dagster_project.kafka import clients
from dagster_project.kafka.io import ensure_topics, probe_partitions, read_range
from dagster_project.orchestration.issued_names import highest_issued
from dagster_project.quality.quarantine import QuarantineStore
from dagster_project.resources import KafkaResource
from tests.conftest import synthetic_spec
from tests.helpers import defs_for, failing_job, kafka_sensor_tick, produce_synthetic, run_batch


def _spec(model: dict | None = None, **quality):
    return synthetic_spec(
        partitions=1,
        features=[{"name": "x0", "min": -10, "max": 10}] + [{"name": f"x{i}"} for i in range(1, 5)],
        quality=quality,
        **({"model": model} if model else {}),
    )


def _send(settings, spec, rows: list[dict]) -> None:
    ensure_topics(settings, [spec.events_topic, spec.dlq_topic], spec.partitions)
    producer = clients.producer(settings)
    for row in rows:
        producer.send(spec.events_topic, key=row["id"].encode(), value=orjson.dumps(row))
    producer.flush()
    producer.close()


def _bad_rows(n: int, prefix: str = "bad") -> list[dict]:
    return [
        {"id": f"{prefix}-{i}", "features": {"x0": 50.0, "x1": 0, "x2": 0, "x3": 0, "x4": 0}, "label": 1}
        for i in range(n)
    ]


def _next_range(settings, spec, start: int) -> dict[int, tuple[int, int]]:
    (state,) = probe_partitions(settings, spec.events_topic, {})
    return {0: (start, state.high_water)}


def _check(result, spec) -> dg.AssetCheckEvaluation:
    return next(e for e in result.get_asset_check_evaluations() if e.check_name == "data_quality")


def test_a_halted_batch_s_run_is_not_retried_by_the_daemon_but_a_failed_one_is(
    kafka_bootstrap, kafka_settings, registry, tmp_path, monkeypatch
):
    """With run retries on (Streamfit's instance), a run whose batch failed its checks was re-run
    twice: the same rows failed the same checks, and each attempt recorded the halt again under a new
    run id while the sensor had already named the first. Other failures are still retried."""
    spec = _spec(policy="halt")
    defs = defs_for(spec, kafka_bootstrap, registry)
    produce_synthetic(kafka_settings, spec, 200)
    _send(kafka_settings, spec, _bad_rows(3))
    retries = {"run_retries": {"enabled": True, "max_retries": 2}}
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home"), overrides=retries) as instance:
        halted = run_batch(defs, spec, _next_range(kafka_settings, spec, 0), instance, raise_on_error=False)
        assert not halted.success and registry.halt(spec.name)["run_id"] == halted.run_id
        assert instance.get_run_by_id(halted.run_id).tags["dagster/will_retry"] == "false"

        # Re-executed from the UI, the halted run's tags are copied: its `dagster/max_retries: 0` is set
        # back to the instance's by the new run's first step, so the fix runs with retries again.
        tags = {**instance.get_run_by_id(halted.run_id).tags, "dagster/parent_run_id": halted.run_id}
        child = instance.create_run_for_job(
            failing_job, parent_run_id=halted.run_id, root_run_id=halted.run_id, tags=tags
        )
        assert child.tags["dagster/max_retries"] == "0"
        restore_inherited_retries(instance, child)
        assert instance.get_run_by_id(child.run_id).tags["dagster/max_retries"] == "2"

        registry.clear_halt(spec.name, {"resolution": "test"})
        monkeypatch.setenv("STREAMFIT_FAULT", "after_train")  # a crash: the retry learns the batch
        failed = run_batch(defs, spec, {0: (0, 200)}, instance, raise_on_error=False)
        assert not failed.success
        assert instance.get_run_by_id(failed.run_id).tags["dagster/will_retry"] == "true"


def test_halt_stops_the_stream_until_an_operator_skips(
    kafka_bootstrap, kafka_settings, registry, instance, tmp_path, monkeypatch
):
    spec = _spec(policy="halt")
    defs = defs_for(spec, kafka_bootstrap, registry)
    produce_synthetic(kafka_settings, spec, 200)
    _send(kafka_settings, spec, _bad_rows(3))
    first = _next_range(kafka_settings, spec, 0)

    result = run_batch(defs, spec, first, instance, raise_on_error=False)

    check = _check(result, spec)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.metadata["unexpected_rows"].value == 3
    assert registry.versions(spec.name) == []
    skip = kafka_sensor_tick(defs, spec, instance, KafkaResource(bootstrap=kafka_bootstrap), registry)
    assert (
        isinstance(skip, dg.SkipReason) and "HALTED by data quality" in skip.skip_message and "x0" in skip.skip_message
    )

    streams = tmp_path / "streams"
    streams.mkdir()
    (streams / f"{spec.name}.yaml").write_text(orjson.dumps(spec.model_dump(mode="json")).decode())
    monkeypatch.setenv("STREAMFIT_STREAMS", str(streams))
    monkeypatch.setenv("USER", "alice")
    out = CliRunner().invoke(main, ["batches", "skip", spec.name, "--reason", "sensor glitch"])
    assert out.exit_code == 0, out.output
    produce_synthetic(kafka_settings, spec, 200, start=200)
    tick = kafka_sensor_tick(defs, spec, instance, KafkaResource(bootstrap=kafka_bootstrap), registry)
    request = tick.run_requests[0]
    ranges = {int(p): tuple(r) for p, r in orjson.loads(request.tags["streamfit/ranges"]).items()}
    assert ranges == {0: (first[0][1], first[0][1] + 200)}
    assert run_batch(defs, spec, ranges, instance).success
    (v1,) = registry.versions(spec.name)
    assert v1.meta["offset_reset_applied"]["by"] == "alice"
    assert "sensor glitch" in v1.meta["offset_reset_applied"]["reason"]


def test_a_halted_batch_run_again_dead_letters_each_malformed_message_once(
    kafka_bootstrap, kafka_settings, registry, instance
):
    """The batch halts (a rule breaks) after its malformed messages went to the DLQ; running the
    same ranges again (the halt says: fix the cause, re-execute) must not send them again."""
    spec = _spec(policy="halt")
    defs = defs_for(spec, kafka_bootstrap, registry)
    produce_synthetic(kafka_settings, spec, 100)
    _send(kafka_settings, spec, _bad_rows(3))
    producer = clients.producer(kafka_settings)
    for i in range(4):
        producer.send(spec.events_topic, key=b"m%d" % i, value=b"{not json %d" % i)
    producer.flush()
    producer.close()
    ranges = _next_range(kafka_settings, spec, 0)

    for attempt in range(3):
        result = run_batch(defs, spec, ranges, instance, raise_on_error=False)
        assert not _check(result, spec).passed, attempt
        assert registry.halt(spec.name) is not None
        letters = [
            orjson.loads(r.value) for r in read_range(kafka_settings, spec.dlq_topic, _dlq_ranges(kafka_settings, spec))
        ]
        assert sorted(letter["offset"] for letter in letters) == [103, 104, 105, 106], attempt


def _dlq_ranges(settings, spec) -> dict[int, tuple[int, int]]:
    return {s.partition: (s.log_start, s.high_water) for s in probe_partitions(settings, spec.dlq_topic, {})}


@pytest.mark.parametrize("model", [None, {"estimator": "hist_gradient_boosting_classifier"}], ids=["sgd", "windowed"])
def test_quarantine_advances_and_replays_exactly_once(model, kafka_bootstrap, kafka_settings, registry, instance):
    spec = _spec(model, policy="quarantine")
    defs = defs_for(spec, kafka_bootstrap, registry)
    produce_synthetic(kafka_settings, spec, 200)
    assert run_batch(defs, spec, _next_range(kafka_settings, spec, 0), instance).success
    produce_synthetic(kafka_settings, spec, 100, start=200)
    _send(kafka_settings, spec, _bad_rows(5))
    second = _next_range(kafka_settings, spec, 200)

    result = run_batch(defs, spec, second, instance)

    check = _check(result, spec)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    (entry,) = QuarantineStore().list(spec.name)
    assert entry.meta["rows"] == 105 and entry.meta["ranges"] == {"0": list(second[0])}
    assert len(registry.versions(spec.name)) == 1
    produce_synthetic(kafka_settings, spec, 200, start=300)
    assert run_batch(defs, spec, _next_range(kafka_settings, spec, second[0][1]), instance).success
    v2 = registry.head(spec.name)
    assert "quarantined" in v2.meta["offset_reset_applied"]["reason"]

    runner = CliRunner()
    env = _cli_env(spec, registry)
    if model:  # a windowed model's refit reads the rest of its window back: without a broker it says so
        unset = env | {"STREAMFIT_KAFKA_BOOTSTRAP": None}  # None: unset for the command
        without = runner.invoke(main, ["quarantine", "replay", spec.name, entry.id, "--force"], env=unset)
        assert without.exit_code == 1 and "STREAMFIT_KAFKA_BOOTSTRAP" in without.output, without.output
        env |= {"STREAMFIT_KAFKA_BOOTSTRAP": kafka_bootstrap}
    name = "v3"
    if not model:  # this instance registered up to v9 before the registry was restored to v2
        event = dg.AssetMaterialization([spec.name, "model_version"], metadata={"version": "v9"})
        instance.report_runless_asset_event(event)
        env |= {"DAGSTER_HOME": instance.root_directory}
        name = "v10"
    replay = runner.invoke(main, ["quarantine", "replay", spec.name, entry.id, "--force"], env=env)
    assert replay.exit_code == 0, replay.output
    v3 = registry.head(spec.name)
    assert v3.name == name and highest_issued(instance, spec.name) == int(name[1:])  # reported to the instance
    assert v3.meta["replay"]["quarantine"] == entry.id and v3.meta["rows"]["trained"] == 105
    assert v3.meta["rows_learned_total"] == v2.meta["rows_learned_total"] + 105
    assert v3.learned == v2.learned  # the stream's position does not move back
    if model:  # the replayed batch joined the window between the two learned ones: all 505 rows refit
        assert v3.meta["window"]["fitted_on"]["rows"] == 505
        assert v3.meta["window"]["fitted_on"]["ranges"] == {"0": [[0, v2.learned[0]]]}
    again = runner.invoke(main, ["quarantine", "replay", spec.name, entry.id, "--force"], env=env)
    assert again.exit_code == 1 and f"already replayed by {name}" in again.output


def test_partial_batches_split_bad_rows_to_the_dlq(kafka_bootstrap, kafka_settings, registry, instance):
    spec = _spec(policy="halt", allow_partial=True)
    defs = defs_for(spec, kafka_bootstrap, registry)
    produce_synthetic(kafka_settings, spec, 200)
    _send(kafka_settings, spec, _bad_rows(4))

    assert run_batch(defs, spec, _next_range(kafka_settings, spec, 0), instance).success

    (v1,) = registry.versions(spec.name)
    assert v1.meta["rows"]["trained"] == 200 and v1.learned == {0: 204}
    (dlq,) = probe_partitions(kafka_settings, spec.dlq_topic, {})
    dead = [orjson.loads(r.value) for r in read_range(kafka_settings, spec.dlq_topic, {0: (0, dlq.high_water)})]
    assert len(dead) == 4 and all(d["reason"].startswith("data quality:") and "x0" in d["reason"] for d in dead)
    assert sorted(d["offset"] for d in dead) == [200, 201, 202, 203]


def test_a_partial_batch_s_counts_add_up_with_its_split_off_rows_dead_lettered(
    kafka_bootstrap, kafka_settings, registry, instance
):
    """meta.json read {'read': 420, 'valid': 409, 'dlq': 10} with 11 dead letters on the topic, and
    `streamfit_rows{fate="dlq"}` said 10: the rows the quality step split off were counted nowhere."""
    from dagster_project.observability.exporter import TrainingCollector

    spec = _spec(policy="halt", allow_partial=True)
    defs = defs_for(spec, kafka_bootstrap, registry)
    produce_synthetic(kafka_settings, spec, 200)
    _send(kafka_settings, spec, _bad_rows(4) + [{"id": "broken", "features": {"x0": 1.0}, "label": 1}])

    assert run_batch(defs, spec, _next_range(kafka_settings, spec, 0), instance).success

    (v1,) = registry.versions(spec.name)
    rows = v1.meta["rows"]
    assert rows["read"] == 205 and rows["valid"] == 200 and rows["dlq"] == 5
    assert rows["read"] == rows["valid"] + rows["dlq"]  # the tail is counted by the version that learns it
    (dlq,) = probe_partitions(kafka_settings, spec.dlq_topic, {})
    assert dlq.high_water == rows["dlq"]
    (family,) = [m for m in TrainingCollector(registry, [spec], None).collect() if m.name == "streamfit_rows"]
    samples = {s.labels["fate"]: s.value for s in family.samples if s.name == "streamfit_rows_total"}
    assert samples["read"] == 205 and samples["dlq"] == 5


def test_a_schema_change_halts_with_the_feature_named(kafka_bootstrap, kafka_settings, registry, instance):
    spec = _spec(policy="halt")
    defs = defs_for(spec, kafka_bootstrap, registry)
    renamed = [
        {"id": f"n-{i}", "features": {"x0": 1, "x1": 0, "x2": 0, "x3": 0, "x4": 0, "x5": 1}, "label": 0}
        for i in range(20)
    ]
    _send(kafka_settings, spec, renamed)

    result = run_batch(defs, spec, _next_range(kafka_settings, spec, 0), instance, raise_on_error=False)

    check = _check(result, spec)
    assert not check.passed
    halt = registry.halt(spec.name)
    assert "unknown feature(s) ['x5']" in halt["summary"]
    assert registry.versions(spec.name) == []


def _cli_env(spec, registry) -> dict[str, str | None]:
    import os
    import tempfile

    streams = tempfile.mkdtemp()
    with open(os.path.join(streams, f"{spec.name}.yaml"), "w") as fh:
        fh.write(orjson.dumps(spec.model_dump(mode="json")).decode())
    return {"STREAMFIT_STREAMS": streams, "USER": "bob", "STREAMFIT_HOME": str(registry.root.parent)}
