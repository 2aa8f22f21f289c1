"""The training chain of one stream: micro_batch -> model -> onnx_model -> model_version.

Asset bodies stay short and read like the data flow; the work is in `dagster_project`.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import dagster as dg
import numpy as np
from pydantic import Field, model_validator

from dagster_project import names
from dagster_project.dev.faults import crash_point
from dagster_project.features.checkpoint import expected_state
from dagster_project.ingest import sent_letters
from dagster_project.ingest.micro_batch import MicroBatch, read_batch
from dagster_project.kafka.exactly_once import BatchRefused, Decision, decide, refuse_unseen_partition_gaps
from dagster_project.kafka.io import commit_group_offsets, log_starts
from dagster_project.kafka.offsets import Ranges, ranges_text
from dagster_project.learning.pipeline import OnnxArtifact, TrainedModel
from dagster_project.orchestration.issued_names import highest_issued, log_names_skipped
from dagster_project.orchestration.warm_runs import worker_start
from dagster_project.quality.policy import apply_quality_policy
from dagster_project.registry.contract import SpecChanged, model_changed, spec_changed
from dagster_project.registry.store import RegistryError, RegistryUnavailable, expected_offsets
from dagster_project.resources import KafkaResource, RegistryResource
from dagster_project.spec import StreamSpec

MAX_PARTITION = 2**31 - 1  # Kafka's partition ids are int32, its offsets int64
MAX_OFFSET = 2**63 - 1
PLANNED_BY_THE_SENSOR = (
    "ranges are planned by the stream's Kafka sensor: let it launch the run, or re-execute a run it launched"
)


class PartitionRange(dg.Config):
    partition: int = Field(ge=0, le=MAX_PARTITION)
    start: int = Field(ge=0, le=MAX_OFFSET)
    end: int = Field(ge=0, le=MAX_OFFSET)
    # Where the learned rows end: [learn_end, end) is the tail the promotion gate scores the
    # candidate and the champion on, learned by the next batch. None (older runs): no tail.
    learn_end: int | None = Field(default=None, ge=0, le=MAX_OFFSET)

    @model_validator(mode="after")
    def _ordered(self) -> "PartitionRange":
        """A backwards range was registered as learned up to its lower end: rows learned twice."""
        learn_end = self.end if self.learn_end is None else self.learn_end
        if not self.start <= learn_end <= self.end:
            raise ValueError(
                f"partition {self.partition}: start {self.start}, learn_end {self.learn_end}, end {self.end} "
                f"must satisfy start <= learn_end <= end; {PLANNED_BY_THE_SENSOR}"
            )
        return self


class BatchConfig(dg.Config):
    """The exact offsets a run reads: `[start, end)` per partition, planned by the Kafka sensor,
    of which `[start, learn_end)` are learned and the rest is the promotion gate's unseen tail."""

    ranges: list[PartitionRange] = Field(min_length=1)
    # The DLQ's ends when the batch was planned, by partition ({}: no DLQ yet): a re-executed run finds
    # the letters an earlier attempt sent from there on (`ingest.sent_letters`). None (runs planned
    # before they were recorded): found by the events' timestamps instead.
    dlq_from: dict[str, int] | None = None

    @model_validator(mode="after")
    def _one_range_per_partition(self) -> "BatchConfig":
        partitions = [r.partition for r in self.ranges]
        twice = sorted({p for p in partitions if partitions.count(p) > 1})
        if twice:
            raise ValueError(f"partition(s) {twice} appear more than once; {PLANNED_BY_THE_SENSOR}")
        return self

    def as_ranges(self) -> Ranges:
        return {r.partition: (r.start, r.end) for r in self.ranges}

    def dlq_offsets(self) -> dict[int, int] | None:
        return None if self.dlq_from is None else {int(p): o for p, o in self.dlq_from.items()}

    def learn_ends(self) -> dict[int, int] | None:
        if all(r.learn_end is None for r in self.ranges):
            return None
        return {r.partition: r.end if r.learn_end is None else r.learn_end for r in self.ranges}


