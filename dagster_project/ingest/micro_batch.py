"""Reading a micro-batch: exactly one offset range, validated, with bad messages dead-lettered."""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from dagster_project.features.batch import derive
from dagster_project.features.serialization import dump_state
from dagster_project.features.state import FeatureState
from dagster_project.features.warmup import windows_filling
from dagster_project.ingest.dead_letters import DeadLetter, write_dead_letters
from dagster_project.ingest.events import EventParser, reason_kind
from dagster_project.ingest.packing import packed_state, unpack_labels, unpack_positions
from dagster_project.ingest.sent_letters import written_since
from dagster_project.kafka.io import RawRecord, read_range_columns, topic_identity
from dagster_project.kafka.offsets import Ranges
from dagster_project.kafka.record_columns import RecordColumns
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.spec import StreamSpec

T = TypeVar("T")
UNSEEN_EXAMPLES = 5  # per category feature and batch
# The most characters of an unseen value an example keeps. Examples go into the version's meta.json (an
# MLflow model version tag holds 100,000 characters) and the data-quality message: one event whose
# category value was 100 KB of text made the MLflow registry refuse the version, and five of 150 KB made
# a 750 KB meta.json.
UNSEEN_EXAMPLE_CHARS = 200
ID_SEPARATOR = "\x00"  # joins the ids of a pickled batch (a batch whose ids hold it pickles them as a list)


@dataclass
class MicroBatch:
    """The valid rows of one offset range, in offset order per partition.

    With `learn_ends` the range ends in a *tail* (`[learn_ends[p], end)` per partition) that this
    batch's version does not learn: its valid rows are in `tail`, where the promotion gate scores
    the candidate and the champion. Everything else here (rows, DLQ, `range_rows`) is about the
    rows before the tail, the ones this batch learns; the next batch learns the tail.
    """

    stream: str
    ranges: Ranges
    X: np.ndarray
    y: np.ndarray  # class index (classification) or value (regression); NaN where unlabelled
    ids: list[str]
    partitions: np.ndarray
    offsets: np.ndarray
    dlq_reasons: Counter = field(default_factory=Counter)
    identity: dict | None = None  # the cluster and topic incarnation the rows came from (TopicIdentity)
    learn_ends: dict[int, int] | None = None  # where the learned rows end per partition (None: at the end)
    tail: MicroBatch | None = None  # the valid rows of the tail (unseen by the candidate and the champion)
    # A few values per category feature that were outside its vocabulary, with where they came
    # from ({feature, value, partition, offset}), so the data-quality rule can show them.
    unseen_examples: list[dict[str, Any]] = field(default_factory=list)
    # The derived-feature state after the learned rows (features.json of the version), and what
    # the state did meanwhile (keys held, expired, evicted); None without derived features.
    feature_state: bytes | None = None
    feature_counters: dict[str, int] | None = None
    filling: tuple[str, ...] = ()  # derived features whose windows were still filling (features.warmup)
    # Messages read before the tail, valid or not: what the rows and dead letters must add up to,
    # so a batch that dead-lettered every one is told from one that lost rows some other way.
    read: int = 0

    @property
    def learned_ends(self) -> dict[int, int]:
        """The next offset to learn per partition once this batch is learned (where its tail begins)."""
        ends = {p: end for p, (_, end) in self.ranges.items()}
        if self.learn_ends:
            ends.update({p: min(ends[p], int(e)) for p, e in self.learn_ends.items() if p in ends})
        return ends

    @property
    def learned_ranges(self) -> Ranges:
        """`[start, learned end)` per partition: the offsets this batch learns."""
        ends = self.learned_ends
        return {p: (start, ends[p]) for p, (start, _) in self.ranges.items()}

    @property
    def tail_rows(self) -> int:
        """Offsets in the tail (held out for the promotion gate, learned by the next batch)."""
        ends = self.learned_ends
        return sum(end - ends[p] for p, (_, end) in self.ranges.items())

    @property
    def rows(self) -> int:
        packed = self.__dict__.get("_packed_ids")
        return packed[1] if packed is not None and "ids" not in self.__dict__ else len(self.ids)

    # Dagster's IO manager pickles the batch once and unpickles it in every later step (four), but
    # only the micro_batch step reads the ids. A list of 100 k strings costs ~10 ms to pickle and
    # ~6 ms per unpickle; joined into one string it is ~2 ms once, and split only if a step reads them.
    # Row positions and class labels are pickled in compact forms that restore them exactly
    # (`ingest.packing`): a 100 k-row batch's file shrinks by about a quarter.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        packed = packed_state(state.get("partitions"), state.get("offsets"), state.get("y"))
        if "_packed_positions" in packed:
            del state["partitions"], state["offsets"]
        if "_packed_labels" in packed:
            del state["y"]
        state.update(packed)
        if "ids" in state:
            state.pop("_packed_ids", None)
            ids = state.pop("ids")
            joined = ID_SEPARATOR.join(ids)
            if ids and joined.count(ID_SEPARATOR) == len(ids) - 1:  # no id holds the separator
                state["_packed_ids"] = (joined, len(ids))
            else:
                state["ids"] = ids
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        positions = state.pop("_packed_positions", None)
        if positions is not None:
            state["partitions"], state["offsets"] = unpack_positions(positions)
        labels = state.pop("_packed_labels", None)
        if labels is not None:
            state["y"] = unpack_labels(labels)
        self.__dict__.update(state)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: `ids` of an unpickled batch, split on first use.
        packed = self.__dict__.get("_packed_ids")
        if name != "ids" or packed is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        self.ids = packed[0].split(ID_SEPARATOR)
        return self.ids

    @property
    def dlq(self) -> int:
        return sum(self.dlq_reasons.values())

    @property
    def labelled(self) -> np.ndarray:
        return ~np.isnan(self.y)

    @property
    def range_rows(self) -> int:
        """Offsets this batch learns (the tail is counted by the batch that learns it)."""
        return sum(end - start for start, end in self.learned_ranges.values())


