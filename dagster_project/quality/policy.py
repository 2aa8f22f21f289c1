"""What happens to a batch after its data-quality checks: train, split, halt or quarantine.

Every outcome is visible: a halt stops the stream with the reason until an operator re-runs or
skips the batch; a quarantine stores the batch with its validation result and lets the stream
advance; split-off rows go to the DLQ with their reasons; a batch whose every message was
dead-lettered is passed over (`quality.passed_over`). Nothing is dropped silently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Literal

from dagster_project.ingest.dead_letters import DeadLetter, DeadLetterError, write_dead_letters
from dagster_project.ingest.events import reason_kind
from dagster_project.ingest.micro_batch import MicroBatch
from dagster_project.ingest.originals import Original, read_originals
from dagster_project.ingest.sent_letters import written_since
from dagster_project.kafka.offsets import ranges_text
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.quality.passed_over import nothing_but_dead_letters, nothing_readable, pass_over, replacing
from dagster_project.quality.quarantine import QuarantineStore
from dagster_project.registry.store import ModelRegistry, with_state
from dagster_project.spec import StreamSpec

# (partition, offset) of the messages an earlier attempt dead-lettered, given the earliest time such a
# dead letter can have been written (`ingest.sent_letters`).
AlreadySent = Callable[[int | None], Collection[tuple[int, int]]]


@dataclass
class QualityOutcome:
    batch: MicroBatch | None  # what trains (None: nothing does)
    passed: bool
    severity: Literal["ERROR", "WARN"]
    message: str
    metadata: dict[str, Any] = field(default_factory=dict)


def dead_letter_rows(
    settings: KafkaSettings,
    spec: StreamSpec,
    rejected: MicroBatch,
    reasons: list[str],
    timeout_s: float = 30.0,
    already_sent: AlreadySent | None = None,
) -> None:
    """Send rows split off a batch to the DLQ with their reason and source offset; raise unless all are
    durable within `timeout_s`.

    Each letter carries the original message (key, value, headers), read again from the events topic,
    as a dead letter refused at parsing does; only a message the topic no longer holds (retention)
    is written as the parsed row. With `already_sent` (see `read_batch`), rows an earlier attempt
    dead-lettered are not sent again.

    Raising fails the run before anything trains, so Dagster's retry re-reads the same batch and
    splits the same rows again: a broker error here can never lose a split-off row.
    """
    positions = [(int(p), int(o)) for p, o in zip(rejected.partitions, rejected.offsets, strict=True)]
    try:
        originals = read_originals(settings, spec.events_topic, positions)
        sent: Collection[tuple[int, int]] = ()
        if already_sent is not None and positions:
            stamps = [originals[at].record.timestamp_ms if at in originals else None for at in positions]
            sent = set(already_sent(written_since(stamps)))
    except Exception as exc:  # the broker's error, told as every failed dead letter is: the run is retried
        raise DeadLetterError(
            f"cannot read the {len(positions)} split-off rows' messages from {spec.events_topic} (or the "
            f"{spec.dlq_topic} records already written) to dead-letter them: {exc!r}. Nothing was committed; "
            "the run is retried, or re-execute it once the broker answers"
        ) from exc
    letters = [
        _split_off_letter(spec, rejected, i, reason, originals.get(positions[i]))
        for i, reason in enumerate(reasons)
        if positions[i] not in sent
    ]
    write_dead_letters(settings, spec.dlq_topic, "trainer", letters, timeout_s=timeout_s, partitions=spec.partitions)


def _split_off_letter(
    spec: StreamSpec, rejected: MicroBatch, i: int, reason: str, original: Original | None
) -> DeadLetter:
    """Row `i`'s dead letter: its original message, or the parsed row when the topic lost the message."""
    partition, offset = int(rejected.partitions[i]), int(rejected.offsets[i])
    if original is not None:
        record = original.record
        return DeadLetter(
            split_off_reason(reason), spec.events_topic, partition, offset, record.key, record.value, original.headers
        )
    row = {"id": rejected.ids[i], "features": dict(zip(spec.input_names, rejected.X[i].tolist(), strict=True))}
    return DeadLetter(split_off_reason(reason), spec.events_topic, partition, offset, rejected.ids[i].encode(), row)


def split_off_reason(reason: str) -> str:
    """A split-off row's dead-letter reason (the suite's `quality: ...` said once, as `data quality: ...`)."""
    return f"data quality: {reason.removeprefix('quality: ')}"


def count_split_off(kept: MicroBatch, reasons: list[str]) -> None:
    """Count the split-off rows among the kept batch's dead letters: its version's rows then add up
    (read = valid + dlq) and `streamfit_rows{fate="dlq"}` matches the DLQ. They were counted nowhere:
    420 read, 409 valid and 10 dlq, with 11 dead letters on the topic."""
    kept.dlq_reasons.update(reason_kind(split_off_reason(reason)) for reason in reasons)


