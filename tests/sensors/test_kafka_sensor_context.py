"""The Kafka sensor evaluated the way the Dagster daemon does (`evaluate_tick` on a context built with
`dg.build_sensor_context(cursor=..., instance=..., resources=...)`): the run requests and the cursor
it hands back, tick after tick, and the skip while a run of the stream is in flight.

Planning itself (exact ranges, deterministic run key, capping, gaps, halts, an unreachable broker)
is covered in tests/sensors/test_kafka_sensor.py; this adds what the daemon stores between ticks.
"""

from __future__ import annotations

import dagster as dg
import orjson
import pytest

from assets.training import batch_run_config
from dagster_project import names
from dagster_project.kafka.offsets import decode_ranges, encode_ranges
from dagster_project.resources import KafkaResource, RegistryResource
from tests.conftest import synthetic_spec
from tests.helpers import high_waters, produce_synthetic, run_batch


def _tick(defs: dg.Definitions, spec, instance, kafka_bootstrap: str, registry, cursor: str | None = None):
    """What the daemon gets from one evaluation: run requests, skip message and the new cursor."""
    sensor = defs.resolve_sensor_def(f"{spec.name}_kafka_sensor")
    context = dg.build_sensor_context(
        cursor=cursor,
        instance=instance,
        resources={
            "kafka": KafkaResource(bootstrap=kafka_bootstrap),
            "registry": RegistryResource(root=str(registry.root)),
        },
    )
    return sensor.evaluate_tick(context)


def test_a_tick_returns_the_run_request_and_a_cursor_describing_it(
    kafka_bootstrap, kafka_settings, spec, registry, stream_defs, instance
) -> None:
    produce_synthetic(kafka_settings, spec, 500)
    ends = high_waters(kafka_settings, spec.events_topic)

    data = _tick(stream_defs, spec, instance, kafka_bootstrap, registry)

    assert data.skip_message is None
    (request,) = data.run_requests
    planned = {p: (0, end) for p, end in ends.items()}
    assert request.run_key == f"{spec.name}@v0:" + ",".join(f"p{p}:0-{e}" for p, e in sorted(ends.items()))
    assert request.tags == {
        "dagster/sensor_name": f"{spec.name}_kafka_sensor",  # added by evaluate_tick, as for the daemon
        names.STREAM_TAG: spec.name,
        names.RANGES_TAG: encode_ranges(planned),
        names.PARENT_TAG: "none",
        names.LAG_AFTER_BATCH_TAG: "0",
        "dagster/max_runtime_seconds": str(spec.batch.max_run_seconds),  # run monitoring fails a dead worker's run
    }
    config = request.run_config["ops"][names.micro_batch_op(spec.name)]["config"]["ranges"]
    assert {r["partition"]: (r["start"], r["end"]) for r in config} == planned
    cursor = orjson.loads(data.cursor)
    assert cursor == {
        "run_key": request.run_key,
        "ranges": request.tags[names.RANGES_TAG],
        "rows": 500,
        "reason": "lag 500 >= batch.rows 200",
    }


def test_the_next_tick_plans_from_the_registry_whatever_the_cursor(
    kafka_bootstrap, kafka_settings, spec, registry, stream_defs, instance
) -> None:
    produce_synthetic(kafka_settings, spec, 300)
    first = _tick(stream_defs, spec, instance, kafka_bootstrap, registry)
    (request,) = first.run_requests
    assert run_batch(stream_defs, spec, decode_ranges(request.tags[names.RANGES_TAG]), instance).success
    learned = registry.head(spec.name).learned
    produce_synthetic(kafka_settings, spec, 250, start=300)
    ends = high_waters(kafka_settings, spec.events_topic)

    second = _tick(stream_defs, spec, instance, kafka_bootstrap, registry, cursor=first.cursor)

    (next_request,) = second.run_requests
    ranges = decode_ranges(next_request.tags[names.RANGES_TAG])
    assert ranges == {p: (learned[p], ends[p]) for p in ends if ends[p] > learned[p]}
    assert sum(e - s for s, e in ranges.values()) == 250
    assert next_request.tags[names.PARENT_TAG] == "v1" and next_request.run_key.startswith(f"{spec.name}@v1:")
    assert next_request.run_key != request.run_key
    assert orjson.loads(second.cursor)["run_key"] == next_request.run_key != orjson.loads(first.cursor)["run_key"]
    # the cursor is a record for people, not state: no cursor, or a stale one, plans the same batch
    for cursor in (None, first.cursor, '{"run_key": "something old"}'):
        again = _tick(stream_defs, spec, instance, kafka_bootstrap, registry, cursor=cursor)
        assert [r.run_key for r in again.run_requests] == [next_request.run_key]


@pytest.mark.parametrize(
    "spec",
    [synthetic_spec(partitions=1, batch={"rows": 200, "max_rows": 300, "max_wait_s": 3600, "sensor_interval_s": 5})],
    ids=["capped"],
)
def test_a_capped_batch_reports_the_lag_it_leaves(
    kafka_bootstrap, kafka_settings, spec, registry, stream_defs, instance
) -> None:
    produce_synthetic(kafka_settings, spec, 700)

    data = _tick(stream_defs, spec, instance, kafka_bootstrap, registry)

    (request,) = data.run_requests
    assert decode_ranges(request.tags[names.RANGES_TAG]) == {0: (0, 300)}
    assert request.tags[names.LAG_AFTER_BATCH_TAG] == "400"
    cursor = orjson.loads(data.cursor)
    assert cursor["rows"] == 300
    assert (
        cursor["reason"] == "lag 700 >= batch.rows 200; capped at batch.max_rows 300 (400 rows left for the next batch)"
    )


def test_no_request_while_a_run_of_the_stream_is_in_flight(
    kafka_bootstrap, kafka_settings, spec, registry, stream_defs, instance
) -> None:
    produce_synthetic(kafka_settings, spec, 300)
    job = stream_defs.resolve_job_def(names.training_job(spec.name))
    run_config = batch_run_config(spec, {p: (0, 1) for p in range(spec.partitions)}).to_config_dict()
    waiting = instance.create_run_for_job(job_def=job, run_config=run_config, tags={names.STREAM_TAG: spec.name})

    data = _tick(stream_defs, spec, instance, kafka_bootstrap, registry, cursor='{"run_key": "earlier"}')

    assert data.run_requests == []
    assert data.skip_message == (f"training run {waiting.run_id[:8]} is NOT_STARTED; runs of {spec.name} never overlap")
    assert data.cursor == '{"run_key": "earlier"}', "a skipped tick leaves the cursor as it was"

    instance.report_run_canceled(waiting)
    (request,) = _tick(stream_defs, spec, instance, kafka_bootstrap, registry).run_requests
    assert sum(e - s for s, e in decode_ranges(request.tags[names.RANGES_TAG]).values()) == 300
