"""The Kafka sensor against a real broker: what it plans, when it waits, and every skip's reason."""

from __future__ import annotations

import logging
import shutil
import time

import dagster as dg
import orjson

from dagster_project.dev.producer import produce, produce_command
from dagster_project.kafka import clients
from dagster_project.kafka.brokers.tansu import free_port
from dagster_project.kafka.io import ensure_topics, probe_partitions
from dagster_project.kafka.offsets import decode_ranges
from dagster_project.resources import KafkaResource
from tests.conftest import synthetic_spec
from tests.helpers import defs_for, high_waters, kafka_sensor_tick, produce_synthetic, read_topic, run_batch


def _run_requested(result) -> dg.RunRequest:
    assert isinstance(result, dg.SensorResult), f"expected a run request, got: {result}"
    (request,) = result.run_requests
    return request


def test_topic_that_does_not_exist_yet_is_explained(kafka_bootstrap, spec, registry, stream_defs, instance):
    result = kafka_sensor_tick(stream_defs, spec, instance, KafkaResource(bootstrap=kafka_bootstrap), registry)
    assert isinstance(result, dg.SkipReason)
    assert "does not exist yet" in result.skip_message
    # A test stream has no built-in dataset: `streamfit produce <stream>` alone would fail.
    assert f"`streamfit produce {spec.name} --source events.jsonl`" in result.skip_message


def test_the_produce_hint_replays_a_built_in_source_by_the_stream_s_name() -> None:
    assert produce_command("phishing") == "streamfit produce phishing"
    assert produce_command("orders") == "streamfit produce orders --source events.jsonl"


def test_empty_topic_and_small_lag_wait(kafka_bootstrap, kafka_settings, spec, registry, stream_defs, instance):
    kafka = KafkaResource(bootstrap=kafka_bootstrap)
    ensure_topics(kafka_settings, [spec.events_topic], spec.partitions)
    assert "caught up" in kafka_sensor_tick(stream_defs, spec, instance, kafka, registry).skip_message

    produce_synthetic(kafka_settings, spec, 50)  # batch.rows is 200, max_wait is an hour
    message = kafka_sensor_tick(stream_defs, spec, instance, kafka, registry).skip_message
    assert "lag 50 < batch.rows 200" in message


def test_plans_exact_ranges_with_deterministic_key_and_cursor(
    kafka_bootstrap, kafka_settings, spec, registry, stream_defs, instance
):
    kafka = KafkaResource(bootstrap=kafka_bootstrap)
    produce_synthetic(kafka_settings, spec, 500)
    ends = {s.partition: s.high_water for s in probe_partitions(kafka_settings, spec.events_topic, {})}

    result = kafka_sensor_tick(stream_defs, spec, instance, kafka, registry)
    request = _run_requested(result)

    ranges = decode_ranges(request.tags["streamfit/ranges"])
    assert ranges == {p: (0, end) for p, end in ends.items() if end}
    assert request.run_key == _run_requested(kafka_sensor_tick(stream_defs, spec, instance, kafka, registry)).run_key
    config = request.run_config["ops"][f"{spec.name}__micro_batch"]["config"]["ranges"]
    assert sum(r["end"] - r["start"] for r in config) == 500
    assert orjson.loads(result.cursor)["run_key"] == request.run_key


def _dlq_from(request: dg.RunRequest) -> dict | None:
    return request.run_config["ops"][f"{request.tags['streamfit/stream']}__micro_batch"]["config"].get("dlq_from")


def test_a_plan_records_the_dlq_s_ends_so_a_re_execution_finds_its_letters_by_offset(
    kafka_bootstrap, kafka_settings, spec, registry, stream_defs, instance
):
    """Any letter about the batch is written after the plan, so at or after the DLQ's ends then,
    whatever the producers' clocks say (with no DLQ topic yet: {}, read from its start, in
    tests/dagster_project/ingest/test_sent_letters.py)."""
    kafka = KafkaResource(bootstrap=kafka_bootstrap)
    produce_synthetic(kafka_settings, spec, 500)
    empty = {str(p): 0 for p in range(spec.partitions)}
    assert _dlq_from(_run_requested(kafka_sensor_tick(stream_defs, spec, instance, kafka, registry))) == empty

    producer = clients.producer(kafka_settings)
    producer.send(spec.dlq_topic, key=b"k", value=b"an older batch's letter", partition=0)
    producer.flush()
    producer.close()
    ends = {str(p): end for p, end in high_waters(kafka_settings, spec.dlq_topic).items()}
    assert sum(ends.values()) == 1 and len(ends) == spec.partitions
    assert _dlq_from(_run_requested(kafka_sensor_tick(stream_defs, spec, instance, kafka, registry))) == ends


