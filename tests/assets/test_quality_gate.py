"""Data-quality policies end to end on a real broker and Dagster instance: halt, quarantine, split."""

from __future__ import annotations

import dagster as dg
import orjson
import pytest
from click.testing import CliRunner

from assets.training import restore_inherited_retries
from dagster_project.cli import main
from dagster_project.kafka import clients
from dagster_project.kafka.io import ensure_topics, probe_partitions, read_range, transaction_support
from dagster_project.observability.exporter import exporter_registry
from dagster_project.orchestration.issued_names import highest_issued
from dagster_project.quality.passed_over import nothing_but_dead_letters
from dagster_project.quality.quarantine import QuarantineStore
from dagster_project.resources import KafkaResource
from tests.conftest import synthetic_spec
from tests.helpers import (
    defs_for,
    failing_job,
    hand_batch,
    kafka_sensor_tick,
    produce_synthetic,
    run_batch,
    sample,
)


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


def _send_malformed(settings, spec, n: int, prefix: bytes = b"m") -> None:
    producer = clients.producer(settings)
    for i in range(n):
        producer.send(spec.events_topic, key=b"%s%d" % (prefix, i), value=b"{not json %d" % i)
    producer.flush()
    producer.close()


def _planned(defs, spec, instance, kafka_bootstrap, registry) -> dict[int, tuple[int, int]]:
    """The ranges the Kafka sensor plans next (it fails the test when it skips, e.g. HALTED)."""
    tick = kafka_sensor_tick(defs, spec, instance, KafkaResource(bootstrap=kafka_bootstrap), registry)
    assert not isinstance(tick, dg.SkipReason), tick.skip_message
    return {int(p): tuple(r) for p, r in orjson.loads(tick.run_requests[0].tags["streamfit/ranges"]).items()}


def test_a_batch_of_only_malformed_messages_is_passed_over_not_halted(
    kafka_bootstrap, kafka_settings, registry, instance
):
    """30 messages of invalid JSON in a quiet period were all dead-lettered, then the row-count check
    halted the stream ('observed 0, expected min_value=1'): re-executing could never pass, so each
    burst of junk waited for `batches skip`. Now the stream moves past it by itself, and the next
    version records which offsets it passed over and why; every offset is accounted for."""
    spec = synthetic_spec(
        partitions=1, quality={"policy": "halt"}, batch={"rows": 30, "max_rows": 1000, "max_wait_s": 3600}
    )
    defs = defs_for(spec, kafka_bootstrap, registry)
    produce_synthetic(kafka_settings, spec, 200)
    assert run_batch(defs, spec, _planned(defs, spec, instance, kafka_bootstrap, registry), instance).success
    _send_malformed(kafka_settings, spec, 30)
    junk = _planned(defs, spec, instance, kafka_bootstrap, registry)
    assert junk == {0: (200, 230)}

    result = run_batch(defs, spec, junk, instance)

    assert result.success and _check(result, spec).passed
    assert registry.halt(spec.name) is None
    pending = registry.pending_offset_reset(spec.name)
    again = run_batch(defs, spec, junk, instance)  # the daemon re-executing it: recorded once
    assert again.success and registry.pending_offset_reset(spec.name) == pending
    letters = [
        orjson.loads(r.value) for r in read_range(kafka_settings, spec.dlq_topic, _dlq_ranges(kafka_settings, spec))
    ]
    assert sorted(letter["offset"] for letter in letters) == list(range(200, 230))
    assert all(letter["reason"].startswith("not valid JSON") for letter in letters)
    exporter = exporter_registry(registry, [spec], None)  # the dead-letter alert sees the junk already
    assert sample(exporter, "streamfit_halted", stream=spec.name) == 0
    assert sample(exporter, "streamfit_rows_total", stream=spec.name, fate="dlq") == 30
    assert sample(exporter, "streamfit_rows_total", stream=spec.name, fate="read") == 230

    produce_synthetic(kafka_settings, spec, 50, start=200)
    good = _planned(defs, spec, instance, kafka_bootstrap, registry)
    assert good == {0: (230, 280)}
    assert run_batch(defs, spec, good, instance).success
    v1, v2 = registry.versions(spec.name)
    applied = v2.meta["offset_reset_applied"]
    assert "every message of p0[200, 230) was dead-lettered (30): nothing to learn" in applied["reason"]
    assert applied["dead_lettered"] == {"ranges": {"0": [200, 230]}, "messages": 30}
    assert v2.meta["rows"]["trained"] == 50 and v2.learned == {0: 280}
    # Every offset learned by a version or passed over with its reason: [0, 200) + [200, 230) + [230, 280).
    spans = [
        v1.meta["offsets"]["batch"]["0"],
        applied["dead_lettered"]["ranges"]["0"],
        v2.meta["offsets"]["batch"]["0"],
    ]
    assert spans == [[0, 200], [200, 230], [230, 280]]
    assert sample(exporter, "streamfit_dlq_messages_total", stream=spec.name) == 30  # counted once, now by v2