def batch_run_config(spec: StreamSpec, ranges: Ranges, dlq_from: dict[int, int] | None = None) -> dg.RunConfig:
    """The run config of a batch over `ranges`; `dlq_from`: the DLQ's ends when it was planned
    (`sent_letters.planned_dlq_from`), or None to fall back on the events' timestamps."""
    from dagster_project.registry.promotion import spec_tail_split

    learn_ends = spec_tail_split(spec, ranges)
    config = BatchConfig(
        ranges=[
            PartitionRange(partition=p, start=s, end=e, learn_end=learn_ends[p]) for p, (s, e) in sorted(ranges.items())
        ],
        dlq_from=None if dlq_from is None else {str(p): o for p, o in sorted(dlq_from.items())},
    )
    if spec.model.scale_out.workers > 1:  # the graph-backed asset's first op takes it (assets/group_reads.py)
        nested = {"ops": {names.read_plan_op(spec.name): {"config": config.model_dump()}}}
        return dg.RunConfig(ops={names.micro_batch_op(spec.name): nested})
    return dg.RunConfig(ops={names.micro_batch_op(spec.name): config})


def recorded_dlq_from(spec: StreamSpec, run: dg.DagsterRun | None) -> dict[int, int] | None:
    """The DLQ offsets `run`'s batch was planned with (`BatchConfig.dlq_from`); None when it has none."""
    entry = (((run.run_config if run else None) or {}).get("ops") or {}).get(names.micro_batch_op(spec.name)) or {}
    nested = (entry.get("ops") or {}).get(names.read_plan_op(spec.name)) or {}  # the graph-backed asset's first op
    config = entry.get("config") or nested.get("config") or {}
    recorded = config.get("dlq_from")
    return None if recorded is None else {int(p): int(o) for p, o in recorded.items()}


def _attempt(context: dg.AssetExecutionContext) -> int:
    """0 for a run's first try, N for Dagster's N-th automatic retry of it."""
    return int(context.run.tags.get("dagster/retry_number", "0"))


def may_have_dead_lettered(context: dg.AssetExecutionContext, reg: Any, spec: StreamSpec, ranges: Ranges) -> bool:
    """Whether an earlier attempt may have read these ranges and dead-lettered their malformed
    messages: a step retry, a retried or re-executed run, a run of the batch the stream halted at,
    a batch learned again after a registry restore, or one `streamfit batches retry` sent to a new
    run. Only then is the DLQ read to send nothing twice (its records since the batch's messages
    arrived: `ingest.sent_letters`)."""
    if context.retry_number or _attempt(context) or context.run.parent_run_id:
        return True
    if names.RELEARNS_TAG in context.run.tags:
        return True
    halt = reg.halt(spec.name)
    if halt:
        return halt.get("ranges") == {str(p): list(r) for p, r in ranges.items()}
    return retried_halt(reg, spec, ranges) is not None


def retried_halt(reg: Any, spec: StreamSpec, ranges: Ranges) -> dict[str, Any] | None:
    """The halt `streamfit batches retry` cleared of a batch starting where `ranges` do (the latest), or
    None: a new run learns it, after a run Dagster no longer has may have dead-lettered its messages."""
    starts = {str(p): r[0] for p, r in ranges.items()}
    matching = [
        d.get("halt") or {}
        for d in reg.decisions(spec.name)
        if d.get("kind") == "halt_cleared"
        and d.get("resolution") == names.RETRIED_RESOLUTION
        and any(starts.get(p) == r[0] for p, r in ((d.get("halt") or {}).get("ranges") or {}).items())
    ]
    return matching[-1] if matching else None


def halted_dlq_from(halt: dict[str, Any]) -> dict[int, int] | None:
    """The DLQ offsets the halted run's batch was planned with (`BatchConfig.dlq_from`), kept in its halt
    record so that a new run of the batch (`streamfit batches retry`) finds the letters the halted one
    sent without trusting the events' timestamps; None for a halt recorded without them."""
    recorded = halt.get("dlq_from")
    return None if recorded is None else {int(p): int(o) for p, o in recorded.items()}


def retry_policy(spec: StreamSpec) -> dg.RetryPolicy | None:
    """Step retries with exponential backoff and jitter: a transient error (the broker, the disk)
    is retried inside the run before the run fails; every wait is a STEP_UP_FOR_RETRY event."""
    if not spec.batch.step_retries:
        return None
    return dg.RetryPolicy(
        max_retries=spec.batch.step_retries,
        delay=spec.batch.retry_delay_s,
        backoff=dg.Backoff.EXPONENTIAL,
        jitter=dg.Jitter.PLUS_MINUS,
    )