def apply_quality_policy(
    settings: KafkaSettings,
    registry: ModelRegistry,
    spec: StreamSpec,
    batch: MicroBatch,
    run_id: str,
    already_sent: AlreadySent | None = None,
    dlq_from: dict[int, int] | None = None,
) -> QualityOutcome:
    """Decide the batch's fate; `already_sent` when an earlier attempt may have split off its rows.
    `dlq_from`: the DLQ offsets the run's batch was planned with, kept in a halt's record (a new run of
    the batch, `streamfit batches retry`, looks for this one's dead letters from there)."""
    from dagster_project.quality.suite import screen_batch

    if nothing_but_dead_letters(batch) or nothing_readable(batch):  # nothing to learn; a re-run cannot do better
        message = pass_over(registry, spec, batch, run_id)
        resolution = "every message dead-lettered" if batch.read else "no committed record to read"
        _clear_halt_at(registry, spec, batch, {"resolution": f"{resolution}: passed over"}, run_id)
        metadata = {"action": "passed_over", "dlq": batch.dlq, "dlq_reasons": dict(batch.dlq_reasons)}
        return QualityOutcome(None, True, "WARN", message, metadata)
    screening = screen_batch(batch, spec)
    metadata = {**screening.result.as_metadata(), "action": screening.action}
    where = ranges_text(batch.ranges)
    if screening.action in ("train", "partial"):
        _clear_halt_at(registry, spec, batch, {"resolution": "batch passed on re-run"}, run_id)
    if screening.action == "train":
        return QualityOutcome(batch, True, "ERROR", f"{where}: passed {screening.result.summary}", metadata)
    if screening.action == "partial":
        rejected = screening.rejected
        reasons = [screening.reasons[i] for i in sorted(screening.reasons)]
        dead_letter_rows(settings, spec, rejected, reasons, already_sent=already_sent)
        count_split_off(screening.kept, reasons)
        metadata.update(split_off_rows=rejected.rows, kept_rows=screening.kept.rows)
        message = f"{where}: {rejected.rows} rows broke per-row rules and went to {spec.dlq_topic}; the rest trains"
        return QualityOutcome(screening.kept, True, "ERROR", message, metadata)

    summary = screening.result.summary
    dlq_note = f" ({batch.dlq} messages dead-lettered: {most_common_text(batch.dlq_reasons)})" if batch.dlq else ""
    decision = {"kind": "quality", "action": screening.action, "ranges": ranges_text(batch.ranges), "summary": summary}
    registry.record_decision(spec.name, {**decision, "run_id": run_id})
    if screening.action == "halt":
        # With the state after the batch's events, so that `streamfit batches skip` keeps them in the
        # features as a quarantine does (the scorer sees them either way).
        record = {
            "ranges": {str(p): list(r) for p, r in batch.ranges.items()},
            "learned_ends": {str(p): e for p, e in batch.learned_ends.items()},
            "summary": summary + dlq_note,
            "run_id": run_id,
            **({"dlq_from": {str(p): o for p, o in sorted(dlq_from.items())}} if dlq_from is not None else {}),
        }
        registry.set_halt(spec.name, with_state(record, batch.feature_state))
        message = (
            f"HALTED {spec.name} at {where}: {summary}{dlq_note}. Fix the cause and re-execute run {run_id[:8]}, "
            f"or skip the batch with `streamfit batches skip {spec.name} --reason ...`"
        )
        return QualityOutcome(None, False, "ERROR", message, metadata)
    qid = QuarantineStore().save(batch, metadata, run_id)
    ends = batch.learned_ends  # the tail was not checked: the next batch learns (or refuses) it
    # Its events stay in the derived-feature state (the state after them travels with the skip), so
    # later events see them as in serving, and a replay learns the values stored with the batch.
    # A pending reset it replaces (a passed-over batch's, which this batch followed) is kept in it, so
    # the version applying the quarantine still records the offsets that one passed over.
    registry.set_pending_offsets(
        spec.name,
        ends,
        reason=f"quarantined {qid}: {summary}",
        by=f"data quality, run {run_id}",
        feature_state=batch.feature_state,
        details=replacing(registry.pending_offset_reset(spec.name)),
    )
    metadata["quarantine_id"] = qid
    message = f"QUARANTINED {where} as {qid}: {summary}{dlq_note}; the stream moves on (`streamfit quarantine show`)"
    return QualityOutcome(None, False, "WARN", message, metadata)


def _clear_halt_at(
    registry: ModelRegistry, spec: StreamSpec, batch: MicroBatch, resolution: dict[str, Any], run_id: str
) -> None:
    """Lift a halt at this very batch (its re-executed run went on): the halt is kept as a decision."""
    halt = registry.halt(spec.name)
    if halt and halt.get("ranges") == {str(p): list(r) for p, r in batch.ranges.items()}:
        registry.clear_halt(spec.name, {**resolution, "run_id": run_id})


def most_common_text(reasons: Counter, shown: int = 5) -> str:
    """The commonest refusal kinds with their counts, the rest summed: a halt's summary stays a line."""
    top = dict(reasons.most_common(shown))
    rest = len(reasons) - len(top)
    return f"{top}" + (f" and {rest} more kinds ({sum(reasons.values()) - sum(top.values())} messages)" if rest else "")
