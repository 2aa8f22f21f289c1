"""A range read's records as columns: what training needs of every record, the rest on demand.

The training read needs each record's partition, offset and value; its key and timestamp only if
the record is dead-lettered. Building a tuple per record and transposing the tuples back into
columns cost ~30 ms per 100 k records (the `m.timestamp()` tuples alone ~12 ms, and the garbage
collector's pass over the record tuples once it resumes), so the columns are built directly and
the client's own message objects are kept for `record(i)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dagster_project.kafka.records import RawRecord


@dataclass
class RecordColumns:
    """Records in read order, as columns; `sources[i]` is a confluent-kafka Message or a RawRecord."""

    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    sources: list[Any] = field(default_factory=list)

    @classmethod
    def of(cls, records: Iterable[RawRecord]) -> RecordColumns:
        records = list(records)
        return cls([r.partition for r in records], [r.offset for r in records], [r.value for r in records], records)

    def __len__(self) -> int:
        return len(self.offsets)

    def extend(self, other: RecordColumns) -> None:
        self.partitions += other.partitions
        self.offsets += other.offsets
        self.values += other.values
        self.sources += other.sources

    def append(self, record: RawRecord) -> None:
        self.partitions.append(record.partition)
        self.offsets.append(record.offset)
        self.values.append(record.value)
        self.sources.append(record)

    def take(self, index: Sequence[int]) -> RecordColumns:
        """The records at `index`, in that order."""
        return RecordColumns(
            [self.partitions[i] for i in index],
            [self.offsets[i] for i in index],
            [self.values[i] for i in index],
            [self.sources[i] for i in index],
        )

    def record(self, i: int) -> RawRecord:
        """Record `i` whole (key and timestamp read from the client's message only now)."""
        source = self.sources[i]
        if isinstance(source, RawRecord):
            return source
        return RawRecord(self.partitions[i], self.offsets[i], source.timestamp()[1], source.key(), self.values[i])

    def records(self) -> list[RawRecord]:
        return [self.record(i) for i in range(len(self))]