def test_batches_are_capped_and_the_tail_is_learned(kafka_bootstrap, kafka_settings, registry, instance, tmp_path):
    spec = synthetic_spec(batch={"rows": 400, "max_rows": 400, "max_wait_s": 1, "sensor_interval_s": 5})
    defs = defs_for(spec, kafka_bootstrap, registry)
    kafka = KafkaResource(bootstrap=kafka_bootstrap)
    produced = produce_synthetic(kafka_settings, spec, 1234)  # 400 + 400 + 400 + a tail of 34
    sizes = []
    for _ in range(12):
        result = kafka_sensor_tick(defs, spec, instance, kafka, registry)
        if isinstance(result, dg.SkipReason):
            if "caught up" in result.skip_message:
                break
            time.sleep(0.5)  # the tail waits for max_wait_s
            continue
        request = _run_requested(result)
        ranges = decode_ranges(request.tags["streamfit/ranges"])
        sizes.append(sum(e - s for s, e in ranges.values()))
        assert run_batch(defs, spec, ranges, instance).success
    assert sizes == [400, 400, 400, 34]
    head = registry.head(spec.name)
    assert head.meta["rows_learned_total"] == produced
    assert head.learned == {s.partition: s.high_water for s in probe_partitions(kafka_settings, spec.events_topic, {})}


def test_model_params_no_run_could_build_are_refused_before_any_run(
    kafka_bootstrap, kafka_settings, registry, instance
):
    spec = synthetic_spec(model={"estimator": "sgd_classifier", "params": {"eta": 0.1}})
    defs = defs_for(spec, kafka_bootstrap, registry)
    produce_synthetic(kafka_settings, spec, 300)
    result = kafka_sensor_tick(defs, spec, instance, KafkaResource(bootstrap=kafka_bootstrap), registry)
    assert isinstance(result, dg.SkipReason), result
    assert result.skip_message.startswith(f"MODEL PARAMS in {spec.name}: model.params.eta is not a parameter of")
    assert "eta0" in result.skip_message and "nothing is planned" in result.skip_message
    assert instance.get_runs() == [] and registry.versions(spec.name) == []


def test_broker_down_skips_and_advances_nothing(kafka_settings, spec, registry, stream_defs, instance):
    down = KafkaResource(bootstrap=f"127.0.0.1:{free_port()}")
    started = time.monotonic()
    result = kafka_sensor_tick(stream_defs, spec, instance, down, registry)
    assert isinstance(result, dg.SkipReason)
    assert "unreachable" in result.skip_message and "nothing advanced" in result.skip_message
    assert time.monotonic() - started < 10
    assert registry.versions(spec.name) == []


def test_failed_batch_halts_the_stream_with_a_reason(
    kafka_bootstrap, kafka_settings, spec, registry, stream_defs, instance, monkeypatch
):
    kafka = KafkaResource(bootstrap=kafka_bootstrap)
    produce_synthetic(kafka_settings, spec, 300)
    request = _run_requested(kafka_sensor_tick(stream_defs, spec, instance, kafka, registry))
    monkeypatch.setenv("STREAMFIT_FAULT", "after_train")
    job = stream_defs.resolve_job_def(f"{spec.name}_training")
    failed = job.execute_in_process(
        run_config=request.run_config,
        instance=instance,
        tags={"dagster/run_key": request.run_key},
        raise_on_error=False,
    )
    assert not failed.success

    result = kafka_sensor_tick(stream_defs, spec, instance, kafka, registry)

    assert isinstance(result, dg.SkipReason)
    assert "halted" in result.skip_message and failed.run_id[:8] in result.skip_message
    # Dagster's step retries (RetryPolicy, exponential backoff with jitter) before the run failed
    retries = [e for e in failed.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retries) == spec.batch.step_retries
    waits = [e.event_specific_data.seconds_to_wait for e in retries]
    assert all(
        0 <= w <= (2 ** (n + 1) - 1) * spec.batch.retry_delay_s + spec.batch.retry_delay_s for n, w in enumerate(waits)
    )
    message = result.skip_message
    assert f"1 run attempt(s), {spec.batch.step_retries} step retries with backoff waits" in message, message
    assert "InjectedFault" in message and "after_train" in message, message


