"""`streamfit demo`: the whole loop on one machine, for a first look.

It starts a broker, the Dagster daemon and UI, and replays a stream until enough model versions
exist; the work itself lives in `dagster_project.dev.demo`.
"""

from __future__ import annotations

import click


@click.command()
@click.option("--versions", type=int, default=None, help="Stop once this many versions exist (default: Ctrl-C).")
@click.option("--stream", default="synthetic", show_default=True)
@click.option("--rate", type=float, default=500.0, show_default=True, help="Replay speed, events per second.")
@click.option("--rows", type=int, default=20_000, show_default=True, help="How many synthetic events to replay.")
@click.option("--ui-port", type=int, default=None, help="Dagster UI port (default: a free one).")
@click.option("--timeout", "timeout_s", type=float, default=900.0, show_default=True)
def demo(versions: int | None, stream: str, rate: float, rows: int, ui_port: int | None, timeout_s: float) -> None:
    """Run the whole loop locally: broker, Dagster daemon and UI, a replayed stream."""
    from dagster_project.dev.demo import run_demo

    run_demo(versions, stream, rate, rows, ui_port, timeout_s)
