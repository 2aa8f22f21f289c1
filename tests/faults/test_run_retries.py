"""Faults in a training run, with the real daemon retrying it: the retry finishes green, nothing twice."""

from __future__ import annotations

import os
import time

import dagster as dg
import pytest
import yaml

from dagster_project import names
from dagster_project.dev.faults import FAULT_ENV
from dagster_project.dev.services import DagsterServices
from dagster_project.instance import write_instance_config
from dagster_project.kafka.io import committed_group_offsets
from dagster_project.kafka.settings import BOOTSTRAP_ENV
from tests.conftest import synthetic_spec
from tests.helpers import produce_synthetic


@pytest.mark.timeout(480)
@pytest.mark.parametrize("fault", ["after_register@0", "after_train@0", "after_train@0:kill"])
def test_daemon_retry_of_a_crashed_run_finishes_green_and_commits(
    fault, kafka_bootstrap, kafka_settings, registry, streamfit_home, tmp_path
):
    """A crash after the registry write used to leave the run and both retries FAILED (StaleParent)."""
    # kill -9 leaves the run STARTED: run monitoring fails it after batch.max_run_seconds, then it is retried
    batch = {"rows": 300, "max_rows": 300, "max_wait_s": 3600, "sensor_interval_s": 1, "max_run_seconds": 20}
    spec = synthetic_spec(batch=batch)
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
        FAULT_ENV: fault,  # the first attempt of every run crashes there; Dagster's retry must finish it
    }
    produced = produce_synthetic(kafka_settings, spec, 300)

    job = names.training_job(spec.name)
    with DagsterServices(env, tmp_path / "logs") as services:
        deadline = time.monotonic() + 360  # a loaded 2-core machine: retries, monitoring and the daemon
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            while not instance.get_runs(dg.RunsFilter(job_name=job, statuses=[dg.DagsterRunStatus.SUCCESS])):
                services.check_alive()
                assert time.monotonic() < deadline, _stuck(instance, job, tmp_path / "logs")
                time.sleep(1)
            runs = sorted(
                instance.get_runs(dg.RunsFilter(job_name=job)),
                key=lambda r: int(r.tags.get("dagster/retry_number", "0")),
            )
            materialization = instance.get_latest_materialization_event(dg.AssetKey([spec.name, "model_version"]))
            errors = {
                r.run_id[:8]: [
                    str(e.dagster_event.event_specific_data)
                    for e in instance.all_logs(r.run_id)
                    if e.dagster_event and e.dagster_event.event_type_value == "STEP_FAILURE"
                ]
                for r in runs
                if r.status == dg.DagsterRunStatus.FAILURE
            }

    # The injected fault fails the first attempt and a retry lands the batch. A loaded machine may add a
    # transient failure in between; what must never happen is a retry refused as a stale parent.
    statuses = [r.status for r in runs]
    assert statuses[0] == dg.DagsterRunStatus.FAILURE and statuses[-1] == dg.DagsterRunStatus.SUCCESS, errors
    assert "StaleParent" not in str(errors), errors
    (version,) = registry.versions(spec.name)  # one version: the retry learned nothing twice
    assert version.meta["rows_learned_total"] == produced
    assert committed_group_offsets(kafka_settings, spec.trainer_group, spec.events_topic) == version.learned
    metadata = materialization.asset_materialization.metadata
    assert metadata["registered_by_earlier_attempt"].value is (fault.startswith("after_register"))


def _stuck(instance: dg.DagsterInstance, job: str, logs) -> str:
    """What a timeout shows: each run's status and last events, each daemon's heartbeat, the daemon's log."""
    lines = []
    for run in instance.get_runs(dg.RunsFilter(job_name=job)):
        lines.append(f"run {run.run_id[:8]} {run.status.value} tags={dict(run.tags)}")
        lines += [f"    {e.dagster_event_type or ''} {e.message[:200]}" for e in instance.all_logs(run.run_id)[-8:]]
    for name, beat in instance.get_daemon_heartbeats().items():
        errors = [e.message[:200] for e in beat.errors or []]
        lines.append(f"daemon {name}: last heartbeat {time.time() - beat.timestamp:.0f}s ago, errors {errors}")
    return "\n".join([*lines, (logs / "dagster-daemon.log").read_text()[-3000:]])
