"""`streamfit produce`: replay a dataset or a .jsonl file into a stream's events topic.

Events go out in the contract format, so whatever the trainer and scorers see from here is what
they would see from a real producer.
"""

from __future__ import annotations

import click

from dagster_project.cli.common import PositiveRate, bootstrap_option, kafka_settings, stream_argument, stream_spec


@click.command()
@stream_argument
@click.option(
    "--source",
    default=None,
    help="census, phishing, sensors, synthetic, or a .jsonl file (default: the stream's name).",
)
@click.option("--rate", type=PositiveRate(), default=None, help="Events per second (default: as fast as possible).")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Stop after this many events.")
@bootstrap_option
def produce(stream: str, source: str | None, rate: float | None, limit: int | None, bootstrap: str | None) -> None:
    """Write events to <stream>.events in the contract format."""
    from dagster_project.dev.producer import SOURCES, encoded_events
    from dagster_project.dev.producer import produce as produce_events
    from dagster_project.ingest.keys import message_key

    spec = stream_spec(stream)
    if source is None and stream not in SOURCES:
        raise click.ClickException(
            f"stream {stream!r} has no built-in source to replay (those are {sorted(SOURCES)}): pass --source "
            'events.jsonl, one event per line: {"id", "ts", "features": {...}, "label"}'
        )
    try:
        events = encoded_events(source or stream, message_key(spec))
        sent = produce_events(kafka_settings(bootstrap), spec, events, rate=rate, limit=limit, progress=True)
    except (FileNotFoundError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"produced {sent} events to {spec.events_topic}")
