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

from dagster_project.kafka.records import RawRecord, timestamp_seconds


@dataclass
class RecordColumns:
    """Records in read order, as columns; `sources[i]` is a confluent-kafka Message or a RawRecord.

    A range read yields each partition's records in ascending offset order (it keeps a record only
    past the partition's position, then moves the position past it); `pop_tail` relies on that.
    """

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

    def pop_tail(self, ends: dict[int, int]) -> RecordColumns:
        """Remove the records at or past their partition's end in `ends` and return them, in read order.

        A batch's tail is its partitions' last few hundred records, so they are found scanning back
        from the end until each partition shows an offset before its end, and cut out in place. A
        pass over every record and copies of the rest by index cost ~16 ms per 100 k records.
        """
        partitions, offsets = self.partitions, self.offsets
        pending = set(partitions)
        tail: list[int] = []
        i = len(offsets) - 1
        while i >= 0 and pending:
            p = partitions[i]
            if p in pending:
                if offsets[i] >= ends[p]:
                    tail.append(i)
                else:
                    pending.discard(p)  # ascending offsets: none of p's earlier records is past its end
            i -= 1
        tail.reverse()
        popped = self.take(tail)
        runs: list[tuple[int, int]] = []  # [start, stop) of consecutive tail positions, last first
        for position in reversed(tail):
            if runs and runs[-1][0] == position + 1:
                runs[-1] = (position, runs[-1][1])
            else:
                runs.append((position, position + 1))
        for column in (self.partitions, self.offsets, self.values, self.sources):
            for start, stop in runs:
                del column[start:stop]
        return popped

    def produced_at(self, i: int) -> float | None:
        """Record `i`'s Kafka timestamp in epoch seconds; None when it has none (-1, or 0 from some clients)."""
        return timestamp_seconds(_timestamp_ms(self.sources[i]))

    def append_message(self, partition: int, message: Any) -> None:
        """A kafka-python ConsumerRecord, kept whole as its source: its headers are read only if it is
        dead-lettered."""
        self.partitions.append(partition)
        self.offsets.append(message.offset)
        self.values.append(message.value)
        self.sources.append(message)

    def record(self, i: int) -> RawRecord:
        """Record `i` whole (key and timestamp read from the client's message only now)."""
        source = self.sources[i]
        if isinstance(source, RawRecord):
            return source
        key = source.key() if callable(source.key) else source.key  # confluent's Message, or kafka-python's record
        return RawRecord(self.partitions[i], self.offsets[i], _timestamp_ms(source), key, self.values[i])

    def headers(self, i: int) -> list[tuple[str, bytes | None]] | None:
        """Record `i`'s Kafka headers, read from the client's message only now (a dead letter carries
        them on); None when it has none."""
        source = self.sources[i]
        if isinstance(source, RawRecord):
            return None
        found = source.headers() if callable(source.headers) else source.headers
        return list(found) if found else None

    def records(self) -> list[RawRecord]:
        return [self.record(i) for i in range(len(self))]


def _timestamp_ms(source: Any) -> int | None:
    """A source's Kafka timestamp in ms: a RawRecord's, a confluent Message's or a kafka-python record's."""
    if isinstance(source, RawRecord):
        return source.timestamp_ms
    return source.timestamp()[1] if callable(source.timestamp) else source.timestamp
