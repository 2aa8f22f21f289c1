"""`streamfit batches skip`: the operator's way out of a halt.

A stream halts at a batch that failed its data-quality checks (policy `halt`) or whose run failed
after its retries; skipping it records who skipped which offsets and why, and training resumes
after them.
"""

from __future__ import annotations

import click

from dagster_project.cli.common import operator_name, registry, stream_argument, stream_spec


@click.group()
def batches() -> None:
    """Operator actions on a halted stream."""


@batches.command("skip")
@stream_argument
@click.option("--reason", required=True, help="Why the batch is skipped (recorded with your name).")
def batches_skip(stream: str, reason: str) -> None:
    """Skip the batch a halt stopped at (data quality or a failed run); the next version records who skipped what."""
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
    cause = "a failed run" if halt.get("kind") == "failed_run" else "data-quality halt"
    # A data-quality halt read the batch: its events stay in the derived features (a failed run's did not).
    state = carried_state(stream, halt)
    store.set_pending_offsets(stream, ends, reason=f"skipped after {cause}: {reason}", by=by, feature_state=state)
    store.clear_halt(stream, {"resolution": "skipped", "by": by, "reason": reason})
    click.echo(f"{stream}: skipped {halt['ranges']} ({halt['summary']}); training resumes at {ends}")
