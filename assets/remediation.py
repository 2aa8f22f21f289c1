"""Self-healing actions as Dagster jobs, so every retrain and rollback is a visible run with reasons."""

import json
from typing import Any

import dagster as dg

from dagster_project import names
from dagster_project.registry.store import ROLLBACK_REASON
from dagster_project.resources import KafkaResource, RegistryResource
from dagster_project.spec import StreamSpec
from monitors.evidence import ACTION_KIND
from sensors.drift_halt import halt_fix, halt_story


class ActionConfig(dg.Config):
    """What the drift sensor decided, and why (copied into the run so the UI shows it)."""

    from_version: str
    to_version: str = ""
    reasons: list[str]
    evidence: str = "{}"
    window_from_version: str = ""  # retrain: learn from this batch on (where the change was detected)
    # batch.early_cut (monitors/actions.py): a retrain after a first cut leaves the cooldown alone and arms
    # one second cut (the cut batch's version, its totals, where the retrained version serves from); a
    # second cut's retrain is an ordinary action, marked as such.
    after_cut: bool = False
    cut_version: str = ""
    short: str = "{}"
    serves_from: str = "{}"
    second_cut: bool = False


def build_remediation_jobs(spec: StreamSpec) -> list[dg.JobDefinition]:
    name = spec.name

    @dg.op(name=names.rollback_op(name), description="Return the champion alias to the last good version.")
    def rollback_champion(context: dg.OpExecutionContext, config: ActionConfig, registry: RegistryResource):
        reg = registry.get()
        current = reg.champion(name)
        if current != config.from_version:
            raise dg.Failure(f"champion is {current}, not {config.from_version}: the decision is stale, nothing done")
        problem = reg.unservable(name, config.to_version)
        if problem is not None:  # scorers would keep serving the version rolled back from
            raise dg.Failure(
                f"{config.to_version} cannot be served, nothing done: {problem}. `streamfit models rollback {name}` "
                "passes over it to the last servable champion",
                allow_retries=False,
            )
        reason = "; ".join(config.reasons)
        reg.set_champion(name, config.to_version, reason=ROLLBACK_REASON + reason, evidence=json.loads(config.evidence))
        reg.record_decision(
            name,
            {
                "kind": ACTION_KIND,
                "action": "rollback",
                "from_version": current,
                "to_version": config.to_version,
                "reasons": config.reasons,
                "run_id": context.run_id,
            },
        )
        context.log.warning(f"{name}: rolled back {current} -> {config.to_version}: {reason}")
        yield dg.AssetMaterialization(
            asset_key=[name, "champion"],
            metadata={"champion": config.to_version, "rolled_back_from": current, "reason": reason},
        )
        yield dg.Output(config.to_version)

    @dg.op(name=names.retrain_op(name), description="Fit a model on the recent window and register it as head.")
    def retrain_model(
        context: dg.OpExecutionContext, config: ActionConfig, kafka: KafkaResource, registry: RegistryResource
    ):
        from assets.promotion import gate_metadata, gate_retrain
        from assets.training import version_metadata
        from dagster_project.learning.retraining import retrain
        from dagster_project.orchestration.issued_names import highest_issued, log_names_skipped

        reg = registry.get()
        halt = reg.halt(name)
        if halt:  # it landed after the drift sensor or the schedule, which both check, requested this run
            context.log.warning(halted_retrain(name, halt))
            yield dg.Output("")
            return
        version = retrain(
            kafka.settings(),
            reg,
            spec,
            config.reasons,
            context.run_id,
            config.window_from_version,
            number_after=highest_issued(context.instance, name),
        )
        log_names_skipped(context, version)
        reg.record_decision(
            name,
            {
                "kind": ACTION_KIND,
                "action": "retrain",
                "from_version": config.from_version,
                "to_version": version.name,
                "since": config.window_from_version or None,
                "window": version.meta["offsets"]["batch"],
                "reasons": config.reasons,
                "run_id": context.run_id,
                **cut_fields(config),
            },
        )
        context.log.info(f"{name}: retrained {version.name} on {version.meta['offsets']['batch']}")
        # Recorded before the gate, which reads the broker: a gate that fails must not leave the name
        # unrecorded (`highest_issued` numbers versions after a registry restore from these).
        yield dg.AssetMaterialization(
            asset_key=[name, "model_version"],
            metadata={
                **version_metadata(version),
                "retrain": version.meta["retrain"]["mode"],
                "rows": version.meta["rows"]["trained"],
                "reason": "; ".join(config.reasons),
            },
        )
        result = gate_retrain(kafka.settings(), reg, spec, version)
        context.log.info(f"{name}: {result.reason}")
        # The gate's decision on the champion asset, as a training run's: without it the UI went on
        # naming the champion before the retrain, though the retrained version now served.
        estimator = reg.load_estimator(name, version.name)
        yield dg.AssetMaterialization(asset_key=[name, "champion"], metadata=gate_metadata(result, estimator))
        yield dg.Output(version.name)

    tags = {names.STREAM_TAG: name}
    return [
        dg.GraphDefinition(name=names.rollback_job(name), node_defs=[rollback_champion]).to_job(
            tags=tags, executor_def=dg.in_process_executor
        ),
        dg.GraphDefinition(name=names.retrain_job(name), node_defs=[retrain_model]).to_job(
            tags=tags, executor_def=dg.in_process_executor
        ),
    ]


def cut_fields(config: ActionConfig) -> dict[str, Any]:
    """The early-cut fields of a retrain's action record (none when the batch was not cut)."""
    if config.after_cut:
        return {
            "after_cut": True,
            "cut_version": config.cut_version,
            "short": json.loads(config.short),
            "serves_from": json.loads(config.serves_from),
        }
    return {"second_cut": True} if config.second_cut else {}


def halted_retrain(stream: str, halt: dict[str, Any]) -> str:
    """Why a retrain run that started on a halted stream registers nothing. A failed run would be
    retried by the daemon for nothing; the drift sensor asks again once the halt is cleared
    (`sensors/drift_halt.py`), the schedule on its next tick."""
    return (
        f"{halt_story(stream, halt)}. This retrain registers nothing until the halt is cleared "
        f"({halt_fix(stream, halt)}): a new head would sit under the halted batch, which its fix does not expect"
    )
