"""The Kafka sensor: plans the next micro-batch from cheap broker state, never consuming.

Each tick: refuse to overlap a running training run of the stream, refuse a model whose estimator
parameters no run could build (checked once per spec), read the head's learned offsets from the
registry, probe each partition's true end, and request one run over the exact planned ranges. Every
skip says why. A halt whose run failed because the broker or MLflow was away resumes by itself once
the broker answers (`sensors/auto_resume.py`).
"""

import time

import dagster as dg
import orjson

from assets.training import batch_run_config, halted_dlq_from, recorded_dlq_from, retried_halt
from dagster_project import names
from dagster_project.dev.producer import produce_command
from dagster_project.ingest.sent_letters import planned_dlq_from
from dagster_project.instance import LOST_RETRY_S, ask_retry_again, lost_retry
from dagster_project.kafka.io import BrokerUnavailable, probe_partitions, topic_changed, topic_lost
from dagster_project.kafka.offsets import (
    BatchPlan,
    PartitionState,
    Ranges,
    decode_ranges,
    encode_ranges,
    find_gaps,
    plan_batch,
    ranges_key,
)
from dagster_project.kafka.settings import BrokerConfigError
from dagster_project.registry.contract import spec_changed
from dagster_project.registry.promotion import spec_tail_split
from dagster_project.registry.store import ModelRegistry, RegistryError, expected_offsets
from dagster_project.resources import KafkaResource, RegistryResource
from dagster_project.spec import StreamSpec
from monitors.cut_evidence import CutPlan, early_cut
from monitors.early_cut import CutDecision
from sensors.auto_resume import resume_tick, transient_error, unwrap_retry
from sensors.cadence import minimum_interval_for
from sensors.resume_policy import auto_resume_record

CUT_REASON_MAX = 2000  # characters of the cut's reason kept in the run's tag (the cursor keeps it whole)


def build_kafka_sensor(spec: StreamSpec, job: "dg.JobDefinition") -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{spec.name}_kafka_sensor",
        job=job,
        minimum_interval_seconds=minimum_interval_for(spec.batch.sensor_interval_s),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Launches a training run when {spec.events_topic} has >= {spec.batch.rows} rows waiting "
        f"or the oldest waited {spec.batch.max_wait_s:g}s.",
    )
    def kafka_sensor(context: dg.SensorEvaluationContext, kafka: KafkaResource, registry: RegistryResource):
        return evaluate(context, spec, job.name, kafka, registry)

    return kafka_sensor


