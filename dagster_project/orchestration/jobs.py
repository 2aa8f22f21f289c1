"""A training job that other processes can rebuild: what Dagster's multiprocess executor needs.

`execute_in_process` runs every step in the caller; a real run (a process, or a pod, per step) has to
re-create the job in each step's process from a pointer. `run_training_job` points at
`training_job_from_env`, which loads the code location (`dagster_project.definitions`: the specs in
$STREAMFIT_STREAMS, the broker in $STREAMFIT_KAFKA_BOOTSTRAP, the registry under $STREAMFIT_HOME) and
picks the job named in $STREAMFIT_JOB. Benchmarks and tests use it to run a job as a deployment does.
"""

from __future__ import annotations

import os

import dagster as dg

from dagster_project import names
from dagster_project.kafka.offsets import Ranges
from dagster_project.spec import StreamSpec

JOB_ENV = "STREAMFIT_JOB"


def training_job_from_env() -> dg.JobDefinition:
    """The job named in $STREAMFIT_JOB, from the code location as the environment configures it."""
    from dagster_project.definitions import defs

    return defs.resolve_job_def(os.environ[JOB_ENV])


def run_training_job(spec: StreamSpec, ranges: Ranges, instance: dg.DagsterInstance) -> dg.ExecutionResult:
    """Run the stream's training job over `ranges` with the job's own executor (not in process).

    The caller's environment must configure the code location (see the module docstring); the job is
    looked up by name in every step's process.
    """
    from assets.training import batch_run_config

    os.environ[JOB_ENV] = names.training_job(spec.name)
    config = batch_run_config(spec, ranges)
    with dg.execute_job(
        dg.reconstructable(training_job_from_env), instance, run_config=config.to_config_dict()
    ) as result:
        result.all_events  # noqa: B018 (read while the result is open)
        return result
