"""`streamfit demo`: the whole loop on one machine, for a first look.

It starts a broker, the Dagster daemon and UI, and replays a stream until enough model versions
exist; the work itself lives in `dagster_project.dev.demo`.
"""

from __future__ import annotations

import socket

import click

from dagster_project.cli.common import PORT, cannot_listen


@click.command()
@click.option(
    "--versions", type=int, default=None, help="Stop once this many versions exist (default: Ctrl-C or --timeout)."
)
@click.option(
    "--stream",
    type=click.Choice(["synthetic"]),
    default="synthetic",
    show_default=True,
    help="The stream replayed: the demo's events are the synthetic stream's (others: `streamfit produce`).",
)
@click.option("--rate", type=float, default=150.0, show_default=True, help="Replay speed, events per second.")
@click.option(
    "--rows", type=int, default=16_000, show_default=True, help="Synthetic events to replay (change at 10,000)."
)
@click.option("--batch-rows", type=int, default=None, help="Rows a batch waits for (default: 1,000).")
@click.option("--max-rows", type=int, default=None, help="Largest batch (default: 5,000).")
@click.option(
    "--until-recovered",
    is_flag=True,
    help="Stop once the replay is learned and the concept change was acted on (what `make demo` runs).",
)
@click.option("--change-at", type=int, default=10_000, show_default=True, help="Row of the concept change.")
@click.option("--ui-port", type=PORT, default=None, help="Dagster UI port (default: a free one).")
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=900.0,
    show_default=True,
    help="Stop after this many seconds, whatever else is asked (a demo left running stops by itself).",
)
def demo(
    versions: int | None,
    stream: str,
    rate: float,
    rows: int,
    batch_rows: int | None,
    max_rows: int | None,
    until_recovered: bool,
    change_at: int,
    ui_port: int | None,
    timeout_s: float,
) -> None:
    """Run the whole mission locally: broker, Dagster daemon and UI, a scorer, delayed labels, a replayed
    stream past its concept change; one line per event, then a summary."""
    from dagster_project.dev.demo import run_demo

    if ui_port:
        check_free("the Dagster UI", ui_port, "--ui-port")
    try:
        run_demo(versions, stream, rate, rows, ui_port, timeout_s, until_recovered, batch_rows, max_rows, change_at)
    except RuntimeError as exc:  # a service that exited or never answered: its message names its log
        raise click.ClickException(str(exc)) from exc


def check_free(what: str, port: int, option: str) -> None:
    """Fail in one line, before anything starts, when `port` is taken: the server started later would
    exit into its log, and the demo would wait for it and then fail with a traceback."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no conflict
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise cannot_listen(what, "127.0.0.1", port, exc, option=option) from exc
