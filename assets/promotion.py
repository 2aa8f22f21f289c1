"""The champion gate of one stream, decided in the run that trains the candidate.

The version this run registered has not learned its batch's tail (see
`dagster_project.registry.promotion.tail_split`), and neither has the champion: both are scored
on it, side by side, and the candidate is promoted or kept in the same run: promoted unless it
is worse than the champion by more than the margin and a paired test shows the champion
significantly better (non-inferiority: `dagster_project.registry.promotion.gate`). A recently
promoted champion is also compared with its predecessor on every row of the batch (none of which
either has learned), with the paired test that the champion is worse: the evidence the drift
sensor uses to roll back a regression. Every comparison is recorded with all the metrics of both models and the test.
"""

import dataclasses
import time
from datetime import datetime

import dagster as dg

from assets.training import TrainedModel, retry_policy
from dagster_project.ingest.micro_batch import MicroBatch
from dagster_project.registry.promotion import (
    HIGHER_IS_BETTER,
    RELATIVE_MARGIN_METRICS,
    compare,
    difference_text,
    gate,
    judge,
    margin_for,
    margin_text,
    stream_metric,
)
from dagster_project.registry.store import last_promotion
from dagster_project.resources import RegistryResource
from dagster_project.spec import StreamSpec


def build_champion_asset(spec: StreamSpec) -> dg.AssetsDefinition:
    name = spec.name
    metric = stream_metric(spec)

    @dg.asset(
        retry_policy=retry_policy(spec),
        key=[name, "champion"],
        group_name=name,
        ins={"micro_batch": dg.AssetIn(key=[name, "micro_batch"]), "model": dg.AssetIn(key=[name, "model"])},
        deps=[dg.AssetKey([name, "model_version"])],
        description=f"Promotes the version this run registered unless its {metric} on the batch's unseen tail "
        f"(up to {spec.promotion.tail_rows} rows, learned by the next batch) falls short of the champion's by "
        f"more than {_stated_margin(metric, spec.promotion.margin)} and a paired test shows the champion "
        "better at level "
        f"{spec.promotion.significance or 'off'} (off: the margin alone); neither model has learned those rows.",
    )
    def champion(
        context: dg.AssetExecutionContext, micro_batch: MicroBatch, model: TrainedModel, registry: RegistryResource
    ):
        metadata, reason = decide_champion(registry.get(), spec, metric, micro_batch, model)
        if reason:
            context.log.info(reason)
        return dg.MaterializeResult(metadata=metadata)

    return champion


def decide_champion(
    reg, spec: StreamSpec, metric: str, micro_batch: MicroBatch, model: TrainedModel
) -> tuple[dict, str | None]:
    """The `champion` step's work after `model_version` registered the batch: the champion check,
    then the promotion gate. Returns the step's metadata and the gate's reason (None if no gate ran).

    One function so the training benchmark runs exactly what a run does (`benchmarks/throughput.py`).
    """
    from dagster_project.learning.prequential import evaluate
    from dagster_project.registry.versioning import already_registered

    name = spec.name
    current = reg.champion(name)
    registered = already_registered(reg, name, model.parent, micro_batch.ranges)
    candidate = registered.name if registered else None
    if current is None:
        return {"champion": "none", "decision": "nothing to compare"}, None
    metadata: dict = {"champion": current}

    # A recently promoted champion against its predecessor, on every row of the batch (gathered
    # only then: copying a 100 k-row batch's rows cost ~4 ms of every run that had nothing to check).
    promoted = last_promotion(reg.champion_history(name), current)
    # A champion a person chose is not checked against the version it replaced: the drift monitor
    # would roll back to it, undoing the choice with the very version the person rejected.
    chosen_by_hand = bool(((promoted or {}).get("evidence") or {}).get("by"))
    rows = (
        _all_rows(micro_batch)
        if current != candidate
        and promoted
        and promoted.get("previous")
        and not chosen_by_hand
        and _age_s(promoted["at"]) <= spec.drift.rollback_window_s
        else None
    )
    if rows is not None:
        X, y = rows
        predecessor = promoted["previous"]
        champion_estimator = reg.load_estimator(name, current)
        predecessor_estimator = reg.load_estimator(name, predecessor)
        champion_metrics = evaluate(champion_estimator, spec, X, y).as_metadata()
        predecessor_metrics = evaluate(predecessor_estimator, spec, X, y).as_metadata()
        # A is the predecessor: the test asks whether the champion is worse (the rollback's case).
        test = compare(metric, spec, predecessor_estimator, champion_estimator, X, y)
        reg.record_decision(
            name,
            {
                "kind": "champion_check",
                "champion": current,
                "predecessor": predecessor,
                "metric": metric,
                "champion_value": champion_metrics.get(metric),
                "predecessor_value": predecessor_metrics.get(metric),
                "champion_metrics": champion_metrics,
                "predecessor_metrics": predecessor_metrics,
                "rows": len(y),
                "test": test.to_dict(),
            },
        )
        metadata[f"predecessor_{metric}"] = predecessor_metrics.get(metric)
        metadata[f"champion_{metric}_on_batch"] = champion_metrics.get(metric)
        metadata["regression_p_value"] = test.p_value

    if candidate is None or candidate == current:
        return {**metadata, "decision": "no challenger"}, None
    earlier = [d for d in reg.decisions(name) if d.get("kind") == "promotion_gate" and d.get("candidate") == candidate]
    if earlier:  # a retry after the gate decided: the decision stands, recorded once
        return {**metadata, "decision": "decided by an earlier attempt", "reason": earlier[-1]["reason"]}, None
    # Untested promotion only for the champion's own child: after a rollback (or a manual promotion
    # of an older version) or a retrain that lost or deferred its gate, the head's line is not the
    # champion's, and promoting it untested would undo that decision on the next batch.
    gating = spec.promotion.tail_rows > 0 and spec.promotion.tail_fraction > 0 and model.parent == current
    result = decide_promotion(reg, spec, metric, candidate, model.estimator, micro_batch.tail, fresh_by_default=gating)
    return {**metadata, **gate_metadata(result, model.estimator)}, result.reason