def build_training_assets(spec: StreamSpec) -> list[dg.AssetsDefinition]:
    name = spec.name
    retries = retry_policy(spec)

    @dg.asset(
        retry_policy=retries,
        key=[name, "micro_batch"],
        group_name=name,
        output_required=False,
        kinds={"kafka"},
        check_specs=[
            dg.AssetCheckSpec(
                "data_quality",
                asset=[name, "micro_batch"],
                blocking=True,
                description=f"Great Expectations suite from the spec (policy: {spec.quality.policy}); "
                "a failing batch never trains.",
            )
        ],
        description=f"Exactly one planned offset range of {spec.events_topic}, validated; bad messages go to the DLQ.",
    )
    def micro_batch(
        context: dg.AssetExecutionContext, config: BatchConfig, kafka: KafkaResource, registry: RegistryResource
    ):
        restore_inherited_retries(context.instance, context.run)
        ranges, learn_ends = config.as_ranges(), config.learn_ends()
        head, reset, done = already_learned(context, spec, kafka, registry, ranges, learn_ends)
        if done is not None:
            yield done
            return
        state = expected_state(registry.get(), spec, head, reset)  # the features continue from the checkpoint
        settings = kafka.settings()
        already_sent, dlq_from = None, config.dlq_offsets()
        if may_have_dead_lettered(context, registry.get(), spec, ranges):  # its dead letters may be on the DLQ already
            already_sent = partial(sent_letters.dead_lettered, settings, spec, ranges, dlq_from=dlq_from)
        batch = read_batch(settings, spec, ranges, learn_ends=learn_ends, state=state, already_sent=already_sent)
        read_before = already_sent is not None
        yield from validated(context, spec, kafka, registry, batch, read_before=read_before, dlq_from=dlq_from)

    @dg.asset(
        retry_policy=retries,
        key=[name, "model"],
        group_name=name,
        output_required=False,
        ins={"micro_batch": dg.AssetIn(key=[name, "micro_batch"])},
        kinds={"scikitlearn"},
        description=f"{' vs '.join(f.label for f in spec.model.families)} after test-then-train on the batch "
        "(prequential metrics first).",
    )
    def model(
        context: dg.AssetExecutionContext, micro_batch: MicroBatch, kafka: KafkaResource, registry: RegistryResource
    ):
        from dagster_project.learning.learner import rows_of, test_then_learn
        from dagster_project.learning.windowed import kafka_reader

        start = start_from(context, registry.get(), spec)
        reg, estimator, champion = start.registry, start.estimator, start.champion
        labelled = micro_batch.labelled
        started = time.perf_counter()
        served = None
        families: dict = {}
        if labelled.any():
            X, y = micro_batch.X[labelled], micro_batch.y[labelled]
            served_metrics = champion_metrics(start, spec, X, y)
            rows = rows_of(X, y, micro_batch.partitions[labelled], micro_batch.offsets[labelled])
            attempt = _attempt(context)
            read = kafka_reader(
                kafka.settings(), spec, hook=lambda: crash_point("during_refit", attempt=attempt), registry=reg
            )
            clipped = clipped_outliers_metadata(spec, estimator, X, y, context)
            learned = test_then_learn(estimator, spec, rows, micro_batch.learned_ranges, read)
            estimator = learned.model
            numeric = learned.metrics.as_metadata() | clipped
            families = _family_metadata(spec, estimator, learned.families, micro_batch, context)
            numeric |= families.pop("numbers", {})
            if champion:
                served = {"version": champion, "metrics": served_metrics or dict(learned.metrics.as_metadata())}
        elif estimator is None:
            advance_without_model(context, reg, name, micro_batch)
            return
        else:
            numeric = {"rows": 0}
        train_seconds = time.perf_counter() - started
        crash_point("after_train", attempt=_attempt(context))
        trained = TrainedModel(
            estimator, start.parent, numeric, int(labelled.sum()), train_seconds, served, start.lineage
        )
        yield model_output(trained, start.base, families)

    if spec.model.scale_out.workers > 1:  # workers: 1 keeps the single steps above, and nothing else
        from assets.fan_out import build_fanned_out_model
        from assets.group_reads import build_group_read_micro_batch

        micro_batch = build_group_read_micro_batch(spec, retries)
        model = build_fanned_out_model(spec, retries)

    @dg.asset(
        retry_policy=retries,
        key=[name, "onnx_model"],
        group_name=name,
        ins={"micro_batch": dg.AssetIn(key=[name, "micro_batch"]), "model": dg.AssetIn(key=[name, "model"])},
        check_specs=[
            dg.AssetCheckSpec(
                "onnx_parity",
                asset=[name, "onnx_model"],
                blocking=True,
                description=f"onnxruntime matches scikit-learn within atol {spec.parity.atol:g}"
                f"{'*scale (the RMS of its outputs)' if spec.task == 'regression' else ''} + "
                f"rtol {spec.parity.rtol:g}*|sklearn| on the batch; otherwise the version is not registered.",
            )
        ],
        kinds={"onnx"},
        description="The model exported with skl2onnx, checked against scikit-learn before it may be served.",
    )
    def onnx_model(context: dg.AssetExecutionContext, micro_batch: MicroBatch, model: TrainedModel):
        from dagster_project.learning.pipeline import export_checked, unscorable_warning

        artifact = export_checked(spec, model.estimator, micro_batch.X)  # a candidate set exports its leader
        if artifact.unscorable:
            context.log.warning(unscorable_warning(micro_batch, artifact.unscorable))
        details = {k: v for k, v in artifact.parity.items() if k != "passed"}
        yield dg.Output(artifact, metadata={**details, "onnx_bytes": len(artifact.onnx_bytes)})
        yield dg.AssetCheckResult(
            check_name="onnx_parity",
            passed=artifact.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={**details, **({"reason": artifact.reason} if artifact.reason else {})},
            description=parity_summary(artifact),  # what the UI's check list shows
        )
        if not artifact.passed:  # the run's failure says why and what to do, not only "a blocking check failed"
            raise dg.Failure(description=parity_failure(spec, artifact, context.run.run_id), allow_retries=False)

    @dg.asset(
        retry_policy=retries,
        key=[name, "model_version"],
        group_name=name,
        ins={
            "micro_batch": dg.AssetIn(key=[name, "micro_batch"]),
            "model": dg.AssetIn(key=[name, "model"]),
            "onnx_model": dg.AssetIn(key=[name, "onnx_model"]),
        },
        kinds={"file"},
        description="The registered version: model.onnx, the estimator and meta.json with the offsets it learned.",
    )
    def model_version(
        context: dg.AssetExecutionContext,
        micro_batch: MicroBatch,
        model: TrainedModel,
        onnx_model: OnnxArtifact,
        kafka: KafkaResource,
        registry: RegistryResource,
    ):
        from dagster_project.registry.versioning import already_registered, register_batch

        reg = registry.get()
        version = already_registered(reg, name, model.parent, micro_batch.ranges)
        if version is not None:
            context.log.info(
                f"{version.name} already holds {ranges_text(micro_batch.ranges)} (run "
                f"{str(version.meta.get('run_id'))[:8]} registered it, then failed): committing its offsets only"
            )
            reg.settle_offset_reset(name)  # the reset it applied, if that run died before keeping it as applied
        else:
            with refusals_fail_at_once():
                version = register_batch(
                    reg,
                    spec,
                    micro_batch,
                    model,
                    onnx_model.onnx_bytes,
                    onnx_model.parity,
                    context.run.run_id,
                    number_after=highest_issued(context.instance, name),
                )
            log_names_skipped(context, version)
        crash_point("after_register", attempt=_attempt(context))
        commit_group_offsets(kafka.settings(), spec.trainer_group, spec.events_topic, version.learned)
        links = version.meta.get("mlflow") or {}  # on MLflow: the model version and its source run
        return dg.MaterializeResult(
            metadata={
                **{key: dg.MetadataValue.url(links[key]) for key in ("run_url", "model_version_url") if key in links},
                **({"mlflow_model_uri": links["model_uri"]} if "model_uri" in links else {}),
                **version_metadata(version),
                # which incarnation of the topic its offsets name (`sensors.kafka_sensor._learned_before`)
                "topic_id": str((version.meta["offsets"].get("identity") or {}).get("topic_id") or ""),
                "registered_by_earlier_attempt": version.meta.get("run_id") != context.run.run_id,
                "rows": model.rows_trained,
                **model.metrics,
            }
        )

    return [micro_batch, model, onnx_model, model_version]


