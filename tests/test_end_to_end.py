"""End to end: a real dagster-daemon runs the Kafka sensor, which drives training runs to versions."""

from __future__ import annotations

import os
import time
import warnings

import dagster as dg
import yaml

from dagster_project import names
from dagster_project.dev.services import DagsterServices
from dagster_project.instance import write_instance_config
from dagster_project.kafka.settings import BOOTSTRAP_ENV
from tests.conftest import synthetic_spec
from tests.helpers import produce_synthetic


def test_daemon_sensor_trains_until_two_versions(kafka_bootstrap, kafka_settings, registry, streamfit_home, tmp_path):
    spec = synthetic_spec(batch={"rows": 300, "max_rows": 300, "max_wait_s": 3600, "sensor_interval_s": 1})
    streams = tmp_path / "streams"
    streams.mkdir()
    (streams / f"{spec.name}.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    dagster_home = tmp_path / "dagster_home"
    write_instance_config(dagster_home)
    env = os.environ | {
        BOOTSTRAP_ENV: kafka_bootstrap,
        "STREAMFIT_HOME": str(streamfit_home),
        "STREAMFIT_STREAMS": str(streams),
        "DAGSTER_HOME": str(dagster_home),
    }
    produced = produce_synthetic(kafka_settings, spec, 600)  # two full batches of 300

    with DagsterServices(env, tmp_path / "logs") as services:
        deadline = time.monotonic() + 240
        while len(registry.versions(spec.name)) < 2:
            services.check_alive()
            assert time.monotonic() < deadline, (tmp_path / "logs" / "dagster-daemon.log").read_text()[-3000:]
            time.sleep(1)
        # A version exists from its registry rename on; its run still commits Kafka offsets after
        # that. Stopping the daemon now would interrupt the run, so let in-flight runs finish.
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            in_flight = dg.RunsFilter(job_name=names.training_job(spec.name), statuses=names.in_flight_statuses())
            while instance.get_runs(in_flight):
                assert time.monotonic() < deadline, "training runs did not finish"
                time.sleep(0.5)

    v1, v2 = registry.versions(spec.name)
    assert v2.parent == v1.name
    assert v2.meta["rows_learned_total"] == produced
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        records = instance.get_run_records(dg.RunsFilter(job_name=names.training_job(spec.name)))
        finished = sorted((r for r in records if r.end_time), key=lambda r: r.start_time)
        by_key: dict[str, list] = {}
        for record in finished:
            by_key.setdefault(record.dagster_run.tags.get("streamfit/ranges"), []).append(record.dagster_run.status)
        # A run may fail transiently on a loaded machine; the daemon's run retries must then land it.
        assert all(statuses[-1] == dg.DagsterRunStatus.SUCCESS for statuses in by_key.values()), by_key
        for record in finished:
            if record.dagster_run.status == dg.DagsterRunStatus.FAILURE:
                errors = [
                    str(e.dagster_event.event_specific_data)[:400]
                    for e in instance.all_logs(record.dagster_run.run_id)
                    if e.dagster_event and e.dagster_event.event_type_value == "STEP_FAILURE"
                ]
                warnings.warn(
                    f"training run {record.dagster_run.run_id[:8]} failed and was retried: {errors}", stacklevel=2
                )
        for earlier, later in zip(finished, finished[1:], strict=False):
            assert later.start_time >= earlier.end_time, "two training runs of one stream overlapped"
        # Runs are forked from the code server's preloaded process, not spawned cold (warm_runs.py).
        batch = instance.get_latest_materialization_event(dg.AssetKey([spec.name, "micro_batch"]))
        worker = batch.asset_materialization.metadata["run_worker"].value
        assert worker.startswith("warm"), worker