def evaluate(
    context: dg.SensorEvaluationContext,
    spec: StreamSpec,
    job_name: str,
    kafka: KafkaResource,
    registry: RegistryResource,
) -> dg.SensorResult | dg.SkipReason:
    running = context.instance.get_runs(dg.RunsFilter(job_name=job_name, statuses=names.in_flight_statuses()), limit=1)
    if running:
        run = running[0]
        return dg.SkipReason(f"training run {run.run_id[:8]} is {run.status.value}; runs of {spec.name} never overlap")
    from dagster_project.learning.estimators import model_params_problem  # imports scikit-learn: once, here

    problem = model_params_problem(spec)
    if problem:  # every run would fail building its model: say so before launching one
        message = f"MODEL PARAMS in {spec.name}: {problem}. Fix the stream's spec; nothing is planned until then."
        context.log.error(message)
        return dg.SkipReason(message)
    reg = registry.get()
    try:
        halt = reg.halt(spec.name)
        head, expected, reset = expected_offsets(reg, spec.name)
    except RegistryError as exc:  # a damaged registry file: this stream waits, the message names the fix
        context.log.error(str(exc))
        return dg.SkipReason(f"REGISTRY ERROR in {spec.name}: {exc}")
    changed_spec = spec_changed(spec, head)
    if changed_spec:  # every run would learn or serve new columns with the old meanings
        context.log.error(changed_spec)
        return dg.SkipReason(changed_spec)
    if halt and halt.get("auto_resume"):  # a transient outage halted it: resumed once the broker answers
        resumed = resume_tick(context, spec, reg, halt, head.name if head else None, expected, kafka.settings())
        if resumed is not None:
            return resumed
        halt = reg.halt(spec.name)  # an ordinary halt now: reported as any other
    if halt:
        cause = "a failed run" if halt.get("kind") == "failed_run" else "data quality"
        if halt.get("run_id") and context.instance.get_run_by_id(halt["run_id"]) is None:
            return dg.SkipReason(
                f"HALTED by {cause} at run {halt['run_id'][:8]}: {halt['summary']}. This Dagster instance has no "
                f"such run (a new DAGSTER_HOME?), so it cannot be re-executed: fix the cause, then `streamfit "
                f"batches retry {spec.name} --reason ...` learns the batch in a new run, or `streamfit batches skip "
                f"{spec.name} --reason ...` moves past it"
            )
        return dg.SkipReason(
            f"HALTED by {cause} at run {halt['run_id'][:8]}: {halt['summary']}. Re-execute that run after fixing "
            f"the cause, or `streamfit batches skip {spec.name} --reason ...`"
        )
    settings = kafka.settings()
    try:
        states = probe_partitions(settings, spec.events_topic, expected)
        changed = topic_changed(settings, spec, head, reset) if states else None
    except (BrokerUnavailable, BrokerConfigError) as exc:
        return dg.SkipReason(f"{spec.name}: {exc}; nothing planned, nothing advanced")
    if changed:
        message = (
            f"OFFSET GAP in {spec.name}: {spec.events_topic} is not the topic {head.name} learned from ({changed}). "
            "Its offsets now name other records, so nothing is learned until you decide: "
            f"`streamfit offsets reset {spec.name} --to earliest|latest`."
        )
        context.log.error(message)
        return dg.SkipReason(message)
    if not states and (lost := topic_lost(spec, head, expected)):
        context.log.error(lost)
        return dg.SkipReason(lost)
    if not states:
        return dg.SkipReason(
            f"topic {spec.events_topic} does not exist yet (produce to it: `{produce_command(spec.name)}`)"
        )
    gaps = find_gaps(states)
    if gaps:
        message = (
            f"OFFSET GAP in {spec.name}: "
            + "; ".join(g.describe() for g in gaps)
            + f". Training is stopped. Decide, then run `streamfit offsets reset {spec.name} --to earliest|latest`."
        )
        context.log.error(message)
        return dg.SkipReason(message)
    now_ms = int(time.time() * 1000)
    plan = plan_batch(states, spec.batch.rows, spec.batch.max_rows, spec.batch.max_wait_s, now_ms=now_ms)
    cut = None
    if not isinstance(plan, BatchPlan) and spec.batch.early_cut and sum(s.lag for s in states):
        cut = _early_cut(reg, spec, states, now_ms)
        if not isinstance(cut, CutPlan):
            return dg.SkipReason(f"{spec.name}: {plan.reason}; no early cut: {cut.reason}")
        plan = plan_batch(
            states, spec.batch.rows, spec.batch.max_rows, spec.batch.max_wait_s, now_ms=now_ms, cut=cut.reason
        )
    if not isinstance(plan, BatchPlan):
        return dg.SkipReason(f"{spec.name}: {plan.reason}")
    head_name = head.name if head else None
    run_key, learned_before = _key_to_learn(context.instance, ranges_key(spec.name, head_name, plan.ranges))
    # Tagged (its dead letters read first, so none is sent twice) only when the run learned this very
    # topic: the key alone also matches a stream started over under its name on a recreated topic.
    same_topic = learned_before is not None and _same_topic(context.instance, spec.name, head, learned_before)
    relearned = learned_before if same_topic else _learned_before(context.instance, reg, spec.name, head, plan.ranges)
    if learned_before is not None and run_key is None:
        message = (
            f"REGISTRY BEHIND DAGSTER in {spec.name}: the batch after {head_name or 'the start'} was learned by "
            f"{RELEARNS_MAX + 1} runs (the last {learned_before.run_id[:8]}) whose versions are not in the "
            "registry. Find out what removes them (a restore, a registry another deployment shares) before "
            "learning it again; nothing is planned until the head moves."
        )
        context.log.error(message)
        return dg.SkipReason(message)
    if learned_before is not None:
        context.log.warning(
            f"REGISTRY BEHIND DAGSTER in {spec.name}: run {learned_before.run_id[:8]} learned or moved past this "
            f"batch after {head_name or 'the start'}, but no version records it (the registry restored from an "
            f"older backup, or an offset reset back to it); learning it again as {run_key}"
        )
    elif relearned is not None:
        context.log.warning(
            f"REGISTRY BEHIND DAGSTER in {spec.name}: run {relearned.run_id[:8]} learned "
            f"{encode_ranges(plan.ranges)} on top of {relearned.tags.get(names.PARENT_TAG)}, a version the registry "
            "no longer holds (restored from an older backup?): learning them again without dead-lettering their "
            "malformed messages twice"
        )
    earlier = _failed_batch(context.instance, spec.name, head_name, run_key, plan.ranges)
    if earlier is not None:
        failed, failed_ranges = earlier
        if lost_retry(context.instance, failed) and ask_retry_again(context.instance, failed):
            message = (
                f"{spec.name}: run {failed.run_id[:8]} failed over {LOST_RETRY_S:.0f} s ago and the daemon has not "
                "retried it (its run-retry consumer read the failure before the run's status said so): asked it again"
            )
            context.log.warning(message)
            return dg.SkipReason(message)
        if failed.tags.get("dagster/will_retry") == "true":
            return dg.SkipReason(f"{spec.name}: run {failed.run_id[:8]} failed; the daemon retries it")
        failed_key = failed.tags.get("dagster/run_key", run_key)
        summary = (
            f"the batch {encode_ranges(failed_ranges)} failed in run {failed.run_id[:8]} after its retries "
            f"({retry_story(context.instance, failed_key)})"
        )
        error = transient_error(context.instance, failed.run_id)
        auto = {"auto_resume": auto_resume_record(error, failed_key, head_name)} if error else {}
        planned = recorded_dlq_from(spec, failed)  # kept for a new run of the batch (`streamfit batches retry`)
        dlq = {"dlq_from": {str(p): o for p, o in sorted(planned.items())}} if planned is not None else {}
        reg.set_halt(
            spec.name,
            {
                "kind": "failed_run",
                "ranges": {str(p): list(r) for p, r in failed_ranges.items()},
                "learned_ends": {str(p): e for p, e in spec_tail_split(spec, failed_ranges).items()},
                "summary": summary,
                "run_id": failed.run_id,
                **dlq,
                **auto,
            },
        )
        if auto:
            return dg.SkipReason(
                f"HALTED by a failed run: {summary}, so {spec.name} is halted; {auto['auto_resume']['status']}. "
                f"Nothing after it is learned until then (or `streamfit batches skip {spec.name} --reason ...`)."
            )
        return dg.SkipReason(
            f"HALTED by a failed run: {summary}, so {spec.name} is halted. Fix the cause and re-execute that run "
            f"from the Dagster UI, or `streamfit batches skip {spec.name} --reason ...`; nothing after it is learned "
            "until then."
        )
    lag_after = sum(s.lag for s in states) - plan.rows
    try:
        dlq_from = _dlq_from(settings, reg, spec, plan.ranges, relearned)
    except (BrokerUnavailable, BrokerConfigError) as exc:
        return dg.SkipReason(f"{spec.name}: {exc}; nothing planned, nothing advanced")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=run_key,
                run_config=batch_run_config(spec, plan.ranges, dlq_from),
                tags={
                    names.STREAM_TAG: spec.name,
                    names.RANGES_TAG: encode_ranges(plan.ranges),
                    names.PARENT_TAG: head_name or "none",
                    names.LAG_AFTER_BATCH_TAG: str(lag_after),
                    "dagster/max_runtime_seconds": str(spec.batch.max_run_seconds),
                    **(_cut_tags(cut) if isinstance(cut, CutPlan) else {}),
                    **({names.RELEARNS_TAG: relearned.run_id} if relearned is not None else {}),
                },
            )
        ],
        cursor=orjson.dumps(
            {"run_key": run_key, "ranges": encode_ranges(plan.ranges), "rows": plan.rows, "reason": plan.reason}
        ).decode(),
    )