def version_metadata(version) -> dict:
    """What a registered version learned, typed for the UI (a training run's and a retrain's
    `model_version`): its name and parent, the `[start, end)` offsets it read per partition and the
    offsets it learned up to, its rows (read, valid, dead-lettered, trained) and its metrics."""
    meta = version.meta
    rows = meta.get("rows") or {}
    offsets = meta.get("offsets") or {}
    return {
        "version": version.name,
        "version_number": version.number,
        "parent": meta.get("parent") or "none",
        "offsets_batch": dg.MetadataValue.json(offsets.get("batch") or {}),
        "offsets_learned": dg.MetadataValue.json({str(p): o for p, o in version.learned.items()}),
        **{f"rows_{k}": int(rows[k]) for k in ("read", "valid", "trained") if rows.get(k) is not None},
        "dead_letters": int(rows.get("dlq") or 0),
        "rows_learned_total": int(meta.get("rows_learned_total") or 0),
        **{k: float(v) for k, v in (meta.get("metrics") or {}).items() if isinstance(v, (int, float)) and k != "rows"},
    }


def parity_summary(artifact) -> str:
    """The parity check's one line: its reason when it failed (the UI showed an empty description)."""
    parity = artifact.parity
    measured = f"max |onnx - sklearn| {parity['max_abs_diff']:.3g}, {parity['label_mismatches']} label mismatches"
    if artifact.passed:
        apart = f" ({parity['unscorable_rows']} row(s) overflow float32: not scorable)" if artifact.unscorable else ""
        return f"passed on {parity['rows']:,} rows{apart}: {measured}"
    return f"FAILED on {parity['rows']:,} rows: {artifact.reason or measured}; the version is not registered"


