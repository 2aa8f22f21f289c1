"""A batch whose every message was dead-lettered: passed over, not halted.

Re-running such a batch can never do better (its messages stay malformed), and nothing is lost:
each message is on the DLQ with its reason. So the stream moves past it by itself, recorded the way
`streamfit batches skip` records a skip: a pending offset reset with the reason, which the next
version applies and keeps in its meta (`offset_reset_applied`). Every offset is then either learned
by a version or recorded there as passed over.
"""

from __future__ import annotations

import re
from typing import Any

from dagster_project.ingest.micro_batch import MicroBatch
from dagster_project.kafka.offsets import Ranges, ranges_text
from dagster_project.registry.store import ModelRegistry, without_state
from dagster_project.spec import StreamSpec

KIND = "passed_over"  # a pending reset's `kind` when it passes over batches of dead letters
# The pending reset's record of the dead-lettered offsets it passes over: {"ranges", "messages"}.
DEAD_LETTERED = "dead_lettered"
# The pending reset's record of offsets passed over that held no record a read_committed reader gets
# (aborted transactions, transaction markers, offsets compacted away): {"ranges": {p: [start, end]}}.
UNREADABLE = "unreadable"
# The pending reset a newer one replaced after following it (an operator's, a quarantine's, a
# pass-over before a skipped halt): kept in the newer record, so the version applying it records both.
AFTER = "after"
# How many replaced resets a pending one keeps nested under `after`; older ones are folded into one
# record that keeps their dead-letter counts (`_bounded`). Unbounded, 255 batches quarantined in a
# row nested past what orjson writes, and setting the next reset failed every retry.
MAX_AFTER = 20


# Dead letters that say the producers' events and the spec disagree (a renamed or new field, a
# feature, label, id or `ts` sent as another type or as null, a label outside the classes, the
# features moved): a schema change, not junk. Every later batch would be passed over too, learning
# nothing while only the dead-letter ratio warns; such a batch halts the stream as before, naming the
# field. Matched against `reason_kind` (the text before the first colon, numbers as <n>).
SCHEMA_KINDS = re.compile(
    r"unknown feature|missing feature|event has no 'features' object|no key$|no event time$"
    r"|feature '.*' must be an? (number|bool|integer), got |feature '.*' is a (hashed )?category"
    r"|feature '.*' is null but the spec does not allow nulls"
    r"|label .* is not one of the spec's classes|(regression )?label must be a "
    r"|event has no 'id'|event 'id' must be a |'ts' must be a number"
)


def nothing_but_dead_letters(batch: MicroBatch) -> bool:
    """Whether the batch read messages and dead-lettered every one, none for a schema change. Judged
    by what it read, not by its empty rows alone: rows lost any other way still meet the quality
    gate (and halt)."""
    schema = any(SCHEMA_KINDS.match(kind) for kind in batch.dlq_reasons)
    return batch.rows == 0 and batch.read > 0 and batch.dlq == batch.read and not schema


def nothing_readable(batch: MicroBatch) -> bool:
    """Whether the batch's learned offsets held no message at all: a complete read (a short one fails the
    run) that found only aborted transactions' records, transaction markers or offsets compacted away.
    A re-run reads nothing again, so its row-count check halted the stream until `batches skip`: a
    producer's aborted transaction (a Flink or Kafka Streams job restarting) stopped training."""
    offsets = sum(end - start for start, end in batch.learned_ranges.values())
    return offsets > 0 and batch.read == 0 and batch.rows == 0 and batch.dlq == 0


def pass_over(registry: ModelRegistry, spec: StreamSpec, batch: MicroBatch, run_id: str) -> str:
    """Record the batch as passed over (a pending offset reset past it, with the reason); the message to log.

    A run retried after this finds its batch already handled (`expected_offsets` includes the
    reset), so it is recorded once. A pending reset set since the batch was planned is an
    operator's later decision: it is kept, and the batch is passed over in the decision log only.
    """
    where = ranges_text(batch.learned_ranges)
    kinds = dict(batch.dlq_reasons.most_common(5))
    registry.record_decision(
        spec.name,
        {"kind": "passed_over", "ranges": where, "messages": batch.dlq, "reasons": kinds, "run_id": run_id},
    )
    previous = registry.pending_offset_reset(spec.name)
    if previous is not None and not _follows(previous, batch.learned_ranges):
        return (
            f"PASSED OVER {where}: every message ({batch.dlq:,}: {kinds}) went to {spec.dlq_topic}; the pending reset "
            f"to {previous['offsets']} ({previous['reason']}, by {previous['by']}), set since, moves the stream on"
        )
    passed = _passed(previous, batch)
    unreadable = _unreadable(previous, batch)
    after = _after(previous)
    messages = passed["messages"]
    reasons = []
    if messages:
        reasons.append(f"every message of {ranges_text(_ranges(passed))} was dead-lettered ({messages:,})")
    if unreadable["ranges"]:
        reasons.append(
            f"{ranges_text(_ranges(unreadable))} held no committed record (aborted transactions, transaction "
            "markers or compacted offsets)"
        )
    reason = "; ".join(reasons) + ": nothing to learn"
    if after:
        reason += f"; it followed the reset {after['reason']!r} (by {after['by']})"
    starts = {int(p): int(o) for p, o in (previous or {}).get("offsets", {}).items()} | batch.learned_ends
    registry.set_pending_offsets(
        spec.name,
        dict(sorted(starts.items())),
        reason=reason,
        by=f"the trainer, run {run_id}",
        feature_state=batch.feature_state,  # its events stay in the derived features, as in serving
        details={
            "kind": KIND,
            DEAD_LETTERED: passed,
            **({UNREADABLE: unreadable} if unreadable["ranges"] else {}),
            **({AFTER: after} if after else {}),
        },
    )
    if batch.read == 0:
        return f"PASSED OVER {where}: no committed record to read (aborted transactions, markers); the stream moves on"
    return f"PASSED OVER {where}: every message ({batch.dlq:,}: {kinds}) went to {spec.dlq_topic}; the stream moves on"