def _dlq_from(settings, reg: ModelRegistry, spec: StreamSpec, ranges: Ranges, learned: dg.DagsterRun | None):
    """Where the planned run looks for the letters an earlier run of its batch sent (`BatchConfig.dlq_from`).

    The DLQ's ends now (one ListOffsets request), for the letters of this run and its re-executions.
    A batch learned again after a registry restore inherits the offsets of the run that learned it
    first; one `streamfit batches retry` sends to a new run follows a run Dagster may no longer have, so
    it inherits the offsets the halt recorded. Both fall back on the events' timestamps when nothing
    older is recorded (a run planned, or a halt recorded, before they were)."""
    if learned is not None:
        return recorded_dlq_from(spec, learned)
    halt = retried_halt(reg, spec, ranges)
    if halt is not None:
        return halted_dlq_from(halt)
    return planned_dlq_from(settings, spec)


RELEARNS_MAX = 3  # a batch learned again more often than this is not a restore: something removes versions


def _key_to_learn(instance: dg.DagsterInstance, key: str) -> tuple[str | None, dg.DagsterRun | None]:
    """(run key, the run that learned the batch before) for the batch `key` names.

    The key is the head and the ranges, so a run that succeeded with it registered the version after
    that head. When the head is still that version, its successor left the registry (restored from a
    backup older than it) and the daemon would drop the request as a duplicate on every tick: the
    stream stalled with no message. The batch is learned again under a numbered key; None after
    `RELEARNS_MAX` numbered keys, each learned and gone."""
    learned = None
    for attempt in range(RELEARNS_MAX + 1):
        candidate = key if attempt == 0 else f"{key}#relearn{attempt}"
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/run_key": candidate}), limit=1)
        if not runs or runs[0].status != dg.DagsterRunStatus.SUCCESS:
            return candidate, learned
        learned = runs[0]
    return None, learned