def test_a_failed_batch_halts_even_when_rows_arriving_since_make_the_plan_longer(
    kafka_bootstrap, kafka_settings, registry, instance, monkeypatch
):
    """A slow stream's plan grows while its batch fails: the sensor must not launch the longer batch."""
    spec = synthetic_spec(batch={"rows": 400, "max_wait_s": 1, "step_retries": 0})
    defs = defs_for(spec, kafka_bootstrap, registry)
    kafka = KafkaResource(bootstrap=kafka_bootstrap)
    produce_synthetic(kafka_settings, spec, 100)
    time.sleep(1.2)  # batch.max_wait_s: the 100 rows are a batch
    request = _run_requested(kafka_sensor_tick(defs, spec, instance, kafka, registry))
    monkeypatch.setenv("STREAMFIT_FAULT", "after_train")
    failed = defs.resolve_job_def(f"{spec.name}_training").execute_in_process(
        run_config=request.run_config,
        instance=instance,
        tags={**request.tags, "dagster/run_key": request.run_key},
        raise_on_error=False,
    )
    assert not failed.success
    monkeypatch.delenv("STREAMFIT_FAULT")

    produce_synthetic(kafka_settings, spec, 50, start=100)  # the plan now starts at the same offsets, longer
    time.sleep(1.2)
    result = kafka_sensor_tick(defs, spec, instance, kafka, registry)

    assert isinstance(result, dg.SkipReason), f"launched the failed batch again, longer: {result}"
    assert "HALTED by a failed run" in result.skip_message and failed.run_id[:8] in result.skip_message
    halt = registry.halt(spec.name)
    assert halt["run_id"] == failed.run_id
    assert decode_ranges(orjson.dumps(halt["ranges"]).decode()) == decode_ranges(request.tags["streamfit/ranges"])


def test_lost_offsets_are_a_loud_gap_until_an_operator_resets(
    kafka_bootstrap, kafka_settings, spec, registry, stream_defs, instance
):
    kafka = KafkaResource(bootstrap=kafka_bootstrap)
    produce_synthetic(kafka_settings, spec, 300)
    ends = {s.partition: s.high_water for s in probe_partitions(kafka_settings, spec.events_topic, {})}
    # The model learned further than this broker has: what a restarted in-memory broker looks like.
    registry.register(
        spec.name,
        None,
        b"onnx",
        {"fake": "estimator"},
        {"offsets": {"learned": {"0": 5000, "1": 5000}}, "rows_learned_total": 10000},
    )

    result = kafka_sensor_tick(stream_defs, spec, instance, kafka, registry)
    assert isinstance(result, dg.SkipReason)
    assert "OFFSET GAP" in result.skip_message and "streamfit offsets reset" in result.skip_message
    assert "learned up to offset 5000" in result.skip_message

    registry.set_pending_offsets(spec.name, {p: 0 for p in ends}, reason="broker restarted", by="test")
    request = _run_requested(kafka_sensor_tick(stream_defs, spec, instance, kafka, registry))
    assert decode_ranges(request.tags["streamfit/ranges"]) == {p: (0, e) for p, e in ends.items() if e}


def _learn(stream_defs, spec, instance, request: dg.RunRequest):
    job = stream_defs.resolve_job_def(f"{spec.name}_training")
    result = job.execute_in_process(
        run_config=request.run_config, instance=instance, tags={"dagster/run_key": request.run_key, **request.tags}
    )
    assert result.success
    return result


