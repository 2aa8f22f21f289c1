"""`streamfit dlq show`: the newest dead letters of a stream, with why each message was refused.

Reading `<stream>.dlq` otherwise takes a Kafka consumer (the embedded broker ships no console
tools): a newcomer wrote a kafka-python script to learn why rows were missing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from dagster_project.cli.common import bootstrap_option, echo_json, kafka_settings, stream_argument, stream_spec
from dagster_project.cli.offsets import probed


@click.group()
def dlq() -> None:
    """Dead letters: messages refused with their reason (DESIGN: nothing is dropped)."""


@dlq.command("show")
@stream_argument
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many, newest last.")
@click.option("--json", "as_json", is_flag=True, help="The dead-letter records as JSON, with where they are.")
@bootstrap_option
def dlq_show(stream: str, limit: int, as_json: bool, bootstrap: str | None) -> None:
    """The newest dead letters: where each message came from, which component refused it, and why."""
    spec = stream_spec(stream)
    settings = kafka_settings(bootstrap)
    states = probed(settings, spec.dlq_topic)
    total = sum(s.high_water - s.log_start for s in states)
    letters = newest_letters(
        settings, spec.dlq_topic, {s.partition: (s.log_start, s.high_water) for s in states}, limit
    )
    if as_json:
        echo_json({"topic": spec.dlq_topic, "total": total, "letters": letters})
        return
    if not total:
        click.echo(f"{stream}: no dead letters ({spec.dlq_topic} {'is empty' if states else 'does not exist yet'})")
        return
    click.echo(f"{stream}: {total:,} dead letter(s) in {spec.dlq_topic}; the newest {len(letters)}:")
    for letter in letters:
        at = datetime.fromtimestamp(letter["timestamp_ms"] / 1000, UTC).isoformat(timespec="seconds")
        source = f"{letter.get('topic')}[{letter.get('partition')}]@{letter.get('offset')}"
        click.echo(f"  {at}  {letter.get('component', '?'):<12} {source}: {letter.get('reason')}")


def newest_letters(settings: Any, topic: str, extents: dict[int, tuple[int, int]], limit: int) -> list[dict]:
    """The `limit` newest records of the dead-letter topic by their Kafka timestamp, oldest first, each
    decoded (a record that is not a dead letter's JSON is shown by its raw text)."""
    import orjson

    from dagster_project.kafka.io import read_range

    ranges = {p: (max(start, end - limit), end) for p, (start, end) in extents.items() if end > start}
    letters = []
    for record in read_range(settings, topic, ranges) if ranges else []:
        try:
            decoded = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            decoded = None
        letter = decoded if isinstance(decoded, dict) else {"reason": f"not a dead letter: {record.value[:200]!r}"}
        letters.append(
            {
                **letter,
                "dlq_partition": record.partition,
                "dlq_offset": record.offset,
                "timestamp_ms": record.timestamp_ms,
            }
        )
    letters.sort(key=lambda letter: (letter["timestamp_ms"], letter["dlq_partition"], letter["dlq_offset"]))
    return letters[-limit:]
