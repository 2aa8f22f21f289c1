"""Stream spec -> Dagster definitions: adding a model is adding a spec, not copying code."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import dagster as dg
import yaml

from assets.promotion import build_champion_asset
from assets.remediation import build_remediation_jobs
from assets.reporting import build_report_asset, build_schedules
from assets.training import build_training_assets
from dagster_project import names
from dagster_project.spec import StreamSpec
from sensors.drift_sensor import build_drift_sensor
from sensors.kafka_sensor import build_kafka_sensor

log = logging.getLogger(__name__)

# Dagster 1.13's own @sensor decorator passes `owners=None` to SensorDefinition, whose `owners`
# parameter is marked beta, so every sensor built (each code load, in every process) warned
# "Parameter `owners` ... is currently in beta". Streamfit sets no owners: silence exactly that.
warnings.filterwarnings(
    "ignore", message=r"Parameter `owners` of initializer `SensorDefinition", category=dg.BetaWarning
)


# What a fanned-out step imports; the multiprocess executor's forkserver imports them once and forks
# each step from it, so a step does not pay scikit-learn's imports again.
STEP_PRELOAD = ["dagster_project.orchestration.step_preload"]
STEP_EXECUTOR_ENV = "STREAMFIT_STEP_EXECUTOR"  # "k8s": fanned-out steps run as pods (deploy/k8s/)
K8S_CONFIG_ENV = "STREAMFIT_K8S_EXECUTOR_CONFIG"


def training_executor(spec: StreamSpec) -> dg.ExecutorDefinition:
    """In-process (one worker process per run, 3-5 s less start-up than a process per step), unless
    the stream scales out: then the multiprocess executor runs its partition-group steps side by side
    (deploy/k8s/ swaps in `k8s_job_executor` for one pod per step)."""
    workers = spec.model.scale_out.workers
    if workers <= 1:
        return dg.in_process_executor
    if os.environ.get(STEP_EXECUTOR_ENV) == "k8s":
        return k8s_step_executor()
    return dg.multiprocess_executor.configured(
        {"max_concurrent": workers, "start_method": {"forkserver": {"preload_modules": STEP_PRELOAD}}},
        name="fan_out_executor",
    )


def k8s_step_executor() -> dg.ExecutorDefinition:
    """dagster-k8s's `k8s_job_executor` (one pod per step) configured from $STREAMFIT_K8S_EXECUTOR_CONFIG
    (deploy/k8s/executor.yaml). dagster-k8s is a deployment's dependency, not Streamfit's."""
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError as error:
        raise ImportError(
            f"{STEP_EXECUTOR_ENV}=k8s needs dagster-k8s in the image: pip install dagster-k8s "
            "(the release matching dagster; 0.29.x for dagster 1.13.x)"
        ) from error
    path = os.environ.get(K8S_CONFIG_ENV)
    if not path:
        raise ValueError(
            f"{STEP_EXECUTOR_ENV}=k8s: set {K8S_CONFIG_ENV} to the executor's YAML (deploy/k8s/executor.yaml)"
        )
    config = yaml.safe_load(Path(path).read_text())
    return k8s_job_executor.configured(config, name="fan_out_k8s_executor")


def training_job(spec: StreamSpec):
    return dg.define_asset_job(
        name=names.training_job(spec.name),
        selection=dg.AssetSelection.groups(spec.name) - dg.AssetSelection.assets([spec.name, "report"]),
        executor_def=training_executor(spec),
        tags={names.STREAM_TAG: spec.name},
        description=f"Learn one micro-batch of {spec.events_topic} and register the new version.",
    )


def build_stream_definitions(spec: StreamSpec) -> dg.Definitions:
    for note in spec.notes():  # settings that load but do nothing: said where the code location loads them
        log.warning("stream %s: %s", spec.name, note)
    job = training_job(spec)
    assets = [*build_training_assets(spec), build_champion_asset(spec), build_report_asset(spec)]
    rollback_job, retrain_job = build_remediation_jobs(spec)
    schedules, report_job = build_schedules(spec, retrain_job)
    return dg.Definitions(
        assets=assets,
        jobs=[job, rollback_job, retrain_job, report_job],
        schedules=schedules,
        sensors=[build_kafka_sensor(spec, job), build_drift_sensor(spec, rollback_job, retrain_job)],
    )
