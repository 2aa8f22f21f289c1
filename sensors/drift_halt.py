"""What the drift sensor does on a halted stream: a retrain waits for the halt, a rollback does not.

A halt (`registry.halt`) stops a stream learning until an operator clears it: a batch failed its
data-quality checks, or a run failed for good (`sensors/kafka_sensor.py`); one an outage caused
resumes by itself (`sensors/auto_resume.py`).

*Retrain: deferred.* A retrain registers a new head under the halted batch, which the halt's fix (the
halted run re-executed, planned on the head it failed on) does not expect, and it would act while an
operator is deciding what the stream learns; the scheduled full retrain waits for the same reason
(`assets/reporting.full_retrain_skip`). The sensor records nothing when it defers: its evidence is the
registry's versions and decisions since the last action, which a halt neither ages nor moves (nothing
is learned meanwhile), so the first tick after the halt is cleared finds the same drift and retrains.

*Rollback: still taken.* A rollback trains nothing, reads no Kafka and registers no version: it moves
the `champion` alias back to a version that already served, so the head, the learned offsets and the
halt's fix are untouched (the re-executed run learns on the same head; its candidate then meets the
restored champion at the gate). Its evidence, the champion's checks against its predecessor, comes
from batches that passed their checks before the halt. Deferring it would leave a regressed champion
serving for as long as the halt lasts (a halted stream learns nothing that could replace it), and
past `drift.rollback_window_s` after the promotion the evidence is no longer considered: the rollback
would be lost, not deferred. A data-quality halt is no argument for keeping it either: the bad batch
was never learned by either version. The rollback's reasons say the stream is halted, so its run and
the audit log show it; an operator who wants no change at all while investigating stops the drift
sensor in the UI.
"""

from __future__ import annotations

from typing import Any


def halt_fix(stream: str, halt: dict[str, Any]) -> str:
    """How the halt is cleared, as the Kafka sensor tells it."""
    skip = f"`streamfit batches skip {stream} --reason ...`"
    auto = halt.get("auto_resume")
    if auto:
        return f"{auto.get('status', 'it resumes by itself once the broker answers')}; or {skip}"
    run = str(halt.get("run_id") or "")[:8]
    return (
        f"fix the cause and re-execute run {run} from the Dagster UI (`streamfit batches retry {stream} "
        f"--reason ...` when this Dagster instance no longer has it), or {skip}"
    )


def halt_story(stream: str, halt: dict[str, Any]) -> str:
    """`<stream> is HALTED by <cause> at run <id>: <summary>`."""
    cause = "a failed run" if halt.get("kind") == "failed_run" else "data quality"
    run = str(halt.get("run_id") or "")[:8]
    return f"{stream} is HALTED by {cause} at run {run}: {halt.get('summary', '')}"


def retrain_deferred(stream: str, halt: dict[str, Any], reasons: list[str]) -> str:
    """The skip message of a drift retrain on a halted stream: the halt, its fix, and what waits."""
    return (
        f"{halt_story(stream, halt)}. Drift retrain deferred until the halt is cleared ({halt_fix(stream, halt)}): "
        f"the evidence is kept and the first tick after acts on it if it still holds ({'; '.join(reasons)})"
    )


def rollback_on_halt(stream: str, halt: dict[str, Any]) -> str:
    """The reason a rollback on a halted stream adds: taken anyway, and why the halt stays."""
    return (
        f"rolled back although {halt_story(stream, halt)}: a rollback trains nothing and moves no offsets, "
        f"and a halted stream learns nothing that would replace a regressed champion; the halt stays "
        f"({halt_fix(stream, halt)})"
    )
