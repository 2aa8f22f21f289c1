"""The stream report asset and the schedules: a daily full retrain and an hourly report."""

import dagster as dg

from dagster_project import names
from dagster_project.registry.store import ModelRegistry, RegistryError
from dagster_project.resources import RegistryResource
from dagster_project.spec import StreamSpec


def build_report_asset(spec: StreamSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=[spec.name, "report"],
        group_name=spec.name,
        kinds={"markdown"},
        description=f"Versions, metrics over time, drift events, retrains and rollbacks of {spec.name}.",
    )
    def report(registry: RegistryResource) -> dg.MaterializeResult:
        from monitors.report import stream_report

        markdown, figures = stream_report(registry.get(), spec)
        return dg.MaterializeResult(metadata={"report": dg.MetadataValue.md(markdown), **figures})

    return report


def build_schedules(
    spec: StreamSpec, retrain_job: dg.JobDefinition
) -> tuple[list[dg.ScheduleDefinition], dg.JobDefinition]:
    report_job = dg.define_asset_job(
        name=f"{spec.name}_report",
        selection=dg.AssetSelection.assets([spec.name, "report"]),
        executor_def=dg.in_process_executor,
    )
    reason = (
        f"scheduled full retrain on the last {spec.drift.retrain_window_rows} rows "
        "(counters slow drift and forgetting; must still win the promotion gate)"
    )
    tags = {names.STREAM_TAG: spec.name, names.ACTION_TAG: "scheduled_retrain"}

    @dg.schedule(
        name=names.full_retrain_schedule(spec.name),
        job=retrain_job,
        cron_schedule=spec.drift.full_retrain_cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Periodic fresh model on a sliding window; it competes with the champion through the gate.",
    )
    def full_retrain(context: dg.ScheduleEvaluationContext, registry: RegistryResource):
        skip = full_retrain_skip(context.instance, spec, registry.get())
        if skip:
            context.log.info(skip)
            return dg.SkipReason(skip)
        config = {"from_version": "", "reasons": [reason]}
        return dg.RunRequest(run_config={"ops": {names.retrain_op(spec.name): {"config": config}}}, tags=tags)

    report = dg.ScheduleDefinition(
        name=f"{spec.name}_report_schedule",
        job=report_job,
        cron_schedule=spec.drift.report_cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    return [full_retrain, report], report_job


def full_retrain_skip(instance: dg.DagsterInstance, spec: StreamSpec, reg: ModelRegistry) -> str | None:
    """Why the scheduled full retrain does not run now, or None. It failed a run every day on a stream
    with nothing learned yet; on a halted stream it registered a head the halt's fix (re-executing
    the halted run) did not expect; beside a drift retrain or rollback in flight one of the two lost."""
    for job_name in (names.retrain_job(spec.name), names.rollback_job(spec.name)):
        running = instance.get_runs(dg.RunsFilter(job_name=job_name, statuses=names.in_flight_statuses()), limit=1)
        if running:
            return f"{spec.name}: {job_name} run {running[0].run_id[:8]} is in flight; no scheduled retrain now"
    try:
        halt = reg.halt(spec.name)
        head = reg.head(spec.name)
    except RegistryError as exc:  # a damaged registry file: the message names the fix
        return f"REGISTRY ERROR in {spec.name}: {exc}"
    if halt:
        return (
            f"{spec.name} is HALTED ({halt.get('summary', '')}): no scheduled retrain until the halt is resolved "
            "(re-execute the halted run, or `streamfit batches retry|skip`)"
        )
    if head is None:
        return f"{spec.name} has no versions yet: nothing to retrain"
    return None
