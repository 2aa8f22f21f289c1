"""Every halt has a working operator path: a batch whose run failed after its retries can be skipped."""

from __future__ import annotations

import dagster as dg
from click.testing import CliRunner

from dagster_project.cli import main
from dagster_project.dev.faults import FAULT_ENV
from dagster_project.kafka.offsets import ranges_key
from dagster_project.resources import KafkaResource
from tests.helpers import high_waters, kafka_sensor_tick, produce_synthetic, run_batch


def test_a_failed_run_halts_the_stream_until_skipped_and_the_next_version_records_it(
    kafka_bootstrap, kafka_settings, spec, registry, stream_defs, instance, specs_dir, streamfit_home, monkeypatch
):
    produce_synthetic(kafka_settings, spec, 400)
    kafka = KafkaResource(bootstrap=kafka_bootstrap)
    tick = kafka_sensor_tick(stream_defs, spec, instance, kafka, registry)
    (request,) = tick.run_requests
    ranges = {
        int(r["partition"]): (r["start"], r["end"])
        for r in next(iter(request.run_config["ops"].values()))["config"]["ranges"]
    }

    monkeypatch.setenv(FAULT_ENV, "after_train")  # every attempt fails: the batch cannot be learned
    failed = run_batch(
        stream_defs, spec, ranges, instance, raise_on_error=False, tags={"dagster/run_key": request.run_key}
    )
    assert not failed.success and request.run_key == ranges_key(spec.name, None, ranges)
    monkeypatch.delenv(FAULT_ENV)

    halted = kafka_sensor_tick(stream_defs, spec, instance, kafka, registry)
    assert isinstance(halted, dg.SkipReason)
    assert "HALTED by a failed run" in halted.skip_message and "streamfit batches skip" in halted.skip_message

    skipped = CliRunner().invoke(main, ["batches", "skip", spec.name, "--reason", "poison batch"])
    assert skipped.exit_code == 0, skipped.output

    produce_synthetic(kafka_settings, spec, 400, start=400)
    resumed = kafka_sensor_tick(stream_defs, spec, instance, kafka, registry)
    (next_request,) = resumed.run_requests
    next_ranges = {
        int(r["partition"]): (r["start"], r["end"])
        for r in next(iter(next_request.run_config["ops"].values()))["config"]["ranges"]
    }
    assert all(next_ranges[p][0] == end for p, (_, end) in ranges.items())  # resumes right after the batch
    assert run_batch(stream_defs, spec, next_ranges, instance).success
    (version,) = registry.versions(spec.name)
    applied = version.meta["offset_reset_applied"]
    assert "skipped after a failed run: poison batch" in applied["reason"] and applied["by"]
    assert high_waters(kafka_settings, spec.events_topic)  # the broker still has every row; nothing was deleted