def _learned_before(
    instance: dg.DagsterInstance, reg: ModelRegistry, stream: str, head, ranges: Ranges
) -> dg.DagsterRun | None:
    """A run that learned exactly these ranges on top of a version the registry lost, or None.

    After a restore the first lost batch has a used run key (`_key_to_learn`), but the version it
    makes has a new name, so the next lost batches have new keys; on a busy stream they are planned
    with the same ranges, which tell that they were learned (and their malformed messages
    dead-lettered) before. Only a run whose head is gone and whose version learned the head's topic
    (same topic id) counts: otherwise the same offsets may be another topic's (deleted and recreated,
    an offset reset followed, or a registry started over), whose dead letters name other messages."""
    runs = instance.get_runs(
        dg.RunsFilter(
            tags={names.STREAM_TAG: stream, names.RANGES_TAG: encode_ranges(ranges)},
            statuses=[dg.DagsterRunStatus.SUCCESS],
        ),
        limit=10,
    )
    if not runs:
        return None
    held = set(reg.version_names(stream))
    for run in runs:
        # The same incarnation of the topic: a registry deleted and its topic recreated under the same
        # stream name leaves old runs whose heads are gone too, and their letters name other messages.
        if run.tags.get(names.PARENT_TAG, "none") not in held | {"none"} and _same_topic(instance, stream, head, run):
            return run
    return None


def _same_topic(instance: dg.DagsterInstance, stream: str, head, run: dg.DagsterRun) -> bool:
    """Whether `run`'s version learned the topic `head` learned (their topic ids match; unknown: no)."""
    topic_id = ((head.meta["offsets"].get("identity") or {}).get("topic_id") if head else None) or ""
    return bool(topic_id) and _learned_topic_id(instance, run.run_id, stream) == topic_id


def _learned_topic_id(instance: dg.DagsterInstance, run_id: str, stream: str) -> str | None:
    """The topic id the run's registered version learned from (its `model_version` materialization)."""
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = record.asset_materialization
        if materialization is not None and materialization.asset_key == dg.AssetKey([stream, "model_version"]):
            entry = materialization.metadata.get("topic_id")
            return str(getattr(entry, "value", entry) or "") or None
    return None