def gate_metadata(result, estimator) -> dict:
    """The `champion` asset's metadata for a gate decision (a training run's or a retrain's): who
    serves now, the candidate, both metrics on the unseen rows, the paired test's p-value, the reason."""
    return {
        "champion": result.candidate if result.promote else result.champion,
        "candidate": result.candidate,
        "promoted": int(result.promote),
        "candidate_metric": result.candidate_value,
        "champion_metric": result.champion_value,
        "unseen_rows": result.rows,
        "p_value": result.p_value,
        "test": (result.test or {}).get("test", "none"),
        "significance": result.significance or 0.0,
        "candidate_metrics": dg.MetadataValue.json(result.candidate_metrics or {}),
        "champion_metrics": dg.MetadataValue.json(result.champion_metrics or {}),
        "reason": result.reason,
        **({"leader": estimator.leader} if hasattr(estimator, "leader") else {}),
    }


def decide_promotion(
    reg,
    spec: StreamSpec,
    metric: str,
    candidate: str,
    estimator,
    unseen: MicroBatch | None,
    fresh_by_default: bool = False,
):
    """Score `candidate` (its fitted `estimator`) and the champion on `unseen` rows, neither has learned;
    promote or keep, and record the decision with every metric of both. Returns the `GateResult`.

    `fresh_by_default` (a batch's version, which learned strictly more than the champion, on a
    stream that holds tails out): too few unseen rows to judge promotes it, by the gate's
    non-inferiority default. Deferring instead kept the first version serving for ever on streams
    whose tails never reach `promotion.min_rows` (small batches, mostly unlabelled events, nullable
    rows dropped from the tail). A retrain or a replay, which did not learn more, still has to win
    the gate."""
    current = reg.champion(spec.name)
    labelled = unseen.labelled if unseen is not None and unseen.rows else None
    if labelled is None or not labelled.any():
        p = spec.promotion
        result = gate(metric, p.margin, p.min_rows, candidate, {}, current, {}, 0, significance=p.significance)
    else:
        champion_estimator = reg.load_estimator(spec.name, current)
        X, y = unseen.X[labelled], unseen.y[labelled]
        result = judge(spec, metric, candidate, estimator, current, champion_estimator, X, y)
    if result.promote:
        result = _hand_decision_holds(reg, spec, metric, candidate, result)
    tail_labels = unseen.y[labelled] if labelled is not None and labelled.any() else None
    if fresh_by_default and not result.promote and (untestable := _untestable(spec, metric, result, tail_labels)):
        reason = (
            f"{candidate} promoted untested: {untestable}, and it learned strictly more than {current}; the "
            "champion check and the drift monitor can still roll it back"
        )
        result = dataclasses.replace(result, promote=True, reason=reason)
    evidence = result.evidence() | _families(estimator) | _adaptive_step(estimator)
    if result.promote:
        reg.set_champion(spec.name, candidate, reason=result.reason, evidence=evidence)
    reg.record_decision(spec.name, {"kind": "promotion_gate", **evidence})
    return result


def _classes_lacking(spec: StreamSpec, y) -> bool:
    """Whether the tail's labels lack one of the stream's classes (ROC AUC is undefined on it)."""
    return spec.task == "classification" and len(set(y.astype(int).tolist())) < len(spec.label.classes or [])


def _untestable(spec: StreamSpec, metric: str, result, tail_labels) -> str | None:
    """Why the gate could not judge the candidate on its tail, or None when it judged it (or could
    never: a metric the models cannot give, such as log_loss without probabilities, still defers,
    or every version would be promoted however bad). A rare positive class (1 in 1,000) leaves most
    tails with one class, where ROC AUC is undefined: every such gate deferred and the first version
    served for ever, as too sparse a tail once did."""
    if result.rows < spec.promotion.min_rows:
        return f"only {result.rows} unseen rows (< promotion.min_rows {spec.promotion.min_rows}) to judge it"
    missing = result.candidate_value is None or result.champion_value is None
    if missing and metric == "roc_auc" and tail_labels is not None and _classes_lacking(spec, tail_labels):
        return f"roc_auc is not computable on its {result.rows} unseen rows (they lack a class)"
    return None


