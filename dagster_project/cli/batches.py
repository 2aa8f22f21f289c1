"""`streamfit batches skip`: the operator's way out of a data-quality halt.

A stream whose quality policy is `halt` stops at the failing batch; skipping it records who
skipped which offsets and why, and training resumes after them.
"""

from __future__ import annotations

import click

from dagster_project.cli.common import operator_name, registry, stream_spec


@click.group()
def batches() -> None:
    """Operator actions on a halted stream."""


@batches.command("skip")
@click.argument("stream")
@click.option("--reason", required=True, help="Why the batch is skipped (recorded with your name).")
def batches_skip(stream: str, reason: str) -> None:
    """Skip the batch a data-quality halt stopped at; the next version records who skipped what."""
    stream_spec(stream)
    store = registry()
    halt = store.halt(stream)
    if halt is None:
        raise click.ClickException(f"{stream} is not halted; nothing to skip")
    ends = {int(p): int(r[1]) for p, r in halt["ranges"].items()}
    by = operator_name()
    store.set_pending_offsets(stream, ends, reason=f"skipped after data-quality halt: {reason}", by=by)
    store.clear_halt(stream, {"resolution": "skipped", "by": by, "reason": reason})
    click.echo(f"{stream}: skipped {halt['ranges']} ({halt['summary']}); training resumes at {ends}")