def _failed_batch(
    instance: dg.DagsterInstance, stream: str, head_name: str | None, run_key: str, ranges: Ranges
) -> tuple[dg.DagsterRun, Ranges] | None:
    """The failed run of the batch the plan starts, with its ranges, or None.

    The same run key is the same batch. But on a stream slower than `batch.rows`, rows that arrive
    while a batch fails make the next plan longer, so its key differs: without looking further the
    sensor launched a new, longer run of the same failing batch on every tick, for ever (a damaged
    head, an unwritable registry). So the newest sensor run on the same head whose ranges start
    where the plan does is that batch too.
    """
    exact = instance.get_runs(dg.RunsFilter(tags={"dagster/run_key": run_key}), limit=1)
    if exact and exact[0].status == dg.DagsterRunStatus.FAILURE:
        return exact[0], ranges
    newest = instance.get_runs(
        dg.RunsFilter(tags={names.STREAM_TAG: stream, names.PARENT_TAG: head_name or "none"}), limit=1
    )
    if not newest or newest[0].status != dg.DagsterRunStatus.FAILURE or names.RANGES_TAG not in newest[0].tags:
        return None
    theirs = decode_ranges(newest[0].tags[names.RANGES_TAG])
    starts = [(p, s) for p, (s, e) in theirs.items() if e > s]
    if starts and all(p in ranges and ranges[p][0] == s for p, s in starts):
        return newest[0], theirs
    return None


def _early_cut(
    reg: ModelRegistry, spec: StreamSpec, states: list[PartitionState], now_ms: int
) -> CutPlan | CutDecision:
    """The early cut's answer for the rows waiting now (`monitors.cut_evidence.early_cut`)."""
    waiting = [s for s in states if s.lag]
    stamps = [s.oldest_waiting_ts_ms for s in waiting if s.oldest_waiting_ts_ms is not None]
    oldest_s = min(stamps) / 1000 if stamps else now_ms / 1000
    return early_cut(reg, spec, {s.partition: s.next_offset for s in states}, oldest_s, now_ms / 1000)


def _cut_tags(cut: CutPlan) -> dict[str, str]:
    """A cut batch's run tags: the drift sensor reads them to record the retrain that follows."""
    return {names.EARLY_CUT_TAG: "second" if cut.second else "first", names.CUT_REASON_TAG: cut.reason[:CUT_REASON_MAX]}


def retry_story(instance: dg.DagsterInstance, run_key: str) -> str:
    """How a batch's runs were retried: run attempts (the daemon's), step retries with their
    backoff waits (Dagster's RetryPolicy), and the error that ended the last attempt."""
    from dagster import DagsterEventType

    runs = sorted(
        instance.get_runs(dg.RunsFilter(tags={"dagster/run_key": run_key})),
        key=lambda r: int(r.tags.get("dagster/retry_number", "0")),
    )
    waits: list[float] = []
    final = None
    for run in runs:
        for record in instance.all_logs(
            run.run_id, of_type={DagsterEventType.STEP_UP_FOR_RETRY, DagsterEventType.STEP_FAILURE}
        ):
            event = record.dagster_event
            if event.event_type == DagsterEventType.STEP_UP_FOR_RETRY:
                waits.append(float(event.event_specific_data.seconds_to_wait or 0.0))
            else:
                error = unwrap_retry(event.event_specific_data.error)  # not "Exceeded max_retries"
                final = f"{event.step_key}: {error.cls_name}: {error.message.strip()}" if error else event.message
    shown = ", ".join(f"{w:.1f} s" for w in waits[:8]) + (", ..." if len(waits) > 8 else "")
    story = f"{len(runs)} run attempt(s), {len(waits)} step retr{'y' if len(waits) == 1 else 'ies'}"
    if waits:
        story += f" with backoff waits {shown}"
    if final:
        story += f"; last error {final[:300]}"
    return story
