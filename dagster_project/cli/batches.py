"""`streamfit batches skip|retry`: the operator's ways out of a halt.

A stream halts at a batch that failed its data-quality checks (policy `halt`) or whose run failed
after its retries; skipping it records who skipped which offsets and why, and training resumes
after them. Re-executing the failed run learns the batch; when the Dagster instance no longer has
that run (a new DAGSTER_HOME), `retry` clears the halt so the sensor learns it in a new run.
"""

from __future__ import annotations

import click

from dagster_project import names
from dagster_project.cli.common import dagster_instance, operator_name, registry, stream_argument, stream_spec


@click.group()
def batches() -> None:
    """Operator actions on a halted stream."""


@batches.command("skip")
@stream_argument
@click.option("--reason", required=True, help="Why the batch is skipped (recorded with your name).")
@click.option(
    "--dry-run", is_flag=True, help="Say what would be skipped and where training would resume; change nothing."
)
def batches_skip(stream: str, reason: str, dry_run: bool) -> None:
    """Skip the batch a halt stopped at (data quality or a failed run); the next version records who skipped what.

    Its rows are never learned: see them first with --dry-run."""
    from dagster_project.quality.passed_over import replacing
    from dagster_project.registry.store import carried_state

    stream_spec(stream)
    store = registry()
    halt = store.halt(stream)
    if halt is None:
        raise click.ClickException(
            f"{stream} is not halted; nothing to skip (the Kafka sensor records a halt once a batch has failed its "
            "checks or its run has failed after every retry)"
        )
    if not halt.get("ranges"):
        raise click.ClickException(
            f"{stream}'s halt names no batch to skip ({halt.get('summary') or halt}): resolve its cause, then "
            f"delete halt.json in the stream's registry directory"
        )
    # A batch's tail (held out for the promotion gate) is the next batch's to learn: skip up to it.
    ends = {int(p): int(r[1]) for p, r in halt["ranges"].items()}
    ends.update({int(p): int(e) for p, e in (halt.get("learned_ends") or {}).items()})
    by = operator_name()
    skipped = {p: [int(r[0]), ends[int(p)]] for p, r in halt["ranges"].items()}
    pending = store.pending_offset_reset(stream)
    if pending and _past(pending["offsets"], ends):  # an operator's reset already moves past the batch: kept
        if dry_run:
            click.echo(
                f"{stream}: would skip {skipped} ({halt['summary']}); training would resume at the pending reset "
                f"{pending['offsets']} (dry run: nothing changed, the stream stays halted)"
            )
            return
        store.clear_halt(stream, {"resolution": "skipped", "by": by, "reason": reason})
        click.echo(
            f"{stream}: skipped {skipped} ({halt['summary']}); training resumes at the pending reset "
            f"{pending['offsets']} ({pending['reason']}, by {pending['by']}), which is past the skipped batch"
        )
        return
    cause = "a failed run" if halt.get("kind") == "failed_run" else "data-quality halt"
    # A data-quality halt read the batch: its events stay in the derived features (a failed run's did not).
    state = carried_state(stream, halt)
    # Where the pending reset starts a partition later (past a retention gap, or one the batch did
    # not read), it still does: replaced by the batch's end, the gap came back.
    later = {p: o for p, o in _offsets(pending).items() if o > ends.get(p, -1)}
    starts = dict(sorted((ends | later).items()))
    if dry_run:
        rows = sum(ends[int(p)] - int(r[0]) for p, r in halt["ranges"].items())
        replaces = f", replacing the pending reset to {pending['offsets']}" if pending else ""
        click.echo(
            f"{stream}: would skip {skipped} ({rows:,} rows, never learned; {halt['summary']}); training would "
            f"resume at {starts}{replaces} (dry run: nothing changed, the stream stays halted)"
        )
        return
    store.set_pending_offsets(
        stream,
        starts,
        reason=f"skipped after {cause}: {reason}",
        by=by,
        feature_state=state,
        details=replacing(pending),  # what it passed over stays recorded (the batch followed it)
    )
    store.clear_halt(stream, {"resolution": "skipped", "by": by, "reason": reason})
    tail = sum(int(r[1]) - ends[int(p)] for p, r in halt["ranges"].items())
    click.echo(f"{stream}: skipped {skipped} ({halt['summary']}); training resumes at {starts}")
    if pending:
        kept = f", keeping its later start on partition(s) {', '.join(map(str, sorted(later)))}" if later else ""
        click.echo(
            f"  it replaces the pending reset to {pending['offsets']} ({pending['reason']}, by {pending['by']}){kept}"
        )
    if tail:  # the held-out tail is not skipped: it is the next batch's first rows
        click.echo(
            f"  the batch's last {tail:,} rows (its promotion tail) were not skipped: the next batch learns them, and "
            "halts again if they hold the same fault. To move past everything waiting instead, now: `streamfit "
            f"offsets reset {stream} --to latest --force` (on a stream halted again, `batches skip` keeps that reset)"
        )


def _offsets(record: dict | None) -> dict[int, int]:
    return {int(p): int(o) for p, o in (record or {}).get("offsets", {}).items()}


def _past(offsets: dict[str, int], ends: dict[int, int]) -> bool:
    """Whether a pending reset starts every partition of a halted batch at or after the batch's end."""
    return all(int(offsets.get(str(p), -1)) >= end for p, end in ends.items())


@batches.command("retry")
@stream_argument
@click.option("--reason", required=True, help="What was fixed (recorded with your name).")
def batches_retry(stream: str, reason: str) -> None:
    """Learn the halted batch in a new run: for a halt whose run this Dagster instance no longer has.

    When the instance has the run, re-execute it from the UI instead: a new run of a batch whose run
    failed would be recognised and halt the stream again.
    """
    import os

    stream_spec(stream)
    store = registry()
    halt = store.halt(stream)
    if halt is None:
        raise click.ClickException(f"{stream} is not halted; nothing to retry")
    run_id = halt.get("run_id")
    if run_id:
        if not os.environ.get("DAGSTER_HOME"):
            raise click.ClickException(
                f"DAGSTER_HOME is not set: set it to the Dagster instance the sensors run on, so retry can check "
                f"that it no longer has run {run_id[:8]} (while it has it, re-executing that run is the fix)"
            )

        with dagster_instance() as instance:
            if instance.get_run_by_id(run_id) is not None:
                raise click.ClickException(
                    f"run {run_id[:8]} is in the Dagster instance: re-execute it from the UI after fixing the cause "
                    f"(or `streamfit batches skip {stream} --reason ...`)"
                )
    store.clear_halt(stream, {"resolution": names.RETRIED_RESOLUTION, "by": operator_name(), "reason": reason})
    at = f" at run {run_id[:8]}" if run_id else ""
    click.echo(f"{stream}: halt{at} cleared; the Kafka sensor plans the batch again in a new run")
