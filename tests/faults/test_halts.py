"""Every halt has a working operator path: a batch whose run failed after its retries can be skipped."""

from __future__ import annotations

import dagster as dg
from click.testing import CliRunner

from dagster_project.cli import main
from dagster_project.dev.faults import FAULT_ENV
from dagster_project.dev.producer import produce
from dagster_project.kafka.offsets import ranges_key
from dagster_project.resources import KafkaResource
from tests.helpers import high_waters, kafka_sensor_tick, produce_synthetic, read_topic, run_batch


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


def test_skipping_a_halt_keeps_an_operator_s_reset_past_the_batch_and_names_one_it_replaces(
    kafka_bootstrap, kafka_settings, spec, registry, stream_defs, instance, specs_dir, streamfit_home, monkeypatch
):
    """On a halted stream `offsets reset --to latest --force` said nothing of the halt, and the
    `batches skip` that lifted it then moved the start back to the batch's end without a word."""
    produce_synthetic(kafka_settings, spec, 400)
    kafka = KafkaResource(bootstrap=kafka_bootstrap)
    (request,) = kafka_sensor_tick(stream_defs, spec, instance, kafka, registry).run_requests
    monkeypatch.setenv(FAULT_ENV, "after_train")
    failed = stream_defs.resolve_job_def(f"{spec.name}_training").execute_in_process(
        run_config=request.run_config, instance=instance, tags=request.tags, raise_on_error=False
    )
    assert not failed.success
    monkeypatch.delenv(FAULT_ENV)
    assert isinstance(kafka_sensor_tick(stream_defs, spec, instance, kafka, registry), dg.SkipReason)  # halted
    produce_synthetic(kafka_settings, spec, 400, start=400)
    latest = high_waters(kafka_settings, spec.events_topic)
    cli = CliRunner()
    reset = ["offsets", "reset", spec.name, "--bootstrap", kafka_bootstrap, "--force", "--to"]

    moved = cli.invoke(main, [*reset, "latest"])
    assert moved.exit_code == 0, moved.output
    assert f"{spec.name} stays HALTED" in moved.output and f"batches skip {spec.name}" in moved.output
    skipped = cli.invoke(main, ["batches", "skip", spec.name, "--reason", "poison batch"])
    assert skipped.exit_code == 0, skipped.output
    assert "training resumes at the pending reset" in skipped.output
    assert registry.pending_offset_reset(spec.name)["offsets"] == {str(p): o for p, o in latest.items()}
    assert registry.halt(spec.name) is None

    monkeypatch.setenv(FAULT_ENV, "after_train")  # halt again, then a reset behind the batch
    produce_synthetic(kafka_settings, spec, 400, start=800)
    (request,) = kafka_sensor_tick(stream_defs, spec, instance, kafka, registry).run_requests
    failed = stream_defs.resolve_job_def(f"{spec.name}_training").execute_in_process(
        run_config=request.run_config, instance=instance, tags=request.tags, raise_on_error=False
    )
    monkeypatch.delenv(FAULT_ENV)
    assert not failed.success and isinstance(
        kafka_sensor_tick(stream_defs, spec, instance, kafka, registry), dg.SkipReason
    )
    assert registry.halt(spec.name)
    assert cli.invoke(main, [*reset, "earliest"]).exit_code == 0
    skipped = cli.invoke(main, ["batches", "skip", spec.name, "--reason", "poison batch"])
    assert skipped.exit_code == 0, skipped.output
    assert "it replaces the pending reset to {" in skipped.output
    assert registry.pending_offset_reset(spec.name)["reason"].startswith("skipped after a failed run")


