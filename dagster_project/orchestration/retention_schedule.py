"""The daily run-retention job and its schedule (`orchestration.retention` says what is deleted and why)."""

from datetime import timedelta

import dagster as dg

from dagster_project.orchestration.retention import (
    DEFAULT_KEEP_PER_JOB,
    RETENTION_CRON,
    RETENTION_DAYS_ENV,
    halted_runs,
    prune_runs,
    retention_days,
)
from dagster_project.resources import RegistryResource

RETENTION_JOB = "run_retention"


class RetentionConfig(dg.Config):
    keep_per_job: int = DEFAULT_KEEP_PER_JOB  # the newest runs of each job stay whatever their age


def build_retention_definitions(streams: list[str]) -> dg.Definitions:
    """A job that deletes finished runs past `STREAMFIT_RUN_RETENTION_DAYS`, scheduled daily."""

    @dg.op(name="prune_finished_runs")
    def prune_finished_runs(
        context: dg.OpExecutionContext, config: RetentionConfig, registry: RegistryResource
    ) -> dg.Output[int]:
        days = retention_days()
        if days is None:
            context.log.info(f"{RETENTION_DAYS_ENV}=0: every run is kept")
            return dg.Output(0, metadata={"deleted": 0})
        keep = halted_runs(registry.get(), streams)
        result = prune_runs(
            context.instance,
            timedelta(days=days),
            keep=keep,
            keep_per_job=config.keep_per_job,
            progress=context.log.info,
        )
        context.log.info(f"runs older than {days:g} days: {result.summary()}")
        return dg.Output(
            len(result.deleted),
            metadata={"deleted": len(result.deleted), "freed_mb": round(result.freed_bytes / 1e6, 1)},
        )

    @dg.job(
        name=RETENTION_JOB,
        executor_def=dg.in_process_executor,
        description=f"Delete finished runs older than {RETENTION_DAYS_ENV} days (default 30; 0 keeps every run), "
        f"except each job's newest {DEFAULT_KEEP_PER_JOB} and any run a halted stream names.",
    )
    def run_retention() -> None:
        prune_finished_runs()

    schedule = dg.ScheduleDefinition(
        name=f"{RETENTION_JOB}_schedule",
        job=run_retention,
        cron_schedule=RETENTION_CRON,
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    return dg.Definitions(jobs=[run_retention], schedules=[schedule])