def test_a_batch_of_only_an_aborted_transaction_is_passed_over_not_halted(
    kafka_bootstrap, kafka_settings, broker_kind, registry, instance
):
    """A producer's aborted transaction (a Flink or Kafka Streams job restarting) left 40 offsets of
    aborted records and a marker: the batch planned over them read nothing, and the row-count check
    halted the stream ('observed 0, expected min_value=1') though no re-run could read more. Now it
    is passed over by itself, and the next version records the offsets and why; none counts as read."""
    if broker_kind == "tansu" or not transaction_support(kafka_settings).works:
        pytest.skip("needs working Kafka transactions; Tansu's aborted records leak to read_committed readers")
    spec = synthetic_spec(
        partitions=1, quality={"policy": "halt"}, batch={"rows": 30, "max_rows": 1000, "max_wait_s": 3600}
    )
    defs = defs_for(spec, kafka_bootstrap, registry)
    produce_synthetic(kafka_settings, spec, 200)
    assert run_batch(defs, spec, _planned(defs, spec, instance, kafka_bootstrap, registry), instance).success
    producer = clients.transactional_producer(kafka_settings, f"streamfit-test-{spec.name}")
    try:
        producer.init_transactions()
        producer.begin_transaction()
        for i in range(40):
            producer.send(spec.events_topic, key=b"a%d" % i, value=b"{not json %d" % i)
        producer.flush()
        producer.abort_transaction()
    finally:
        producer.close()
    aborted = _planned(defs, spec, instance, kafka_bootstrap, registry)
    assert aborted == {0: (200, 241)}  # 40 aborted records and the abort marker

    result = run_batch(defs, spec, aborted, instance)

    assert result.success and _check(result, spec).passed
    assert registry.halt(spec.name) is None
    produce_synthetic(kafka_settings, spec, 50, start=200)
    assert _planned(defs, spec, instance, kafka_bootstrap, registry) == {0: (241, 291)}
    assert run_batch(defs, spec, {0: (241, 291)}, instance).success
    applied = registry.versions(spec.name)[-1].meta["offset_reset_applied"]
    assert "p0[200, 241) held no committed record" in applied["reason"], applied["reason"]
    assert applied["unreadable"] == {"ranges": {"0": [200, 241]}}
    assert applied["dead_lettered"] == {"ranges": {}, "messages": 0}
    exporter = exporter_registry(registry, [spec], None)
    assert sample(exporter, "streamfit_rows_total", stream=spec.name, fate="read") == 250