def _follows(reset: dict[str, Any], ranges: Ranges) -> bool:
    """Whether the batch starts where `reset` does on every partition both name (it was planned from it)."""
    offsets = reset.get("offsets", {})
    return all(int(offsets[str(p)]) == start for p, (start, _) in ranges.items() if str(p) in offsets)


def _passed(previous: dict[str, Any] | None, batch: MicroBatch) -> dict[str, Any]:
    """The dead-lettered offsets passed over: the batch's, joined to those of a pass-over it follows
    (batches of junk in a row make one record, not a chain of reasons)."""
    ours = previous is not None and previous.get("kind") == KIND
    earlier = previous[DEAD_LETTERED] if ours else {"ranges": {}, "messages": 0}
    ranges = _joined(earlier["ranges"], batch.learned_ranges if batch.read else {})
    return {"ranges": ranges, "messages": int(earlier["messages"]) + batch.dlq}


def _unreadable(previous: dict[str, Any] | None, batch: MicroBatch) -> dict[str, Any]:
    """The offsets passed over that held nothing to read, joined to those of a pass-over it follows.
    Kept apart from the dead letters: no message was read there, so none counts as read."""
    earlier = (previous or {}).get(UNREADABLE) if (previous or {}).get("kind") == KIND else None
    return {"ranges": _joined((earlier or {}).get("ranges", {}), {} if batch.read else batch.learned_ranges)}


def _joined(earlier: dict[str, Any], ranges: Ranges) -> dict[str, list[int]]:
    joined = dict(earlier)
    for p, (start, end) in ranges.items():
        if end > start:
            joined[str(p)] = [int(joined.get(str(p), [start])[0]), int(end)]
    return dict(sorted(joined.items(), key=lambda item: int(item[0])))


def _after(previous: dict[str, Any] | None) -> dict[str, Any] | None:
    """The pending reset the passed-over offsets follow: a pass-over's own, or any other one itself."""
    if previous is None:
        return None
    if previous.get("kind") == KIND:
        return previous.get(AFTER)
    return _bounded(without_state(previous))


def replacing(pending: dict[str, Any] | None) -> dict[str, Any]:
    """The details of a reset that replaces `pending` once past it (`batches skip`, `offsets reset`, a
    quarantine): `pending` itself, so what it passed over stays recorded by the version that applies
    the new one."""
    return {AFTER: _bounded(without_state(pending))} if pending else {}


def _bounded(record: dict[str, Any] | None, depth: int = MAX_AFTER) -> dict[str, Any] | None:
    """`record` with at most `depth` records nested under it; the rest folded into one that says how
    many resets it stands for and counts their passed-over dead letters."""
    if record is None or AFTER not in record or record[AFTER] is None:
        return record
    if depth > 1:
        return {**record, AFTER: _bounded(record[AFTER], depth - 1)}
    folded, count = record[AFTER], 0
    resets = folded
    while resets:  # a summary folded earlier stands for its own count, not for one reset
        count, resets = count + int(resets.get("folded", 1)), resets.get(AFTER)
    offsets, messages = dead_lettered_rows(folded)
    summary = {"reason": f"{count} earlier reset(s), folded", "by": "streamfit", "folded": count}
    return {**record, AFTER: summary | {DEAD_LETTERED: {"ranges": {}, "messages": messages, "offsets": offsets}}}


def dead_lettered_rows(reset: dict[str, Any] | None) -> tuple[int, int]:
    """(offsets, messages) passed over as dead letters by `reset` and the resets it replaced."""
    if not reset:
        return 0, 0
    passed = reset.get(DEAD_LETTERED) or {}
    offsets = sum(int(e) - int(s) for s, e in (passed.get("ranges") or {}).values()) + int(passed.get("offsets", 0))
    earlier = dead_lettered_rows(reset.get(AFTER))
    return offsets + earlier[0], int(passed.get("messages", 0)) + earlier[1]


def _ranges(passed: dict[str, Any]) -> Ranges:
    return {int(p): (int(s), int(e)) for p, (s, e) in passed["ranges"].items()}