def _hand_decision_holds(reg, spec: StreamSpec, metric: str, candidate: str, result):
    """A champion a person chose (`streamfit models promote|rollback`) is replaced automatically only
    by a version of its line (grown from it since the choice) within the margin, or by another line's
    version that beats it by more than the margin. Without this a hand rollback lasted one batch: the
    rolled-back line's next version was promoted as "within margin" of the version the person chose."""
    chosen = last_promotion(reg.champion_history(spec.name), result.champion)
    by = ((chosen or {}).get("evidence") or {}).get("by")
    if not by or _of_its_line(reg, spec.name, candidate, result.champion, chosen.get("at") or ""):
        return result
    cand, champ = result.candidate_value, result.champion_value
    allowed = max(margin_for(metric, spec.promotion.margin, champ), result.noise)
    gain = None if cand is None or champ is None else (cand - champ if HIGHER_IS_BETTER[metric] else champ - cand)
    if gain is not None and gain > allowed:
        return result
    measured = (
        f"{metric} {difference_text(metric, cand)} vs {difference_text(metric, champ)} on {result.rows} unseen rows"
        if gain is not None
        else "not measured"
    )
    reason = (
        f"kept {result.champion}, chosen by {by} ({chosen.get('reason')}): {candidate} did not grow from it "
        f"since and must beat it by more than the margin {margin_text(metric, spec.promotion.margin, champ)} "
        f"({measured}); "
        f"`streamfit models promote {spec.name} <version>` chooses again"
    )
    return dataclasses.replace(result, promote=False, reason=reason)


def _of_its_line(reg, stream: str, version: str, champion: str, chosen_at: str) -> bool:
    """Whether `version` grew from the chosen `champion` after the choice: every version between them
    was registered after it. A rollback to v2 rejected v3, so v4 (v3's child) is not v2's line though
    v2 is its grandparent; after promoting the head v3, v5 (through v4, registered since) is."""
    metas = {v.name: v.meta for v in reg.versions(stream)}
    seen: set[str] = set()
    current = version
    while current in metas and current not in seen:
        if str(metas[current].get("created_at") or "") <= chosen_at:
            return False
        seen.add(current)
        current = metas[current].get("parent")
        if current == champion:
            return True
    return False


def _families(estimator) -> dict:
    """A candidate set's leader and every family's numbers on the same unseen rows (none otherwise)."""
    from dagster_project.learning.families import CandidateSet

    if not isinstance(estimator, CandidateSet):
        return {}
    return {"leader": estimator.leader, "families": estimator.choice}


def _adaptive_step(estimator) -> dict:
    """Adaptive SGD's step in the candidate (the copy it serves, every copy's recent loss; none otherwise)."""
    from dagster_project.learning.adaptive_sgd import step_of

    step = step_of(estimator)
    return {"adaptive_sgd": step} if step else {}


def gate_retrain(settings, reg, spec: StreamSpec, version):
    """The promotion gate of a retrained version, in its own run: on its parent's tail, which the
    retrain window stops short of (it re-learns learned offsets only) and the champion never saw."""
    from dagster_project.learning.retraining import unseen_tail

    parent = reg.get(spec.name, version.parent) if version.parent else None
    unseen = unseen_tail(settings, reg, spec, parent)
    metric = stream_metric(spec)
    estimator = reg.load_estimator(spec.name, version.name)
    return decide_promotion(reg, spec, metric, version.name, estimator, unseen)


# Rows the champion check scores at most. Its paired test is decided long before this many rows
# (the standard error of an AUC or accuracy difference shrinks as 1/sqrt(n): at 50,000 rows it is
# ~0.002-0.005), while scoring two models and the DeLong test on a 1,000,000-row batch costs
# seconds of every run under sustained load. Larger batches are sampled evenly (every k-th row).
CHAMPION_CHECK_MAX_ROWS = 50_000


def _all_rows(batch: MicroBatch, max_rows: int = CHAMPION_CHECK_MAX_ROWS):
    """The batch's labelled rows, learned part and tail (unseen by any version before this run),
    evenly sampled down to `max_rows`: a deterministic sample, so a retried run checks the same rows."""
    import numpy as np

    parts = [b for b in (batch, batch.tail) if b is not None and b.rows]
    X = np.concatenate([b.X[b.labelled] for b in parts]) if parts else None
    if X is None or not len(X):
        return None
    y = np.concatenate([b.y[b.labelled] for b in parts])
    if len(y) > max_rows:
        keep = np.linspace(0, len(y) - 1, max_rows).round().astype(np.int64)
        X, y = X[keep], y[keep]
    return X, y


def _age_s(iso: str) -> float:
    return time.time() - datetime.fromisoformat(iso).timestamp()


def _stated_margin(metric: str, margin: float) -> str:
    """The margin as the asset's description states it: RMSE and MAE take it as a share of the champion's error."""
    return f"{margin:.4g} x the champion's {metric}" if metric in RELATIVE_MARGIN_METRICS else f"{margin:g}"