def read_batch(
    settings: KafkaSettings,
    spec: StreamSpec,
    ranges: Ranges,
    dead_letter_invalid: bool = True,
    learn_ends: dict[int, int] | None = None,
    state: FeatureState | None = None,
    already_sent: Callable[[int | None], Collection[tuple[int, int]]] | None = None,
    accepted: dict[int, list[float]] | None = None,
) -> MicroBatch:
    """Read `ranges` from the events topic; invalid messages go to the DLQ before this returns.

    Re-reads of data already handled (retraining on a window) pass `dead_letter_invalid=False`
    so a bad message is dead-lettered once, not once per read. With `learn_ends` the rows from
    there on are the batch's tail: parsed for the promotion gate, but neither dead-lettered nor
    counted here (the next batch, which learns them, does that).

    A stream with derived features needs `state`, the feature state at the ranges' start
    (`features.checkpoint.state_after` the version the ranges follow). It is advanced through the
    learned rows and saved on the batch; the tail's values come from a copy, so the saved state is
    exactly the state after the offsets the version learns.

    `already_sent`, asked only when there is something to dead-letter: (partition, offset) of the
    messages an earlier attempt or run already dead-lettered; they are counted but not sent again.
    It is given the earliest time such a dead letter can have been written (`sent_letters.written_since`).

    `accepted`, when given, receives the event times the state accepted per partition: a read in
    chunks (`learning.retraining.read_window`) judges `filling` on all its chunks' times at once.
    """
    if spec.derived and state is None:
        raise ValueError(
            f"{spec.name} has derived features: pass the feature state at the start of {ranges} "
            "(dagster_project.features.checkpoint.state_after)"
        )
    # One pause for the read and the parse, ended once the records are garbage: resumed in between,
    # the collector's first pass walked every record still held (~15-25 ms per 100 k rows).
    with _gc_paused():
        return _read_batch(settings, spec, ranges, dead_letter_invalid, learn_ends, state, already_sent, accepted)


def _read_batch(
    settings, spec, ranges, dead_letter_invalid, learn_ends, state, already_sent, accepted=None
) -> MicroBatch:
    records, identity = _read_with_identity(settings, spec.events_topic, ranges)
    ends = {p: end for p, (_, end) in ranges.items()}
    if learn_ends:
        ends.update({p: min(ends[p], int(e)) for p, e in learn_ends.items() if p in ends})
    tail = records.pop_tail(ends) if learn_ends else RecordColumns()
    learned = records  # what is left: the records before their partition's learned end
    accepted = {} if accepted is None else accepted  # per partition, the event times the state accepted
    batch = _parse(settings, spec, ranges, learned, dead_letter_invalid, identity, state, already_sent, accepted)
    if state is not None:
        batch.filling = windows_filling(state, accepted)
        batch.feature_state = dump_state(state)
        batch.feature_counters = {"keys": state.keys(), **state.counters}
    if len(tail):
        batch.tail = _parse(settings, spec, ranges, tail, False, identity, state.copy() if state else None)
        keep = ~np.isnan(batch.tail.X).any(axis=1) if batch.tail.rows else np.zeros(0, dtype=bool)
        if not keep.all():  # a nullable feature's NaN cannot be scored; the next batch handles the row
            batch.tail = _subset(batch.tail, keep)
    batch.learn_ends = dict(ends) if learn_ends else None
    return batch


