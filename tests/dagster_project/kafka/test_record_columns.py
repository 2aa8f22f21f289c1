"""`RecordColumns.pop_tail`: a batch's learned records and its tail, as a pass over every record gives them."""

from __future__ import annotations

import random

from dagster_project.kafka.record_columns import RecordColumns
from dagster_project.kafka.records import RawRecord


def _read(per_partition: dict[int, list[int]], rng: random.Random) -> RecordColumns:
    """Records as a range read yields them: partitions interleaved in chunks, each in ascending offsets."""
    queues = {p: list(offsets) for p, offsets in per_partition.items()}
    records = RecordColumns()
    while any(queues.values()):
        p = rng.choice([p for p, q in queues.items() if q])
        for _ in range(rng.randint(1, 40)):
            if not queues[p]:
                break
            offset = queues[p].pop(0)
            records.append(RawRecord(p, offset, 0, None, f"{p}:{offset}".encode()))
    return records


def _expected(records: RecordColumns, ends: dict[int, int]) -> tuple[list[bytes], list[bytes]]:
    pairs = list(zip(records.partitions, records.offsets, records.values, strict=True))
    return [v for p, o, v in pairs if o < ends[p]], [v for p, o, v in pairs if o >= ends[p]]


def test_pop_tail_gives_each_record_to_the_learned_rows_or_the_tail_in_read_order() -> None:
    rng = random.Random(18)
    for _ in range(300):
        partitions = rng.randint(1, 4)
        per_partition = {}
        ends = {}
        for p in range(partitions):
            start = rng.randint(0, 50)
            offsets = sorted(rng.sample(range(start, start + 400), rng.randint(0, 200)))  # gaps: compaction, markers
            per_partition[p] = offsets
            ends[p] = rng.choice([start, start + 400, *offsets[-5:], rng.randint(start, start + 400)])
        records = _read(per_partition, rng)
        want_learned, want_tail = _expected(records, ends)
        tail = records.pop_tail(ends)
        learned = records
        assert learned.values == want_learned and tail.values == want_tail
        for part in (learned, tail):  # the columns stay aligned with their sources
            assert [f"{p}:{o}".encode() for p, o in zip(part.partitions, part.offsets, strict=True)] == part.values
            assert [s.value for s in part.sources] == part.values


def test_a_batch_without_tail_keeps_every_record() -> None:
    records = RecordColumns.of([RawRecord(0, o, 0, None, b"v") for o in range(10)])
    assert len(records.pop_tail({0: 10})) == 0 and records.offsets == list(range(10))