def parity_failure(spec: StreamSpec, artifact, run_id: str) -> str:
    """A failed parity check as the run's failure: what differed, and the fix."""
    return (
        f"onnx_parity: {parity_summary(artifact)}. onnxruntime and scikit-learn disagree beyond the spec's "
        f"tolerance (parity.atol {spec.parity.atol:g}, parity.rtol {spec.parity.rtol:g}): loosen them if the "
        "difference is float32 rounding, or choose an estimator skl2onnx exports faithfully, reload the code "
        f"location, then re-execute run {run_id[:8]}"
    )


@contextmanager
def refusals_fail_at_once() -> Iterator[None]:
    """A refused batch or a changed spec fails alike on every retry: fail the step at once, so the
    sensor halts the stream with the reason instead of after the retries' backoff waits."""
    try:
        yield
    except (BatchRefused, SpecChanged) as exc:
        raise dg.Failure(description=f"{type(exc).__name__}: {exc}", allow_retries=False) from exc


def already_learned(context, spec: StreamSpec, kafka, registry, ranges: Ranges, learn_ends: dict[int, int] | None):
    """The head and offset reset the batch follows, and a passed check when the batch was learned already.

    A retry after the version was written makes sure Kafka shows it and learns nothing twice.
    """
    learned = {p: (s, (learn_ends or {}).get(p, e)) for p, (s, e) in ranges.items()}
    head, expected, reset = expected_offsets(registry.get(), spec.name)
    with refusals_fail_at_once():
        if decide(expected, learned) is not Decision.ALREADY_LEARNED:
            changed = spec_changed(spec, head)
            if changed:  # before reading: nothing dead-lettered or learned under a spec the head does not share
                raise SpecChanged(changed)
            if any(p not in expected for p in ranges):  # a first batch, or a new partition: one ListOffsets
                starts = log_starts(kafka.settings(), spec.events_topic, ranges)
                refuse_unseen_partition_gaps(ranges, expected, starts)
            return head, reset, None
    commit_group_offsets(kafka.settings(), spec.trainer_group, spec.events_topic, expected)
    learned_by = head.name if head else "an offset reset"
    message = f"{ranges_text(ranges)} was already learned ({learned_by}); nothing to validate or train"
    context.log.info(message)
    return head, reset, dg.AssetCheckResult(check_name="data_quality", passed=True, description=message)