def test_a_registry_restored_from_an_older_backup_learns_the_lost_batches_again(
    kafka_bootstrap, kafka_settings, registry, instance, tmp_path
):
    """The run key is the head and the ranges. After a restore the head is an older version and its
    next batch has the key of a run that succeeded, which the daemon drops as a duplicate: the stream
    stalled with no message. The batch is requested under a new key, tagged with the run it repeats,
    and learned again from the restored head's offsets, into versions with names never given (the
    lost ones served and named predictions). On a busy stream (batches capped by `max_rows`) the
    next lost batch is planned again exactly too, but under a new key (its head has a new name): the
    ranges tell it was learned before, so its malformed messages are not dead-lettered twice."""
    spec = synthetic_spec(batch={"rows": 200, "max_rows": 200, "max_wait_s": 3600, "sensor_interval_s": 5})
    defs = defs_for(spec, kafka_bootstrap, registry)
    kafka = KafkaResource(bootstrap=kafka_bootstrap)
    produce_synthetic(kafka_settings, spec, 200)
    _learn(defs, spec, instance, _run_requested(kafka_sensor_tick(defs, spec, instance, kafka, registry)))
    backup = tmp_path / "backup"
    shutil.copytree(registry.root, backup)
    for batch in range(2):  # a backlog: malformed messages among two batches' rows
        produce(kafka_settings, spec, [(b"bad%d-%d" % (batch, i), b"{not json") for i in range(4)])
        produce_synthetic(kafka_settings, spec, 200, start=200 + 200 * batch)
    lost_requests, lost_runs, letters = [], [], [_trainer_letters(kafka_settings, spec)]
    for _ in range(2):
        lost_requests.append(_run_requested(kafka_sensor_tick(defs, spec, instance, kafka, registry)))
        lost_runs.append(_learn(defs, spec, instance, lost_requests[-1]))
        letters.append(_trainer_letters(kafka_settings, spec))
    lost = registry.versions(spec.name)[1:]
    assert [v.name for v in lost] == ["v2", "v3"] and letters[0] < letters[1] < letters[2], letters

    shutil.rmtree(registry.root)
    shutil.copytree(backup, registry.root)  # the restore: v2 and v3 are gone, the head is v1 again
    request = _run_requested(kafka_sensor_tick(defs, spec, instance, kafka, registry))

    assert request.run_key == f"{lost_requests[0].run_key}#relearn1" and request.tags["streamfit/relearns_run"] == (
        lost_runs[0].run_id
    )
    assert _dlq_from(request) == _dlq_from(lost_requests[0])  # its letters came after the first plan's ends
    assert decode_ranges(request.tags["streamfit/ranges"]) == decode_ranges(lost_requests[0].tags["streamfit/ranges"])
    run = _learn(defs, spec, instance, request)
    again = registry.head(spec.name)
    assert (again.parent, again.learned) == ("v1", lost[0].learned)
    assert again.name == "v4" and (again.meta["names_skipped"]["from"], again.meta["names_skipped"]["to"]) == (
        "v2",
        "v3",
    )
    warnings = [e.message for e in instance.all_logs(run.run_id) if e.level == logging.WARNING]
    assert any("v2..v3 were given before" in m and "this version is v4" in m for m in warnings), warnings

    request = _run_requested(kafka_sensor_tick(defs, spec, instance, kafka, registry))
    assert "#relearn" not in request.run_key and request.tags["streamfit/relearns_run"] == lost_runs[1].run_id
    assert _dlq_from(request) == _dlq_from(lost_requests[1])
    assert decode_ranges(request.tags["streamfit/ranges"]) == decode_ranges(lost_requests[1].tags["streamfit/ranges"])
    _learn(defs, spec, instance, request)
    again = registry.head(spec.name)
    assert (again.name, again.parent, again.learned) == ("v5", "v4", lost[1].learned)
    assert "names_skipped" not in again.meta
    assert _trainer_letters(kafka_settings, spec) == letters[2]  # each lost batch's letters were sent once


def _trainer_letters(settings, spec) -> int:
    return sum(1 for d in read_topic(settings, spec.dlq_topic) if d["component"] == "trainer")


def test_a_dlq_whose_offsets_cannot_be_listed_skips_the_tick_instead_of_raising(
    kafka_bootstrap, kafka_settings, spec, registry, stream_defs, instance, monkeypatch
):
    """The plan's new ListOffsets on the DLQ (`planned_dlq_from`) fails with kafka-python's own errors
    when a DLQ partition has no leader (KafkaTimeoutError): the tick skips, saying so, as it does when
    the events topic's probe cannot answer, rather than raising."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaTimeoutError

    kafka = KafkaResource(bootstrap=kafka_bootstrap)
    produce_synthetic(kafka_settings, spec, 500)
    ensure_topics(kafka_settings, [spec.dlq_topic], spec.partitions)
    real = KafkaConsumer.end_offsets

    def leaderless_dlq(self, partitions, timeout_ms=None):
        if any(tp.topic == spec.dlq_topic for tp in partitions):
            raise KafkaTimeoutError("Failed to get offsets by timestamps in 10000 ms")
        return real(self, partitions, timeout_ms)

    monkeypatch.setattr(KafkaConsumer, "end_offsets", leaderless_dlq)
    result = kafka_sensor_tick(stream_defs, spec, instance, kafka, registry)
    assert isinstance(result, dg.SkipReason), result
    assert spec.dlq_topic in result.skip_message and "nothing planned" in result.skip_message