def test_junk_batches_in_a_row_are_passed_over_as_one_span(kafka_bootstrap, kafka_settings, registry, instance):
    """Two batches of junk in a row: the second's pending reset joins the first's span, so the next
    version records both (a second reset replacing the first lost its reason)."""
    spec = synthetic_spec(
        partitions=1, quality={"policy": "halt"}, batch={"rows": 10, "max_rows": 1000, "max_wait_s": 3600}
    )
    defs = defs_for(spec, kafka_bootstrap, registry)
    produce_synthetic(kafka_settings, spec, 100)
    assert run_batch(defs, spec, _planned(defs, spec, instance, kafka_bootstrap, registry), instance).success
    for burst, prefix in ((12, b"a"), (15, b"b")):
        _send_malformed(kafka_settings, spec, burst, prefix)
        assert run_batch(defs, spec, _planned(defs, spec, instance, kafka_bootstrap, registry), instance).success
    produce_synthetic(kafka_settings, spec, 20, start=100)
    assert run_batch(defs, spec, _planned(defs, spec, instance, kafka_bootstrap, registry), instance).success

    v2 = registry.versions(spec.name)[-1]
    applied = v2.meta["offset_reset_applied"]
    assert applied["dead_lettered"] == {"ranges": {"0": [100, 127]}, "messages": 27}
    assert "every message of p0[100, 127) was dead-lettered (27)" in applied["reason"]
    assert v2.meta["offsets"]["batch"] == {"0": [127, 147]}
    passed = [d for d in registry.decisions(spec.name) if d["kind"] == "passed_over"]
    assert [d["ranges"] for d in passed] == ["p0[100, 112)", "p0[112, 127)"]


def test_a_skip_after_a_passed_over_batch_keeps_it_recorded(
    kafka_bootstrap, kafka_settings, registry, instance, tmp_path, monkeypatch
):
    """A halt right after a passed-over batch, skipped by an operator: the skip's pending reset
    replaces the pass-over's, which it keeps, so the next version still records both (and the
    exporter still counts the passed-over dead letters)."""
    from dagster_project.observability.exporter import passed_over_rows

    spec = _spec(policy="halt")
    defs = defs_for(spec, kafka_bootstrap, registry)
    produce_synthetic(kafka_settings, spec, 200)
    assert run_batch(defs, spec, {0: (0, 200)}, instance).success
    _send_malformed(kafka_settings, spec, 30)
    assert run_batch(defs, spec, {0: (200, 230)}, instance).success
    _send(kafka_settings, spec, _bad_rows(3))
    assert not run_batch(defs, spec, {0: (230, 233)}, instance, raise_on_error=False).success
    streams = tmp_path / "streams"
    streams.mkdir()
    (streams / f"{spec.name}.yaml").write_text(orjson.dumps(spec.model_dump(mode="json")).decode())
    monkeypatch.setenv("STREAMFIT_STREAMS", str(streams))
    out = CliRunner().invoke(main, ["batches", "skip", spec.name, "--reason", "bad sensor"])
    assert out.exit_code == 0, out.output
    produce_synthetic(kafka_settings, spec, 50, start=200)
    assert run_batch(defs, spec, {0: (233, 283)}, instance).success

    v2 = registry.versions(spec.name)[-1]
    applied = v2.meta["offset_reset_applied"]
    assert "bad sensor" in applied["reason"] and applied["offsets"] == {"0": 233}
    assert applied["after"]["dead_lettered"] == {"ranges": {"0": [200, 230]}, "messages": 30}
    assert passed_over_rows([applied, None]) == {"read": 30, "dlq": 30}


def test_rows_lost_other_than_to_the_dlq_still_meet_the_row_count_check():
    """Only a batch whose every read message is a dead letter is passed over: an empty batch that
    read nothing, or whose rows went missing some other way, is still the quality gate's to judge."""
    batch = hand_batch(_spec(), 0)
    batch.dlq_reasons.update({"not valid JSON": 30})
    assert not nothing_but_dead_letters(batch)  # read nothing (an older batch): not judged as all dead
    batch.read = 30
    assert nothing_but_dead_letters(batch)
    batch.read = 31  # one message neither a row nor a dead letter
    assert not nothing_but_dead_letters(batch)


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