# Dagster's daemon re-runs a failed run (run_retries.max_retries) by the run's tags when it fails: a
# batch halted by its data-quality check fails it identically each time, and each attempt recorded
# the halt again under a new run id while the sensor already named the first.
NO_RUN_RETRIES_TAG = "dagster/max_retries"


def restore_inherited_retries(instance: dg.DagsterInstance, run: dg.DagsterRun) -> None:
    """A halted run re-executed from the UI inherits its `dagster/max_retries: 0` (the UI copies the
    parent's tags): the fix the halt names would then run without the daemon's retries, and one
    broker blip would halt the stream again. A run's first step sees only an inherited value (the
    tag is added when a batch halts), so it is set back to the instance's."""
    if run.parent_run_id and run.tags.get(NO_RUN_RETRIES_TAG) == "0":
        instance.add_run_tags(run.run_id, {NO_RUN_RETRIES_TAG: str(instance.run_retries_max_retries)})


def validated(
    context,
    spec: StreamSpec,
    kafka,
    registry,
    batch: MicroBatch,
    extra: dict | None = None,
    read_before: bool = False,
    dlq_from: dict[int, int] | None = None,
):
    """The batch-level decision on a read batch: the data-quality check, then the batch (unless halted
    or quarantined) with its metadata. One path for the single step and the fanned-out merge.
    `read_before` (`may_have_dead_lettered`): rows an earlier attempt split off to the DLQ are not sent
    again; they are looked for from the DLQ offsets `dlq_from` the plan recorded (`BatchConfig.dlq_from`)."""
    name, ranges = spec.name, batch.ranges
    settings = kafka.settings()
    already_sent = None
    if read_before:
        already_sent = partial(sent_letters.dead_lettered, settings, spec, ranges, dlq_from=dlq_from)
    outcome = apply_quality_policy(
        settings, registry.get(), spec, batch, context.run.run_id, already_sent, dlq_from=dlq_from
    )
    yield dg.AssetCheckResult(
        check_name="data_quality",
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity[outcome.severity],
        description=outcome.message,
        metadata={k: v for k, v in outcome.metadata.items() if k != "failures"}
        | {"failures": dg.MetadataValue.json(outcome.metadata.get("failures", []))},
    )
    if outcome.batch is None:
        context.log.warning(outcome.message)
        if outcome.severity == "ERROR":  # a halt: the same rows fail the same checks on every attempt
            context.instance.add_run_tags(context.run.run_id, {NO_RUN_RETRIES_TAG: "0"})
            # The run's failure (the run page, the sensor's halt summary) names the rule and the fix: the
            # blocking check alone failed it with "1 blocking asset check failed ...: <stream>/micro_batch: ...".
            raise dg.Failure(description=f"data_quality: {outcome.message}", allow_retries=False)
        return
    batch = outcome.batch
    counters = batch.feature_counters or {}
    if counters.get("evicted_keys"):
        context.log.warning(
            f"{name}: the derived-feature state hit feature_state.max_keys ({spec.feature_state.max_keys} per "
            f"partition and key field): {counters['evicted_keys']} least recently seen key(s) evicted, their "
            "windows restart empty; raise max_keys if these keys are not idle"
        )
    lag = context.run.tags.get(names.LAG_AFTER_BATCH_TAG)
    yield dg.Output(
        batch,
        metadata={
            "rows": batch.rows,
            "labelled_rows": int(batch.labelled.sum()),
            "dlq": batch.dlq,
            "dlq_reasons": dict(batch.dlq_reasons),
            "ranges": ranges_text(ranges),
            "learned_ranges": ranges_text(batch.learned_ranges),
            "tail_rows": batch.tail.rows if batch.tail is not None else 0,
            **{f"feature_{k}": int(v) for k, v in counters.items()},
            **({"lag": int(lag)} if lag is not None else {}),
            "run_worker": worker_start(),
            **(extra or {}),
        },
    )