def _read_with_identity(settings: KafkaSettings, topic: str, ranges: Ranges) -> tuple[RecordColumns, Any]:
    """The range's records and the topic's identity, asked for while the records arrive: its admin
    client's round trips (~5-10 ms) otherwise add to every batch. Its error, if any, comes first."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="topic-identity") as pool:
        identity = pool.submit(topic_identity, settings, topic)
        records = RecordColumns()
        try:
            with _gc_paused():
                for chunk in read_range_columns(settings, topic, ranges):
                    records.extend(chunk)
        except BaseException:
            identity.result()  # a broker that fails both reports what the identity lookup saw, as before
            raise
        return records, identity.result()


def _parse(
    settings,
    spec,
    ranges,
    records: RecordColumns,
    dead_letter_invalid,
    identity,
    state=None,
    already_sent=None,
    accepted: dict[int, list[float]] | None = None,
) -> MicroBatch:
    partitions, offsets, values = records.partitions, records.offsets, records.values
    with _gc_paused():
        parsed = EventParser(spec).parse_many(values)
        if state is not None:  # no key, no time or late: refused like a malformed message
            parsed = derive(state, partitions, values, parsed, records.produced_at, accepted)
    reasons: Counter = Counter(reason_kind(reason) for _, reason in parsed.failures)
    refused = [(records.record(i), reason, records.headers(i)) for i, reason in parsed.failures]
    if dead_letter_invalid and refused and already_sent is not None:
        sent = set(already_sent(written_since(record.timestamp_ms for record, _, _ in refused)))
        refused = [refusal for refusal in refused if (refusal[0].partition, refusal[0].offset) not in sent]
    if dead_letter_invalid and refused:
        _send_dead_letters(settings, spec, refused)
    return MicroBatch(
        stream=spec.name,
        ranges=ranges,
        X=parsed.X,
        y=parsed.y,
        ids=parsed.ids,
        partitions=np.asarray(partitions, dtype=np.int32)[parsed.index],
        offsets=np.asarray(offsets, dtype=np.int64)[parsed.index],
        dlq_reasons=reasons,
        identity=identity.as_json() if identity else None,
        read=len(records),
        unseen_examples=unseen_examples(records.partitions, records.offsets, parsed.unseen),
    )


def unseen_examples(
    partitions: Sequence[int], offsets: Sequence[int], unseen: list[tuple[int, str, Any]]
) -> list[dict[str, Any]]:
    """Up to `UNSEEN_EXAMPLES` unseen values per feature, with their partition and offset (the
    data-quality message quotes them: the frame it checks holds only codes)."""
    examples = []
    for i, name, value in _capped(unseen, lambda u: u[1]):
        if isinstance(value, str) and len(value) > UNSEEN_EXAMPLE_CHARS:
            value = f"{value[:UNSEEN_EXAMPLE_CHARS]}... ({len(value):,} characters)"
        examples.append({"feature": name, "value": value, "partition": int(partitions[i]), "offset": int(offsets[i])})
    return examples


def first_examples(examples: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first `UNSEEN_EXAMPLES` of each feature: one read's cap, kept by a merge of consecutive reads."""
    return list(_capped(examples, lambda e: e["feature"]))


def _capped(items: Iterable[T], feature: Callable[[T], str]) -> Iterator[T]:
    """The first `UNSEEN_EXAMPLES` items of each feature, in order."""
    shown: Counter = Counter()
    for item in items:
        name = feature(item)
        if shown[name] < UNSEEN_EXAMPLES:
            shown[name] += 1
            yield item


def _subset(batch: MicroBatch, keep: np.ndarray) -> MicroBatch:
    index = np.flatnonzero(keep)
    return MicroBatch(
        stream=batch.stream,
        ranges=batch.ranges,
        X=batch.X[index],
        y=batch.y[index],
        ids=[batch.ids[i] for i in index],
        partitions=batch.partitions[index],
        offsets=batch.offsets[index],
        identity=batch.identity,
    )


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while a batch's records are built: they hold no cycles, and collections
    triggered by 100k new tuples cost as much as the Kafka read itself (measured 0.25 s vs 0.4-0.67 s)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _send_dead_letters(
    settings: KafkaSettings, spec: StreamSpec, refused: list[tuple[RawRecord, str, list | None]]
) -> None:
    """Write every refused message, with its headers, to the DLQ and wait until all are durable (or raise)."""
    write_dead_letters(
        settings,
        spec.dlq_topic,
        "trainer",
        (
            DeadLetter(reason, spec.events_topic, r.partition, r.offset, r.key, r.value, headers)
            for r, reason, headers in refused
        ),
        partitions=spec.partitions,
    )
