"""The `model` asset of a scaled-out stream: one Dagster step per partition group, then one combine.

`model.scale_out.workers > 1` turns the asset into a graph (same key, same inputs and output, so the
asset graph the UI shows is unchanged):

    split ──DynamicOut, one per group (p % workers)──> fit_group[g0], fit_group[g1], ... ──> combine

- `split` scores the batch with the parent (test-then-train's "test", on the whole batch as today),
  merges every group's scaler moments into the parent's scaler exactly, and emits each group's
  scaled rows with a copy of the parent estimator. The merge happens here, in one round, because
  this step holds the validated batch: the groups then fit in one shared feature space without a
  second synchronisation point.
- `fit_group` is one step per group (a process with the multiprocess executor, a pod with
  `k8s_job_executor`): one `partial_fit` pass over its rows.
- `combine` merges the groups' models with `learning/scale_out.py`'s combiners and hands one
  `TrainedModel` to the unchanged onnx_model -> model_version path, so a batch still has one
  version, written at one commit point with the batch's ranges. A failed group fails the run before
  anything is registered; the retried run replays the same ranges.

Reading, parsing, dead-lettering and the data-quality decision happen before, in the `micro_batch`
graph (`assets/group_reads.py`): each group's step reads its own partitions, one merge step judges
the whole batch. `split` then receives the validated batch.
"""

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import dagster as dg
import numpy as np

from assets.training import (
    adaptive_step_metadata,
    advance_without_model,
    champion_metrics,
    clipped_outliers_metadata,
    model_output,
    start_from,
)
from dagster_project.dev.faults import crash_point
from dagster_project.ingest.micro_batch import MicroBatch
from dagster_project.learning.pipeline import TrainedModel
from dagster_project.resources import RegistryResource
from dagster_project.spec import StreamSpec


@dataclass
class FanOutPlan:
    """What `combine` needs from `split`, besides the fitted groups (the rows are not in it)."""

    split: Any  # scale_out.Split with its tasks' rows and models dropped
    parent: str | None  # the head version the batch follows
    base: str | None  # the version whose model it continues
    lineage: dict | None
    metrics: dict[str, float | int]
    served: dict | None
    rows_trained: int
    started: float  # wall clock (time.time), since the steps may run in different processes


def _attempt(context: dg.OpExecutionContext) -> int:
    return int(context.run.tags.get("dagster/retry_number", "0"))


def build_fanned_out_model(spec: StreamSpec, retries: dg.RetryPolicy | None) -> dg.AssetsDefinition:
    """The graph-backed `model` asset: split -> fit_group per partition group -> combine."""
    name = spec.name

    @dg.op(
        name=f"{name}__split",
        retry_policy=retries,
        out={
            "groups": dg.DynamicOut(is_required=False, description="One task per partition group."),
            "plan": dg.Out(is_required=False),
        },
        description="Score the batch with the parent, merge the scaler exactly, split rows by partition group.",
    )
    def split(context: dg.OpExecutionContext, micro_batch: MicroBatch, registry: RegistryResource):
        from dagster_project.learning import prequential, scale_out

        started = time.time()
        start = start_from(context, registry.get(), spec)
        labelled = micro_batch.labelled
        if not labelled.any() and start.estimator is None:
            advance_without_model(context, start.registry, name, micro_batch)
            return
        X, y, partitions = micro_batch.X[labelled], micro_batch.y[labelled], micro_batch.partitions[labelled]
        served = None
        if labelled.any():
            served_metrics = champion_metrics(start, spec, X, y)
            model, metrics, _, classes = prequential.test(start.estimator, spec, X, y)
            numeric = metrics.as_metadata() | clipped_outliers_metadata(spec, start.estimator, X, y, context)
            if start.champion:
                served = {"version": start.champion, "metrics": served_metrics or dict(numeric)}
        else:
            model, _, _, classes = prequential.test(start.estimator, spec, X[:0], y[:0])
            numeric = {"rows": 0}
        plan = scale_out.split(model, spec, X, y, partitions, classes)
        context.log.info(f"{name}: {len(plan.tasks)} group(s), rows {[len(t.X) for t in plan.tasks]}: {plan.reason}")
        for task in plan.tasks:
            yield dg.DynamicOutput(task, output_name="groups", mapping_key=f"g{task.index}")
        light = [dataclasses.replace(t, model=None, X=np.empty((0, 0)), y=np.empty(0)) for t in plan.tasks]
        yield dg.Output(
            FanOutPlan(
                dataclasses.replace(plan, tasks=light),
                start.parent,
                start.base,
                start.lineage,
                numeric,
                served,
                int(labelled.sum()),
                started,
            ),
            output_name="plan",
        )

    @dg.op(name=f"{name}__fit_group", retry_policy=retries, description="One partition group's partial_fit pass.")
    def fit_group(context: dg.OpExecutionContext, task: Any):
        from dagster_project.learning import scale_out

        crash_point(f"fit_group_g{task.index}", attempt=_attempt(context))
        fitted = scale_out.fit_group(task)
        context.log.info(f"{name}: group g{task.index} (p{task.partitions}) learned {fitted.rows} rows")
        return fitted

    @dg.op(
        name=f"{name}__combine",
        retry_policy=retries,
        description="Merge the groups' models exactly as one (learning/scale_out.py's combiners).",
    )
    def combine(context: dg.OpExecutionContext, plan: FanOutPlan, fitted: list):
        from dagster_project.learning import scale_out

        model, report = scale_out.combine(plan.split, fitted)
        crash_point("after_train", attempt=_attempt(context))
        trained = TrainedModel(
            model,
            plan.parent,
            {**plan.metrics, **report.metrics()},
            plan.rows_trained,
            time.time() - plan.started,
            plan.served,
            plan.lineage,
        )
        context.log.info(f"{name}: learned with {report.workers} group(s), rows {report.group_rows}: {report.reason}")
        return model_output(trained, plan.base, report.as_metadata() | adaptive_step_metadata(spec, model, context))

    @dg.graph_asset(
        key=[name, "model"],
        group_name=name,
        ins={"micro_batch": dg.AssetIn(key=[name, "micro_batch"])},
        kinds={"scikitlearn"},
        description=f"{spec.model.families[0].label} after test-then-train on the batch, fitted by "
        f"{spec.model.scale_out.workers} partition-group steps and combined (prequential metrics first).",
    )
    def model(micro_batch):
        groups, plan = split(micro_batch)
        return combine(plan, groups.map(fit_group).collect())

    return model
