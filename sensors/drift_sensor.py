"""The drift sensor: reads the monitors' evidence and launches a retrain or a rollback run.

It reads durable state only (the registry's profiles, prequential metrics and gate checks),
decides with `monitors.decisions.decide` (cooldowns and hysteresis prevent flapping) and turns
an action into a Dagster run whose config carries the reasons, so every action is visible. On a
halted stream a retrain waits for the halt and a rollback does not (`sensors/drift_halt.py` says why).
"""

import json
import time
from typing import Any

import dagster as dg

from dagster_project import names
from dagster_project.registry.contract import spec_changed
from dagster_project.registry.store import ModelRegistry, RegistryError
from dagster_project.resources import RegistryResource
from dagster_project.spec import StreamSpec
from monitors.actions import action_history, epoch
from monitors.cut_evidence import served_totals
from monitors.decisions import decide
from monitors.evidence import describe, gather
from sensors.cadence import minimum_interval_for
from sensors.drift_halt import retrain_deferred, rollback_on_halt


def build_drift_sensor(spec: StreamSpec, rollback_job: dg.JobDefinition, retrain_job: dg.JobDefinition):
    @dg.sensor(
        name=f"{spec.name}_drift_sensor",
        jobs=[rollback_job, retrain_job],
        minimum_interval_seconds=minimum_interval_for(spec.drift.interval_s),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Watches data drift, the prequential metric ({spec.drift.detector}) and new champions "
        f"of {spec.name}; retrains or rolls back, with a {spec.drift.cooldown_s:g}s cooldown.",
    )
    def drift_sensor(context: dg.SensorEvaluationContext, registry: RegistryResource):
        return evaluate(context, spec, rollback_job.name, retrain_job.name, registry)

    return drift_sensor


def evaluate(
    context: dg.SensorEvaluationContext,
    spec: StreamSpec,
    rollback_job: str,
    retrain_job: str,
    registry: RegistryResource,
):
    for job_name in (rollback_job, retrain_job):
        running = context.instance.get_runs(
            dg.RunsFilter(job_name=job_name, statuses=names.in_flight_statuses()), limit=1
        )
        if running:
            return dg.SkipReason(f"{job_name} run {running[0].run_id[:8]} is in flight; waiting for it")
    reg = registry.get()
    try:
        changed = spec_changed(spec, reg.head(spec.name))
        if changed:  # a retrain or rollback would act on columns that mean something else now
            return dg.SkipReason(changed)
        halt = reg.halt(spec.name)
        evidence = gather(reg, spec)
    except RegistryError as exc:  # a damaged registry file: no action on guesses; the message names the fix
        context.log.error(str(exc))
        return dg.SkipReason(f"REGISTRY ERROR in {spec.name}: {exc}")
    if evidence.champion is None:
        return dg.SkipReason(f"{spec.name} has no champion yet: nothing to monitor")
    decision = decide(
        now=time.time(),
        drift_reports=evidence.drift_reports,
        changes=evidence.changes,
        comparison=evidence.comparison,
        last_action=evidence.last_action,
        config=evidence.config,
    )
    summary = describe(evidence)
    if decision.action == "none":
        why = "; ".join(decision.reasons) or "no drift, no regression"
        return dg.SkipReason(f"{spec.name}: no action ({why})")
    waiting = _live_change_not_learned_yet(decision, evidence)
    if waiting:
        return dg.SkipReason(f"{spec.name}: no action yet ({waiting})")
    reasons = list(decision.reasons)
    if halt and decision.action == "retrain":  # nothing recorded: the next tick after the halt finds it again
        return dg.SkipReason(retrain_deferred(spec.name, halt, reasons))
    if halt:
        reasons.append(rollback_on_halt(spec.name, halt))
    if decision.action == "rollback":
        job, to_version = rollback_job, decision.rollback_to or ""
    else:
        job, to_version = retrain_job, ""
    config = {
        "from_version": evidence.champion if decision.action == "rollback" else (evidence.head or ""),
        "to_version": to_version,
        "reasons": reasons,
        "evidence": json.dumps(summary, default=str),
    }
    if decision.action == "retrain" and evidence.change_version:
        config["window_from_version"] = evidence.change_version
    if decision.action == "retrain" and spec.batch.early_cut:
        config |= cut_record(context.instance, reg, spec)
    op = names.rollback_op(spec.name) if decision.action == "rollback" else names.retrain_op(spec.name)
    context.log.warning(f"{spec.name}: {decision.action}: {'; '.join(reasons)}")
    return dg.RunRequest(
        run_key=f"{decision.action}:{evidence.champion}:{evidence.head}:{len(reg.decisions(spec.name))}",
        job_name=job,
        run_config={"ops": {op: {"config": config}}},
        tags={names.STREAM_TAG: spec.name, names.ACTION_TAG: decision.action},
    )


def _live_change_not_learned_yet(decision, evidence) -> str | None:
    """Why a retrain on a live-only signal waits, or None.

    The served champion's live error (the label joiner) can rise before any training run has read
    the rows of the new concept. A retrain then would re-learn the old concept and spend the
    cooldown; the prequential detector names the change point once training reaches it.
    """
    if decision.action != "retrain" or evidence.change_version:
        return None
    concept = decision.evidence.get("concept_drift", [])
    data = decision.evidence.get("data_drift", {})
    if not concept or not all(str(c.get("metric", "")).startswith("live_") for c in concept):
        return None
    if data.get("consecutive_drifted", 0) >= data.get("hysteresis", 1):
        return None
    return (
        "the served champion's live error rose ("
        + "; ".join(decision.reasons)
        + "), but no learned batch shows the change yet: retraining now would re-learn the old concept; "
        "waiting for the training runs to reach it"
    )


def cut_record(instance: dg.DagsterInstance, reg: ModelRegistry, spec: StreamSpec) -> dict[str, Any]:
    """The action config of a retrain that follows an early cut (benchmarks/README.md parts 12 (b), 16).

    The batch just learned (the newest version trained on a batch, newer than the last action) was cut
    short when its training run carries `names.EARLY_CUT_TAG`. A first cut's retrain is recorded with
    `after_cut` (the cooldown stays where it was), the short batch's totals under the model that served
    it and the offsets the retrained version will serve from, which arm one second cut; a second cut's
    retrain (`second_cut`) learns the rows since the first cut's retrain began serving."""
    batches = [v for v in reg.versions(spec.name) if not v.meta.get("retrain")]
    if not batches or epoch(batches[-1].meta["created_at"]) <= action_history(reg.decisions(spec.name)).since:
        return {}
    cut_version = batches[-1]
    run = instance.get_run_by_id(cut_version.meta.get("run_id", "")) if cut_version.meta.get("run_id") else None
    kind = run.tags.get(names.EARLY_CUT_TAG) if run else None
    if kind == "second":
        return {"second_cut": True, "window_from_version": cut_version.name}
    short = served_totals(cut_version, spec.task)
    if kind != "first" or short is None:
        return {}
    return {
        "after_cut": True,
        "cut_version": cut_version.name,
        "short": json.dumps({"rows": short.rows, "errors": short.errors}),
        "serves_from": json.dumps({str(p): o for p, o in cut_version.learned.items()}),
    }
