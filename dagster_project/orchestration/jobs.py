"""A training job that other processes can rebuild: what Dagster's multiprocess executor needs.

`execute_in_process` runs every step in the caller; a real run (a process, or a pod, per step) has to
re-create the job in each step's process from a pointer. `run_training_job` points at
`training_job_for(streams, home, bootstrap, job)` with the caller's code location spelled out as
arguments, not inherited environment: the executor forks steps from a long-lived forkserver whose
environment is the one it started with, which may be an earlier caller's.
"""

from __future__ import annotations

import os

import dagster as dg

from dagster_project import names
from dagster_project.kafka.offsets import Ranges
from dagster_project.kafka.settings import BOOTSTRAP_ENV
from dagster_project.spec import StreamSpec, specs_dir


def training_job_for(streams: str, home: str, bootstrap: str, job: str) -> dg.JobDefinition:
    """The job named `job` of the code location the specs in `streams` make, on this broker and registry."""
    from dagster_project.factory import build_stream_definitions
    from dagster_project.resources import default_resources
    from dagster_project.spec import load_specs

    os.environ.update({"STREAMFIT_STREAMS": streams, "STREAMFIT_HOME": home, BOOTSTRAP_ENV: bootstrap})
    defs = dg.Definitions.merge(
        *(build_stream_definitions(spec) for spec in load_specs(streams)),
        dg.Definitions(resources=default_resources()),
    )
    return defs.resolve_job_def(job)


def run_training_job(spec: StreamSpec, ranges: Ranges, instance: dg.DagsterInstance) -> dg.ExecutionResult:
    """Run the stream's training job over `ranges` with the job's own executor (not in process).

    The code location is the caller's: the specs in $STREAMFIT_STREAMS, the registry under
    $STREAMFIT_HOME, the broker in $STREAMFIT_KAFKA_BOOTSTRAP.
    """
    from assets.training import batch_run_config
    from dagster_project.settings import streamfit_home

    job = dg.build_reconstructable_job(
        "dagster_project.orchestration.jobs",
        "training_job_for",
        reconstructable_kwargs={
            "streams": str(specs_dir().resolve()),
            "home": str(streamfit_home()),
            "bootstrap": os.environ[BOOTSTRAP_ENV],
            "job": names.training_job(spec.name),
        },
    )
    config = batch_run_config(spec, ranges).to_config_dict()
    with dg.execute_job(job, instance, run_config=config) as result:
        result.all_events  # noqa: B018 (read while the result is open)
        return result
