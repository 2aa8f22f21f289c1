"""Derived features when serving: the champion's checkpointed state, brought up to each event.

The scorer computes derived features with the training code (`features.batch.derive`) from the
state saved with the version it serves. Per partition, the state must have seen exactly the events
before the one being scored: it starts at the newest version whose learned offset on that
partition is at or before the scorer's position (normally the served version itself), reads the
events in between from the topic (catch-up), then follows the scorer's own polls. A hot swap to
another version starts again from that version's state; a scorer that goes back (a rebalance, an
aborted transaction) restores the partition from a checkpoint and catches up again, so the values
never depend on the scorer's history.

A catch-up reads the topic (about 16,000 events a second: a minute for a million-event backlog)
while holding the state. `/predict` peeks at it on uvicorn's event loop, so it never waits for
one, nor starts one there: while the state is being switched or caught up it answers 503 with
`Retry-After` and the reason at once, and a swap that `/predict` notices first (a quiet stream) is
caught up in a thread of its own. Waiting instead stalled the loop, and with it `/livez` and
`/readyz`, for the whole catch-up (3.9 s for 61,000 events), long enough for a liveness probe to
restart a healthy scorer.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import orjson

from dagster_project.features.batch import beyond_limit, derive
from dagster_project.features.checkpoint import state_after
from dagster_project.features.serialization import load_state
from dagster_project.features.state import FeatureState
from dagster_project.features.timing import EventError
from dagster_project.ingest.events import EventParser, InvalidEvent, ParsedBatch, ts_problem, ts_unit
from dagster_project.kafka.io import read_range
from dagster_project.kafka.records import timestamp_seconds
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.registry.store import ModelRegistry
from dagster_project.serving.limits import RequestError
from dagster_project.serving.metrics import ScorerMetrics
from dagster_project.spec import StreamSpec

log = logging.getLogger(__name__)


class ServingFeatures:
    """The live feature state of one scorer, per partition at a known next offset."""

    def __init__(
        self, spec: StreamSpec, settings: KafkaSettings, registry: ModelRegistry, metrics: ScorerMetrics | None = None
    ) -> None:
        self.metrics = metrics
        self.evicted = 0  # keys evicted at feature_state.max_keys while serving
        self.spec = spec
        self.settings = settings
        self.registry = registry
        self.version: str | None = None
        self.state = FeatureState(spec)
        self.positions: dict[int, int] = {}  # partition -> the next offset the state expects
        self.caught_up = 0  # events read from the topic to bring a state up to the scorer's position
        self._lock = threading.Lock()  # `/predict` peeks while the Kafka loop observes
        # What holds the state for long (a switch, a catch-up), read without the lock: `/predict` answers 503 meanwhile
        self._busy: str | None = None
        self._switching: threading.Thread | None = None  # a swap `/predict` noticed first, caught up off the loop
        self._switch_failed: tuple[str, Exception] | None = None  # its failure, for the next request of that version
        # A row's `ts` is the event's top-level one (a number, as the contract says) unless a feature has the name
        self._ts_is_context = "ts" not in spec.feature_names
        self._ts_unit = ts_unit(spec)
        # A flat /predict row cannot hold both a feature and the event time under one name (`StreamSpec.notes`)
        field = spec.event_time.field if spec.event_time is not None else None
        self._time_clash = field if field in spec.feature_names else None

    def derive(
        self,
        version: str,
        partitions: Sequence[int],
        offsets: Sequence[int],
        values: Sequence[bytes | None],
        parsed,
        timestamps: Sequence[int] | None = None,
    ) -> ParsedBatch:
        """`parsed` (one poll batch, offsets ascending per partition) with its derived columns, for
        `version`; `timestamps` are the records' Kafka timestamps in ms (<= 0: unknown)."""
        with self._lock:
            if version != self.version:
                self._switch(version)
            firsts: dict[int, int] = {}
            for p, o in zip(partitions, offsets, strict=True):
                firsts.setdefault(p, o)
            for p, first in firsts.items():
                self._bring_to(p, first)
            produced = None if timestamps is None else (lambda i: timestamp_seconds(timestamps[i]))
            result = derive(self.state, partitions, values, parsed, produced)
            for p, o in zip(partitions, offsets, strict=True):
                self.positions[p] = o + 1
            self._count()
            return result

    def _count(self) -> None:
        evicted = self.state.counters.pop("evicted_keys", 0)
        if evicted:
            self.evicted += evicted
            log.warning(
                "%s: the derived-feature state is at feature_state.max_keys (%d per partition and key field): "
                "%d least recently seen key(s) evicted, their windows restart empty; raise max_keys if keys are "
                "not idle",
                self.spec.name,
                self.spec.feature_state.max_keys,
                evicted,
            )
        if self.metrics is not None:
            self.metrics.feature_keys.labels(self.spec.name).set(self.state.keys())
            if evicted:
                self.metrics.feature_keys_evicted.labels(self.spec.name).inc(evicted)

    def append_to(self, version: str, rows: list[dict[str, Any]], X: np.ndarray) -> np.ndarray:
        """`/predict`: each row's derived values from the live state, which requests never change.

        A row carries its key field(s) and event-time field beside its features. A key never seen
        gets the empty-window values. The live state is `version`'s checkpoint plus the events the
        Kafka loop has scored since; a request does not read the topic.
        """
        if self._time_clash is not None:
            raise RequestError(
                422,
                f"this stream's event_time.field {self._time_clash!r} is also a feature's name: a /predict row holds "
                f"one {self._time_clash!r}, which would be read both as the feature and as the event time; score "
                "its events on Kafka, or rename the feature or set event_time.field to another field",
            )
        derived = np.empty((len(rows), len(self.spec.derived)), dtype=np.float32)
        problems = []
        now = time.time()  # max_ahead is judged from the arrival, as Kafka judges it from the record's timestamp
        with self._peeking(version):
            for i, row in enumerate(rows):
                if self._ts_is_context and (problem := ts_problem(row.get("ts"), self._ts_unit)):  # as on Kafka
                    problems.append({"row": i, "errors": [problem]})
                    continue
                try:
                    values = self.state.peek({**row, "features": row}, now=now)
                except EventError as exc:
                    problems.append({"row": i, "errors": [str(exc)]})
                    continue
                if beyond := beyond_limit(self.spec, values):  # float32 would make it inf, as on Kafka
                    problems.append({"row": i, "errors": [beyond]})
                else:
                    derived[i] = values
        if problems:
            first = problems[0]
            missing = first["errors"][0].startswith(("no key", "no event time"))
            fix = "; send the key and event-time fields beside the features" if missing else ""
            raise RequestError(
                422,
                f"{len(problems)} of {len(rows)} rows cannot get derived features: row {first['row']}: "
                f"{first['errors'][0]}{fix}",
                rows=problems[:20],
            )
        return np.hstack([X, derived])

    @property
    def catching_up(self) -> str | None:
        """What the state is busy with (a switch to another version's checkpoint, a catch-up), or None."""
        return self._busy

    def follow(self, version: str) -> None:
        """Switch to `version` now, caught up to the scorer's position (blocking: never on the event loop)."""
        with self._lock:
            if version != self.version:
                self._switch(version)

    @contextmanager
    def _peeking(self, version: str) -> Iterator[None]:
        """The lock, for a `/predict` peek at `version`'s state; 503 instead of waiting for a catch-up.

        The Kafka loop holds the lock for each batch (milliseconds): that is waited for, in short
        steps that look again whether a switch or catch-up began meanwhile.
        """
        if (busy := self._busy) is not None:
            raise self._not_ready(busy)
        while not self._lock.acquire(timeout=0.005):
            if (busy := self._busy) is not None:
                raise self._not_ready(busy)
        try:
            if version != self.version:
                self._switch_off_the_loop(version)  # raises: 503 meanwhile, or the switch's failure
            yield
        finally:
            self._lock.release()

    def _not_ready(self, busy: str) -> RequestError:
        return RequestError(
            503,
            f"derived features not ready: {busy}; requests that need them are answered again once it is done",
            headers={"Retry-After": "1"},
        )

    def _switch_off_the_loop(self, version: str) -> None:
        """(Under the lock.) A swap noticed by `/predict` before the Kafka loop: switched in a thread."""
        failed, self._switch_failed = self._switch_failed, None
        if failed is not None and failed[0] == version:  # this request gets it; the next one tries again
            raise failed[1]
        if self._switching is None or not self._switching.is_alive():
            switching = threading.Thread(
                target=self._switch_in_thread, args=(version,), name=f"features-{self.spec.name}", daemon=True
            )
            switching.start()  # it waits for the lock this request holds; marked busy only once it runs, as
            # a thread that cannot start (none left) would never clear the mark: 503 for good
            self._switching = switching
            self._busy = f"switching to {version}'s feature state and catching it up to the scorer's position"
        raise self._not_ready(self._busy or f"switching to {version}'s feature state")

    def _switch_in_thread(self, version: str) -> None:
        with self._lock:  # `_busy` cleared under it: a batch of the Kafka loop restores what it found
            try:
                if version != self.version:  # the Kafka loop may have switched first
                    self._switch(version)
            except Exception as exc:
                log.exception("%s: derived features could not switch to %s", self.spec.name, version)
                self._switch_failed = (version, exc)
            finally:
                self._busy = None

    @contextmanager
    def _holding(self, busy: str) -> Iterator[None]:
        """(Under the lock.) Mark the state busy with `busy` for `/predict` while this runs."""
        before, self._busy = self._busy, busy
        try:
            yield
        finally:
            self._busy = before

    def _switch(self, version: str) -> None:
        """Follow `version` from its checkpoint (the state after its learned offsets), brought up to
        where the scorer had read: a `/predict` after a hot swap on a quiet stream would otherwise
        miss the events between the two until the next event arrives."""
        log.info("%s: derived features now follow %s (was %s)", self.spec.name, version, self.version)
        reached = self.positions
        with self._holding(f"switching to {version}'s feature state and catching it up to the scorer's position"):
            followed = self.registry.get(self.spec.name, version)
            state = state_after(self.registry, self.spec, followed)  # may fail: then nothing changed
            before = self.version, self.state, self.positions
            self.version, self.state, self.positions = version, state, dict(followed.learned)
            try:
                for partition, offset in reached.items():
                    self._bring_to(partition, offset)
            except BaseException:
                # A catch-up that failed (the broker, a checkpoint) leaves the new state behind the scorer's
                # position: put back what was followed, untouched, so `/predict` never peeks at it as
                # `version`'s and the next request or batch switches again.
                self.version, self.state, self.positions = before
                raise

    def _bring_to(self, partition: int, offset: int) -> None:
        position = self.positions.get(partition)
        if position == offset:
            return
        with self._holding(self._busy or f"catching up partition {partition} to offset {offset} from the topic"):
            if position is None or position > offset:  # new partition, or gone back: from a checkpoint
                start, saved = self._checkpoint_at(partition, offset)
                if saved is None:
                    self.state.partitions.pop(partition, None)
                else:
                    self.state.partitions[partition] = saved
                position = start
            if position < offset:
                self._catch_up(partition, position, offset)
        self.positions[partition] = offset

    def _checkpoint_at(self, partition: int, offset: int):
        """(its learned offset, the partition's saved state) of the newest version, up to the served
        one, that had not learned past `offset` on `partition`; (0, None) before the first."""
        versions = self.registry.versions(self.spec.name)
        served = next((i for i, v in enumerate(versions) if v.name == self.version), len(versions) - 1)
        for version in reversed(versions[: served + 1]):
            learned = version.learned.get(partition, 0)
            if learned <= offset:
                data = self.registry.load_feature_state(self.spec.name, version.name)
                state = load_state(self.spec, data, where=f"{self.spec.name}/{version.name}")
                return learned, copy.deepcopy(state.partitions.get(partition))
        return 0, None

    def _catch_up(self, partition: int, start: int, end: int) -> None:
        parser = EventParser(self.spec)
        for record in read_range(self.settings, self.spec.events_topic, {partition: (start, end)}):
            try:
                parsed = parser.parse(record.value)
                self.state.observe(
                    partition, orjson.loads(record.value), parsed.values, timestamp_seconds(record.timestamp_ms)
                )
            except (InvalidEvent, EventError):
                continue  # refused in training too, so not in its state either
            self.caught_up += 1
