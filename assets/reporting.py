"""The stream report asset and the schedules: a daily full retrain and an hourly report."""

import dagster as dg

from dagster_project import names
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
    full_retrain = dg.ScheduleDefinition(
        name=names.full_retrain_schedule(spec.name),
        job=retrain_job,
        cron_schedule=spec.drift.full_retrain_cron,
        run_config={
            "ops": {
                names.retrain_op(spec.name): {
                    "config": {
                        "from_version": "",
                        "reasons": [
                            f"scheduled full retrain on the last {spec.drift.retrain_window_rows} rows "
                            "(counters slow drift and forgetting; must still win the promotion gate)"
                        ],
                    }
                }
            }
        },
        tags={names.STREAM_TAG: spec.name, names.ACTION_TAG: "scheduled_retrain"},
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Periodic fresh model on a sliding window; it competes with the champion through the gate.",
    )
    report = dg.ScheduleDefinition(
        name=f"{spec.name}_report_schedule",
        job=report_job,
        cron_schedule=spec.drift.report_cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    return [full_retrain, report], report_job
