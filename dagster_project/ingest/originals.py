"""The original messages at given offsets: what a row split off after parsing is dead-lettered with.

A batch keeps its rows as parsed (category codes, no raw bytes: memory). The quality step's split-off
rows are few, so their messages are read again, exactly, when they are dead-lettered: their letters
then carry the message as every other dead letter does (key, value, headers), and can be replayed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dagster_project.kafka.io import probe_partitions, read_range_columns
from dagster_project.kafka.records import RawRecord
from dagster_project.kafka.settings import KafkaSettings


@dataclass(frozen=True)
class Original:
    """One message as it was on the events topic."""

    record: RawRecord
    headers: list[tuple[str, bytes | None]] | None


def read_originals(
    settings: KafkaSettings, topic: str, positions: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], Original]:
    """The messages at `positions` ((partition, offset)) that `topic` still holds.

    One read per partition from its first to its last wanted offset (a batch's split-off rows lie in
    the batch's range, which was just read). A position before the log's start (retention) or past
    its end is absent from the answer; a broker that does not answer raises, as any read does.
    """
    wanted: dict[int, set[int]] = {}
    for partition, offset in positions:
        wanted.setdefault(int(partition), set()).add(int(offset))
    if not wanted:
        return {}
    held = {s.partition: (s.log_start, s.high_water) for s in probe_partitions(settings, topic, {})}
    ranges = {}
    for partition, offsets in wanted.items():
        start, end = held.get(partition, (0, 0))
        inside = [o for o in offsets if start <= o < end]
        if inside:
            ranges[partition] = (min(inside), max(inside) + 1)
    found: dict[tuple[int, int], Original] = {}
    for chunk in read_range_columns(settings, topic, ranges) if ranges else ():
        for i, (partition, offset) in enumerate(zip(chunk.partitions, chunk.offsets, strict=True)):
            if offset in wanted[partition]:
                found[(partition, offset)] = Original(chunk.record(i), chunk.headers(i))
    return found