@dataclass(frozen=True)
class Start:
    """What a batch learns from: the registry's head, the model to continue and the served champion."""

    registry: Any
    head: Any
    base: str | None
    lineage: dict | None
    estimator: Any
    champion: str | None

    @property
    def parent(self) -> str | None:
        return self.head.name if self.head else None


def start_from(context, reg, spec: StreamSpec) -> Start:
    """The head, the model to continue from (it may not be the head: see `continue_from`), the champion.

    A spec whose estimator changed starts a fresh model: continuing the old one kept it (an SGD
    pipeline learned on as if it were the MLP the spec and the version's meta named)."""
    from dagster_project.learning.pipeline import continue_from

    name = spec.name
    head = reg.head(name)
    base, lineage = continue_from(reg, name)
    if base and (changed := model_changed(head.meta if base == head.name else reg.get(name, base).meta, spec)):
        lineage, base = {"from": None, "why": f"{changed} since {base}: a fresh model"}, None
        context.log.warning(f"{name}: {lineage['why']}")
    elif lineage and lineage["from"] != (head.name if head else None):
        context.log.warning(f"{name}: continuing from {base}, not the head: {lineage['why']}")
    estimator = _load_to_continue(reg, name, base) if base else None
    return Start(reg, head, base, lineage, estimator, reg.champion(name))  # champion: what the scorers served


def _load_to_continue(reg, name: str, base: str) -> Any:
    """`base`'s estimator; a missing or damaged file is named with the fix (every retry would fail alike)."""
    try:
        return reg.load_estimator(name, base)
    except RegistryUnavailable:
        raise
    except (RegistryError, OSError) as exc:  # every retry would fail alike
        raise dg.Failure(
            f"{name}: cannot load {base}'s estimator to continue learning from it ({exc}). Restore {base}'s files "
            f"from a backup, or move {base} out of the registry (the version before it becomes the head again "
            "and the batches after that are learned again), then re-execute the run",
            allow_retries=False,
        ) from exc


def champion_metrics(start: Start, spec: StreamSpec, X, y) -> dict | None:
    """The served champion's metrics on the batch, when it is not the model being continued."""
    from dagster_project.learning.prequential import evaluate

    if start.champion and start.champion != start.base and start.estimator is not None:
        return evaluate(start.registry.load_estimator(spec.name, start.champion), spec, X, y).as_metadata()
    return None  # the same model: its prequential metrics are the served ones


def advance_without_model(context, reg, name: str, micro_batch: MicroBatch) -> None:
    """Nothing can be trained or exported, but the offsets were handled: the next version records them."""
    ends = micro_batch.learned_ends  # the tail is the next batch's
    reason = f"no learnable rows ({micro_batch.dlq} dead-lettered, {micro_batch.rows} unlabelled) and no model yet"
    # The features did see its events: their state moves with the offsets, so the first
    # version's features are those of the whole stream.
    reg.set_pending_offsets(
        name, ends, reason=reason, by=f"run {context.run.run_id}", feature_state=micro_batch.feature_state
    )
    context.log.warning(f"{name}: {ranges_text(micro_batch.ranges)}: {reason}; offsets advanced")


def model_output(trained: TrainedModel, base: str | None, extra: dict) -> dg.Output:
    """The `model` asset's output and metadata (the same whether the batch was learned in one step or fanned out)."""
    served = trained.served
    served_numbers = {f"served_{k}": v for k, v in (served or {}).get("metrics", {}).items() if k != "rows"}
    return dg.Output(
        trained,
        metadata={
            **extra,
            **trained.metrics,
            **served_numbers,
            "parent": trained.parent or "none",
            "continued_from": base or "none",
            **({"served_version": served["version"]} if served else {}),
        },
    )