def test_a_halt_whose_run_a_new_dagster_instance_lacks_is_retried_in_a_new_run_without_losing_the_batch(
    kafka_bootstrap,
    kafka_settings,
    spec,
    registry,
    stream_defs,
    instance,
    specs_dir,
    streamfit_home,
    monkeypatch,
    tmp_path,
):
    """DAGSTER_HOME replaced while a stream is halted: the halt (in the registry) survives but its run
    does not, so "re-execute that run" is impossible and skipping would lose the batch's rows."""
    produce(kafka_settings, spec, [(b"bad%d" % i, b"{not json") for i in range(3)])
    produce_synthetic(kafka_settings, spec, 400)
    kafka = KafkaResource(bootstrap=kafka_bootstrap)
    (request,) = kafka_sensor_tick(stream_defs, spec, instance, kafka, registry).run_requests
    monkeypatch.setenv(FAULT_ENV, "after_train")
    failed = stream_defs.resolve_job_def(f"{spec.name}_training").execute_in_process(
        run_config=request.run_config,
        instance=instance,
        tags={"dagster/run_key": request.run_key},
        raise_on_error=False,
    )
    monkeypatch.delenv(FAULT_ENV)
    assert "HALTED" in kafka_sensor_tick(stream_defs, spec, instance, kafka, registry).skip_message
    letters = sum(1 for d in read_topic(kafka_settings, spec.dlq_topic) if d["component"] == "trainer")
    assert letters == 3

    home = tmp_path / "new_dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as fresh:
        halted = kafka_sensor_tick(stream_defs, spec, fresh, kafka, registry).skip_message
        assert f"at run {failed.run_id[:8]}" in halted and "This Dagster instance has no such run" in halted
        assert f"streamfit batches retry {spec.name}" in halted

        retried = CliRunner().invoke(main, ["batches", "retry", spec.name, "--reason", "fixed the cause"])
        assert retried.exit_code == 0, retried.output
        (again,) = kafka_sensor_tick(stream_defs, spec, fresh, kafka, registry).run_requests
        assert again.run_config == request.run_config  # the same batch, in a new run
        assert (
            stream_defs.resolve_job_def(f"{spec.name}_training")
            .execute_in_process(run_config=again.run_config, instance=fresh, tags={"dagster/run_key": again.run_key})
            .success
        )
    (version,) = registry.versions(spec.name)
    assert version.learned == {p: end for p, (_, end) in _ranges(request).items()}
    assert sum(1 for d in read_topic(kafka_settings, spec.dlq_topic) if d["component"] == "trainer") == 3  # once
    cleared = [d for d in registry.decisions(spec.name) if d.get("kind") == "halt_cleared"]
    assert cleared[-1]["resolution"] == "retried in a new run" and cleared[-1]["reason"] == "fixed the cause"


def test_retry_refuses_a_halt_whose_run_the_instance_has(
    spec, registry, specs_dir, streamfit_home, monkeypatch, tmp_path
):
    home = tmp_path / "retry_dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as same:
        run = same.create_run_for_job(dg.GraphDefinition("g").to_job(), status=dg.DagsterRunStatus.FAILURE)
    registry.set_halt(spec.name, {"kind": "failed_run", "summary": "a failing batch", "run_id": run.run_id})
    refused = CliRunner().invoke(main, ["batches", "retry", spec.name, "--reason", "try again"])
    assert refused.exit_code != 0 and "re-execute it from the UI" in refused.output
    assert registry.halt(spec.name) is not None


def _ranges(request: dg.RunRequest) -> dict[int, tuple[int, int]]:
    return {
        int(r["partition"]): (r["start"], r["end"])
        for r in next(iter(request.run_config["ops"].values()))["config"]["ranges"]
    }


def test_skipping_keeps_a_pending_reset_s_later_start_on_each_partition(spec, registry, specs_dir, streamfit_home):
    """A reset past a retention gap on partition 0 (partition 1 kept where it was) was replaced by the
    halted batch's ends, and the skip brought the gap back."""
    halt = {"kind": "data_quality", "summary": "mean out of bounds", "run_id": "r" * 32}
    registry.set_halt(spec.name, {**halt, "ranges": {"0": [100, 150], "1": [100, 150]}})
    registry.set_pending_offsets(spec.name, {0: 400, 1: 100}, reason="operator reset (--to latest)", by="ops")

    skipped = CliRunner().invoke(main, ["batches", "skip", spec.name, "--reason", "poison batch"])

    assert skipped.exit_code == 0, skipped.output
    assert registry.pending_offset_reset(spec.name)["offsets"] == {"0": 400, "1": 150}
    assert "keeping its later start on partition(s) 0" in skipped.output
