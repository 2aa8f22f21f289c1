"""The `micro_batch` asset of a scaled-out stream: each partition group's step reads its own partitions.

`model.scale_out.workers > 1` turns the asset into a graph (same key, config, check and output, so the
asset graph the UI shows is unchanged):

    read_plan ──DynamicOut, one per group (p % workers)──> read_group[g0], read_group[g1], ... ──> merge_reads

- `read_plan` makes the exactly-once decision (a batch already learned reads nothing) and splits the
  configured ranges by partition group.
- `read_group` is one step per group (a process with the multiprocess executor, a pod with
  `k8s_job_executor`): it reads its partitions' ranges, parses them and dead-letters its malformed
  messages with their reasons, so reading and parsing (most of a batch's time) scale out.
- `merge_reads` rebuilds the batch of the whole ranges and makes the one batch-level decision exactly as
  the single step does (`training.validated`: the whole data-quality suite, then halt / quarantine /
  allow_partial), so row count, unique ids and mean/std bounds are still judged on the whole batch.

A stream with derived features reads in one group: their state runs through every partition's
events of the batch in one pass (`read_batch(state=...)`).
"""

from dataclasses import replace
from functools import partial

import dagster as dg

from assets.training import BatchConfig, already_learned, may_have_dead_lettered, restore_inherited_retries, validated
from dagster_project import names
from dagster_project.dev.faults import crash_point
from dagster_project.features.checkpoint import expected_state
from dagster_project.ingest import group_reads, sent_letters
from dagster_project.ingest.micro_batch import MicroBatch, read_batch
from dagster_project.registry.store import expected_offsets
from dagster_project.resources import KafkaResource, RegistryResource
from dagster_project.spec import StreamSpec


def _attempt(context: dg.OpExecutionContext) -> int:
    """Dagster's step retries count in `retry_number`; a re-executed run counts in its tag."""
    return context.retry_number + int(context.run.tags.get("dagster/retry_number", "0"))


def build_group_read_micro_batch(spec: StreamSpec, retries: dg.RetryPolicy | None) -> dg.AssetsDefinition:
    """The graph-backed `micro_batch` asset: read_plan -> read_group per partition group -> merge_reads."""
    name = spec.name
    check = dg.AssetCheckSpec(
        "data_quality",
        asset=[name, "micro_batch"],
        blocking=True,
        description=f"Great Expectations suite from the spec (policy: {spec.quality.policy}) on the whole batch, "
        "merged from the partition groups' reads; a failing batch never trains.",
    )

    @dg.op(
        name=names.read_plan_op(name),
        retry_policy=retries,
        out={
            "groups": dg.DynamicOut(is_required=False, description="One share of the ranges per partition group."),
            "plan": dg.Out(description="The ranges, or the check result of a batch already learned."),
        },
        description="Decide whether the batch is new (exactly-once) and split its ranges by partition group.",
    )
    def read_plan(
        context: dg.OpExecutionContext, config: BatchConfig, kafka: KafkaResource, registry: RegistryResource
    ):
        restore_inherited_retries(context.instance, context.run)
        ranges, learn_ends = config.as_ranges(), config.learn_ends()
        head, reset, done = already_learned(context, spec, kafka, registry, ranges, learn_ends)
        workers = 1 if spec.derived else spec.model.scale_out.workers
        # Already learned: one empty group, so that the merge (which reports the check) still runs.
        reads = group_reads.plan_reads(ranges, learn_ends, workers) if done is None else [group_reads.EMPTY]
        dlq_from = config.dlq_offsets()
        for read in reads:
            yield dg.DynamicOutput(replace(read, dlq_from=dlq_from), output_name="groups", mapping_key=f"g{read.index}")
        # The check's description only: an AssetCheckResult does not survive the IO manager's pickle.
        already = done.description if done is not None else None
        plan = {"ranges": ranges, "learn_ends": learn_ends, "done": already, "dlq_from": dlq_from}
        yield dg.Output(plan, output_name="plan")

    @dg.op(
        name=names.read_group_op(name),
        retry_policy=retries,
        description="Read, parse and dead-letter one partition group's ranges.",
    )
    def read_group(
        context: dg.OpExecutionContext, read: group_reads.GroupRead, kafka: KafkaResource, registry: RegistryResource
    ) -> tuple:
        if not read.ranges:
            return read, None
        state = None
        if spec.derived:  # one group (see the module's docstring): the state at the batch's start
            head, _, reset = expected_offsets(registry.get(), name)
            state = expected_state(registry.get(), spec, head, reset)
        settings = kafka.settings()
        # Another attempt of this step, or a re-executed run, must not dead-letter a message twice.
        batch = read_batch(
            settings,
            spec,
            read.ranges,
            learn_ends=read.learn_ends,
            state=state,
            already_sent=partial(sent_letters.dead_lettered, settings, spec, read.ranges, dlq_from=read.dlq_from),
        )
        crash_point(f"read_group_g{read.index}", attempt=_attempt(context))
        described = group_reads.describe(read, batch)
        context.log.info(f"{name}: group g{read.index} read {described}")
        return read, batch

    @dg.op(
        name=names.merge_reads_op(name),
        retry_policy=retries,
        out={
            "result": dg.Out(MicroBatch, is_required=False),
            check.get_python_identifier(): dg.Out(is_required=False),
        },
        description="Merge the groups' reads into the batch and make the one batch-level data-quality decision.",
    )
    def merge_reads(
        context: dg.OpExecutionContext, plan: dict, reads: list, kafka: KafkaResource, registry: RegistryResource
    ):
        if plan["done"] is not None:
            yield dg.AssetCheckResult(check_name="data_quality", passed=True, description=plan["done"])
            return
        reads = sorted(reads, key=lambda r: r[0].index)
        batch = group_reads.merge(plan["ranges"], plan["learn_ends"], [b for _, b in reads])
        described = [group_reads.describe(r, b) for r, b in reads]
        extra = {"read_groups": dg.MetadataValue.json(described), "read_group_count": len(described)}
        read_before = may_have_dead_lettered(context, registry.get(), spec, batch.ranges)  # split-off rows sent?
        dlq_from = plan.get("dlq_from")  # absent from a plan an older step wrote before an upgrade
        yield from validated(context, spec, kafka, registry, batch, extra, read_before=read_before, dlq_from=dlq_from)

    @dg.graph_asset(
        key=[name, "micro_batch"],
        group_name=name,
        check_specs=[check],
        kinds={"kafka"},
        description=f"Exactly one planned offset range of {spec.events_topic}, read by "
        f"{spec.model.scale_out.workers} partition-group steps, validated as one batch; bad messages go to the DLQ.",
    )
    def micro_batch():
        groups, plan = read_plan()
        result, checked = merge_reads(plan, groups.map(read_group).collect())
        return {"result": result, check.get_python_identifier(): checked}

    return micro_batch
