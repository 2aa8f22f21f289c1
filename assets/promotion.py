"""The champion gate of one stream, run on every batch before it is learned.

Two comparisons on the same held-out rows: the newest version against the champion (the
promotion gate), and a recently promoted champion against its predecessor (the evidence the
drift sensor uses to roll back a regression). Both are recorded with their numbers.
"""

import time
from datetime import datetime

import dagster as dg

from assets.training import TrainedModel
from dagster_project.ingest.micro_batch import MicroBatch
from dagster_project.registry.promotion import default_metric, gate
from dagster_project.resources import RegistryResource
from dagster_project.spec import StreamSpec


def build_champion_asset(spec: StreamSpec) -> dg.AssetsDefinition:
    name = spec.name
    metric = spec.promotion.metric or default_metric(spec.task, len(spec.label.classes or []))

    @dg.asset(
        key=[name, "champion"],
        group_name=name,
        ins={"micro_batch": dg.AssetIn(key=[name, "micro_batch"]), "model": dg.AssetIn(key=[name, "model"])},
        description=f"Promotes the newest version when its {metric} on the incoming batch is within "
        f"{spec.promotion.margin:g} of the champion's (both scored before learning the batch).",
    )
    def champion(
        context: dg.AssetExecutionContext, micro_batch: MicroBatch, model: TrainedModel, registry: RegistryResource
    ):
        from dagster_project.learning.prequential import evaluate

        reg = registry.get()
        current = reg.champion(name)
        labelled = micro_batch.labelled
        if current is None or not labelled.any():
            return dg.MaterializeResult(metadata={"champion": current or "none", "decision": "nothing to compare"})
        X, y = micro_batch.X[labelled], micro_batch.y[labelled]
        champion_metrics = evaluate(reg.load_estimator(name, current), spec, X, y).as_metadata()
        metadata = {"champion": current, f"champion_{metric}": champion_metrics.get(metric)}

        history = reg.champion_history(name)
        promoted = history[-1] if history and history[-1]["version"] == current else None
        if promoted and promoted.get("previous") and _age_s(promoted["at"]) <= spec.drift.rollback_window_s:
            predecessor = promoted["previous"]
            predecessor_metrics = evaluate(reg.load_estimator(name, predecessor), spec, X, y).as_metadata()
            reg.record_decision(
                name,
                {
                    "kind": "champion_check",
                    "champion": current,
                    "predecessor": predecessor,
                    "metric": metric,
                    "champion_value": champion_metrics.get(metric),
                    "predecessor_value": predecessor_metrics.get(metric),
                    "rows": int(labelled.sum()),
                },
            )
            metadata[f"predecessor_{metric}"] = predecessor_metrics.get(metric)

        candidate = model.parent
        if candidate is None or candidate == current:
            return dg.MaterializeResult(metadata={**metadata, "decision": "no challenger"})
        result = gate(
            metric,
            spec.promotion.margin,
            spec.promotion.min_rows,
            candidate,
            model.metrics,
            current,
            champion_metrics,
            int(labelled.sum()),
        )
        if result.promote:
            reg.set_champion(name, candidate, reason=result.reason, evidence=result.evidence())
        reg.record_decision(name, {"kind": "promotion_gate", **result.evidence()})
        context.log.info(result.reason)
        return dg.MaterializeResult(
            metadata={
                **metadata,
                "champion": candidate if result.promote else current,
                "promoted": int(result.promote),
                "candidate_metric": result.candidate_value,
                "champion_metric": result.champion_value,
                "reason": result.reason,
            }
        )

    return champion


def _age_s(iso: str) -> float:
    return time.time() - datetime.fromisoformat(iso).timestamp()