def _family_metadata(spec: StreamSpec, estimator, families: dict, batch: MicroBatch, context) -> dict:
    """A candidate set's per-family numbers and its leader choice on the batch's unseen tail; a
    windowed model's refit; adaptive SGD's step. Empty for any other single incremental model."""
    from dagster_project.learning.families import CandidateSet, choose_leader
    from dagster_project.learning.windowed import WindowedModel
    from dagster_project.registry.promotion import stream_metric

    if isinstance(estimator, WindowedModel):
        context.log.info(f"{spec.name}: {estimator.last.get('reason')}")
        return {"refit": int(bool(estimator.last.get("refit"))), "window": dg.MetadataValue.json(estimator.describe())}
    if not isinstance(estimator, CandidateSet):
        return adaptive_step_metadata(spec, estimator, context)
    numbers = {
        f"family_{label}_{key}": value
        for label, values in families.items()
        for key, value in values.items()
        if isinstance(value, (int, float)) and key != "rows"
    }
    tail = batch.tail
    if tail is not None and tail.rows and tail.labelled.any():
        metric = stream_metric(spec)
        choice = choose_leader(estimator, spec, metric, tail.X[tail.labelled], tail.y[tail.labelled])
        context.log.info(f"{spec.name}: {choice.reason}")
        numbers |= {f"tail_{label}_{metric}": v for label, v in choice.values.items() if v is not None}
    return {
        "numbers": numbers,
        "leader": estimator.leader,
        "families": dg.MetadataValue.json({"members": families, "choice": estimator.choice}),
    }


def clipped_outliers_metadata(spec: StreamSpec, estimator, X: np.ndarray, y: np.ndarray, context) -> dict:
    """Say which values the learner clips in this batch (`outliers.clip_outliers`, and a regressor's
    labels: `clip_labels`), before it learns: a sensor gone wild is worth a look though it no longer
    ruins the model. Judged by the first family with a scaler (a candidate set's families learn the
    same rows) and the first with learned labels."""
    from dagster_project.learning.families import CandidateSet
    from dagster_project.learning.outliers import label_outliers, outliers

    if isinstance(estimator, CandidateSet):
        pairs = [(estimator.member_of(f), f.clip_sigmas) for f in spec.model.families]  # None: it starts afresh
    else:
        pairs = [(estimator, spec.model.clip_sigmas)]
    examples, counts, sigmas = [], {}, None
    found, feature_sigmas = next(((o, s) for m, s in pairs if (o := outliers(m, X, s)) is not None), (None, None))
    if found is not None:
        sigmas = feature_sigmas
        counts["clipped_values"] = found.count
        for j, column in enumerate(found.columns):
            rows = np.flatnonzero(found.outside[:, j])
            if len(rows):
                name = spec.inputs[column].name
                examples.append(_clipped_example(name, X[rows, column], found.low[j], found.high[j]))
    if spec.task == "regression":
        found_labels = next(((f, s) for m, s in pairs if (f := label_outliers(m, y, s)) is not None), None)
        if found_labels is not None:
            (bounds, outside), label_sigmas = found_labels
            sigmas = sigmas or label_sigmas
            counts["clipped_labels"] = int(np.count_nonzero(outside))
            examples.append(_clipped_example("label", y[outside], *bounds))
    if not counts:
        return {}
    context.log.warning(
        f"{spec.name}: {sum(counts.values())} value(s) beyond {sigmas:g} learned standard deviations were clipped to "
        f"that bound for learning (scored as sent): {'; '.join(examples)}. Declare the features' min/max to "
        "dead-letter such rows, or set model.clip_sigmas (null: off)"
    )
    return counts


def _clipped_example(name: str, values: np.ndarray, low: float, high: float) -> str:
    return f"{name}: {len(values)} (e.g. {values[0]:.6g}; learned range {low:.4g} .. {high:.4g})"


def adaptive_step_metadata(spec: StreamSpec, pipeline, context) -> dict:
    """Adaptive SGD's choice of step (the default learner): which copy serves, every copy's recent loss.
    Empty for any other model. The same for a batch learned in one step or fanned out."""
    from dagster_project.learning.adaptive_sgd import step_of

    if not (step := step_of(pipeline)):
        return {}
    losses = ", ".join(f"{k.replace('_', ' ')} {v:,.1f}" for k, v in step["recent_loss"].items())
    context.log.info(
        f"{spec.name}: adaptive SGD serves the {step['serving_passes']}-pass copy (recent {step['measure']}: {losses})"
    )
    return {"adaptive_serving_passes": step["serving_passes"], "adaptive_sgd": dg.MetadataValue.json(step)}
