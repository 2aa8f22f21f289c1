"""A sample of events run through the product's training path, with no broker and nothing registered.

The file's lines are placed as `streamfit produce --source file.jsonl` would send them: keyed by the
event's `id` (a stream with derived features: by their `by` field), each key on its murmur2 partition,
so every partition's offsets count its own lines. Batches take the next `batch.rows` waiting
messages in file order and hold back the promotion tail as the Kafka sensor plans it
(`spec_tail_split`): the learned part goes through what a training run does
(`EventParser.parse_many`, derived features with the `FeatureState` saved after the learned rows,
`screen_batch` with the spec's policy, `learner.test_then_learn` for every family, windowed refits
reading their window back as `windowed.kafka_reader` would), then a candidate set's leader is chosen
on the tail's rows, which no family has learned, as `_family_metadata` does; the next batch learns
the tail. The last model is exported with skl2onnx and checked for parity as a version would be.

Not simulated: drift monitors, retrains and the champion gate (they need the stream's history of
versions); delayed labels (unlabelled rows are counted, not learned).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dagster_project.kafka.offsets import Ranges, ranges_text
from dagster_project.spec import StreamSpec


@dataclass
class BatchOutcome:
    """One batch of the sample: what was refused, what the quality screening decided, what was learned."""

    number: int
    ranges: Ranges  # the offsets the batch learns, per partition (its tail excluded)
    messages: int  # messages in those offsets
    tail: int  # messages held back for the leader choice (the next batch learns them)
    refused: int  # messages a training run would dead-letter (malformed or breaking the contract)
    quality: str = "train"  # train, partial, halt or quarantine (the spec's policy for a failing batch), passed_over
    quality_detail: str = ""
    split_off: int = 0  # rows a partial batch dead-letters with their reason
    unlabelled: int = 0
    learned: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # the serving model's, before the batch
    baseline: float | None = None  # the prequential baseline on the same rows (see `Backtest.baseline_name`)
    leader: str | None = None  # a candidate set's leader after the batch
    leader_reason: str | None = None  # why, on the tail (`choose_leader`)
    families: dict[str, dict[str, float]] = field(default_factory=dict)  # each family's metrics, before the batch


@dataclass
class Backtest:
    """The whole sample: per batch outcomes, refusal reasons, the final model's ONNX export."""

    spec: StreamSpec
    batch_rows: int
    messages: int = 0
    partitions: dict[int, int] = field(default_factory=dict)  # partition -> messages placed there
    batches: list[BatchOutcome] = field(default_factory=list)
    refusals: Counter = field(default_factory=Counter)  # reason's kind -> messages
    refusal_examples: dict[str, tuple[int, str]] = field(default_factory=dict)  # kind -> (line position, reason)
    failure: str | None = None  # a training run that would fail (and be retried until the stream halts)
    onnx: dict[str, Any] | None = None
    onnx_problem: str | None = None
    seconds: float = 0.0
    model: Any = None  # the model after the last batch (what the last version would hold)
    # Events with a top-level field named like `label.name` but no "label": read only when nothing was learned.
    named_label_events: int = 0

    @property
    def learned(self) -> int:
        return sum(b.learned for b in self.batches)

    @property
    def split_off(self) -> int:
        return sum(b.split_off for b in self.batches)

    @property
    def blocked(self) -> list[BatchOutcome]:
        """Batches the stream would halt on or quarantine: nothing in them trains."""
        return [b for b in self.batches if b.quality in ("halt", "quarantine")]

    @property
    def baseline_name(self) -> str:
        return "the most frequent class so far" if self.spec.task == "classification" else "the mean label so far (MAE)"

    def mean_metrics(self, family: str | None = None) -> dict[str, float]:
        """Row-weighted means of the per-batch prequential metrics (every batch after the first model),
        of what served or, with `family`, of that family of a candidate set."""
        totals: dict[str, float] = {}
        weights: dict[str, int] = {}
        for batch in self.batches:
            metrics = batch.metrics if family is None else batch.families.get(family, {})
            for name, value in metrics.items():
                if name != "rows" and value is not None and np.isfinite(value):
                    totals[name] = totals.get(name, 0.0) + value * metrics["rows"]
                    weights[name] = weights.get(name, 0) + int(metrics["rows"])
        return {name: totals[name] / weights[name] for name in totals if weights[name]}

    def mean_baseline(self) -> float | None:
        scored = [(b.baseline, b.metrics["rows"]) for b in self.batches if b.baseline is not None and b.metrics]
        rows = sum(r for _, r in scored)
        return sum(v * r for v, r in scored) / rows if rows else None

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-safe data, for a CI step that compares a spec change's numbers."""
        from dataclasses import asdict

        families = [f.label for f in self.spec.model.families] if len(self.spec.model.families) > 1 else []
        batches = [asdict(b) | {"ranges": {str(p): list(r) for p, r in b.ranges.items()}} for b in self.batches]
        return {
            "stream": self.spec.name,
            "batch_rows": self.batch_rows,
            "messages": self.messages,
            "partitions": {str(p): n for p, n in sorted(self.partitions.items())},
            "learned": self.learned,
            "refused": dict(self.refusals),
            "refusal_examples": {k: {"position": p, "reason": r} for k, (p, r) in self.refusal_examples.items()},
            "split_off": self.split_off,
            "unlabelled": sum(b.unlabelled for b in self.batches),
            "blocked_batches": [b.number for b in self.blocked],
            "prequential": self.mean_metrics(),
            "baseline": {"measure": self.baseline_name, "value": self.mean_baseline()},
            "families": {label: self.mean_metrics(label) for label in families},
            "onnx": self.onnx,
            "problems": self.problems,
            "seconds": self.seconds,
            "batches": batches,
        }

    @property
    def problems(self) -> list[str]:
        """What would stop this stream in production, each with the fix; empty when it would learn."""
        out = []
        if not self.messages:
            out.append("the sample holds no events: give a .jsonl file with one event per line")
        elif self.refusals.total() == self.messages:
            kind, (position, reason) = next(iter(self.refusal_examples.items()))
            out.append(f"every message was refused, e.g. message {position}: {reason} (does the spec match the data?)")
        elif not self.learned and not self.blocked and not self.failure:
            out.append(self._no_label_problem())
        for batch in self.blocked:
            out.append(
                f"batch {batch.number} {ranges_text(batch.ranges)} would {batch.quality} the stream: "
                f"{batch.quality_detail} (fix the data or the spec's quality section)"
            )
        if self.failure:
            out.append(f"training would fail, and the stream halt after its retries: {self.failure}")
        if self.onnx_problem:
            out.append(f"ONNX export: {self.onnx_problem}")
        return out

    def _no_label_problem(self) -> str:
        """Where the label must be: `label.name` reads like the event's label field, and is not."""
        where = 'each event\'s top-level "label" key; label.name only names it'
        if self.named_label_events:
            name = self.spec.label.name
            return (
                f'no labelled row was learned: {self.named_label_events:,} event(s) carry a top-level "{name}" '
                f'(the spec\'s label.name) but no "label": send the label in {where}'
            )
        return f"no labelled row was learned: the sample needs labelled events, the label in {where}"


def _named_label_events(spec: StreamSpec, values: list[bytes | None]) -> int:
    """Events with a top-level field named `label.name` and no "label": the label is always "label"."""
    import orjson

    name = spec.label.name
    if name in ("id", "ts", "features", "label"):  # the contract's own keys: not a misplaced label
        return 0
    count = 0
    for value in values:
        try:
            event = orjson.loads(value) if value else None
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict) and name in event and event.get("label") is None:
            count += 1
    return count


class _Placement:
    """Where `streamfit produce` would put each line: its partition (murmur2 of its key, as Kafka's
    clients do) and its offset there, and its record timestamp: now, as the producer stamps it."""

    def __init__(self, spec: StreamSpec, values: list[bytes | None]) -> None:
        import orjson
        from kafka.partitioner.default import murmur2

        from dagster_project.ingest.keys import message_key

        key_of, count = message_key(spec), spec.partitions
        self.produced = time.time()
        self.partitions = np.zeros(len(values), dtype=np.int32)
        for i, value in enumerate(values):
            try:
                key = key_of(orjson.loads(value)) if value else None
            except orjson.JSONDecodeError:
                key = None
            # An unkeyed line goes to a random partition in production; here to the next one, in turn.
            self.partitions[i] = i % count if key is None else (murmur2(key) & 0x7FFFFFFF) % count
        self.offsets = np.zeros(len(values), dtype=np.int64)
        for p in range(count):
            where = self.partitions == p
            self.offsets[where] = np.arange(int(where.sum()))


class _SeenRows:
    """The valid rows of the newest learned parts, so a windowed family reads its window back as
    `windowed.kafka_reader` would: labelled rows that break no per-row rule over the span read.

    Only as many learned parts as cover the widest window (in offsets) are kept, the parts the
    model's own window counts (a blocked batch is in neither); none when no family is windowed,
    since then nothing reads a window."""

    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec
        self.keep_offsets = max((f.window for f in spec.model.families if f.windowed), default=0)
        self.batches: list[Any] = []  # MicroBatch per learned part, oldest first

    def add(self, batch: Any) -> None:
        if not self.keep_offsets:
            return
        self.batches.append(batch)
        while len(self.batches) > 1 and _offsets_spanned(self.batches[1:]) >= self.keep_offsets:
            self.batches.pop(0)

    def read(self, ranges: Ranges) -> Any:
        from dagster_project.ingest.micro_batch import MicroBatch
        from dagster_project.learning.windowed import WindowRows
        from dagster_project.quality.suite import row_violations

        parts = []
        for batch in self.batches:
            keep = np.zeros(batch.rows, dtype=bool)
            for p, (start, end) in ranges.items():
                keep |= (batch.partitions == p) & (batch.offsets >= start) & (batch.offsets < end)
            if keep.any():
                parts.append(
                    (
                        batch.X[keep],
                        batch.y[keep],
                        [batch.ids[i] for i in np.flatnonzero(keep)],
                        batch.partitions[keep],
                        batch.offsets[keep],
                    )
                )
        width = len(self.spec.inputs)
        if not parts:
            nothing = np.empty(0, dtype=np.int64)
            return WindowRows(np.empty((0, width)), np.empty(0), nothing.astype(np.int32), nothing)
        X, y = np.vstack([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        ids = [i for p in parts for i in p[2]]
        partitions, offsets = np.concatenate([p[3] for p in parts]), np.concatenate([p[4] for p in parts])
        span = MicroBatch(self.spec.name, ranges, X, y, ids, partitions, offsets)
        keep = span.labelled & ~row_violations(span, self.spec)
        return WindowRows(X[keep], y[keep], partitions[keep], offsets[keep])


def _offsets_spanned(batches: list[Any]) -> int:
    return sum(e - s for batch in batches for s, e in batch.ranges.values())


def sample_messages(path: Path, limit: int | None = None) -> list[bytes]:
    """The sample's messages: one JSON event per non-blank line, as `streamfit produce` sends them."""
    from dagster_project.dev.producer import jsonl_events

    messages = []
    for message in jsonl_events(path):
        if limit is not None and len(messages) >= limit:
            break
        messages.append(message)
    return messages


def backtest(
    spec: StreamSpec,
    messages: Iterable[bytes | None],
    batch_rows: int | None = None,
    spec_dir: Path | None = None,
    on_batch: Callable[[BatchOutcome], None] | None = None,
) -> Backtest:
    """Learn `messages` in batches of `batch_rows` (default: the spec's `batch.rows`) as training runs would."""
    from dagster_project.features import FeatureState

    started = time.perf_counter()
    values = list(messages)
    rows = batch_rows or spec.batch.rows
    result = Backtest(spec, rows, messages=len(values))
    place = _Placement(spec, values)
    result.partitions = {int(p): int(n) for p, n in zip(*np.unique(place.partitions, return_counts=True), strict=True)}
    run = _Run(spec, values, place, FeatureState(spec) if spec.derived else None, rows, spec_dir)
    carried: list[int] = []  # a previous batch's tail, in file order
    following = 0  # the first line no batch has taken yet
    while carried or following < len(values):
        taken = carried + list(range(following, min(following + rows - len(carried), len(values))))
        following = max(following, taken[-1] + 1)
        try:
            outcome, carried = run.batch(len(result.batches) + 1, np.asarray(taken), result)
        except Exception as exc:  # e.g. a windowed classifier's first window misses a class: the run fails
            result.failure = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            break
        result.batches.append(outcome)
        if on_batch is not None:
            on_batch(outcome)
    result.model = run.model
    if not result.learned:
        result.named_label_events = _named_label_events(spec, values)
    if run.model is not None and run.recent and not result.failure:
        _export(result, spec, run.model, np.vstack(run.recent)[-rows:])
    result.seconds = time.perf_counter() - started
    return result


class _Run:
    """The state training runs carry from batch to batch: the model, the feature state, the rows seen."""

    def __init__(
        self, spec: StreamSpec, values: list, place: _Placement, state: Any, batch_rows: int, spec_dir: Path | None
    ) -> None:
        self.spec, self.values, self.place, self.state, self.spec_dir = spec, values, place, state, spec_dir
        self.batch_rows = batch_rows
        self.seen = _SeenRows(spec)
        self.model: Any = None
        self.history: list[float] = []  # every label learned so far, for the baseline
        # The newest learned rows, a batch's worth: parity is checked on them (the sample's last batch
        # is often a short tail, too few rows to say much).
        self.recent: list[np.ndarray] = []

    def batch(self, number: int, taken: np.ndarray, result: Backtest) -> tuple[BatchOutcome, list[int]]:
        """One training run on the lines `taken`: returns its outcome and the tail's lines (learned next)."""
        from dagster_project.quality.passed_over import nothing_but_dead_letters
        from dagster_project.quality.suite import screen_batch
        from dagster_project.registry.promotion import spec_tail_split

        spec, place = self.spec, self.place
        partitions, offsets = place.partitions[taken], place.offsets[taken]
        ranges = {
            int(p): (int(offsets[partitions == p].min()), int(offsets[partitions == p].max()) + 1)
            for p in np.unique(partitions)
        }
        ends = spec_tail_split(spec, ranges)
        learned_lines = np.array([ends[p] > o for p, o in zip(partitions.tolist(), offsets.tolist(), strict=True)])
        if not learned_lines.any():  # never: a tail leaves the batch at least min_rows (kept as a guard)
            learned_lines[:] = True
            ends = {p: e for p, (_, e) in ranges.items()}
        learn, tail = taken[learned_lines], taken[~learned_lines]
        batch = self._parse(learn, self.state, result)
        learned_ranges = {p: (s, ends[p]) for p, (s, _) in ranges.items() if ends[p] > s}
        batch.ranges = learned_ranges
        refused = len(learn) - batch.rows
        outcome = BatchOutcome(number, learned_ranges, messages=len(learn), tail=len(tail), refused=refused)
        tail_batch = (
            self._parse(tail, self.state.copy() if self.state is not None else None, None, tail=True)
            if len(tail)
            else None
        )
        if nothing_but_dead_letters(batch):  # production passes it over (quality.passed_over), a schema change aside
            outcome.quality = "passed_over"
            outcome.quality_detail = f"every message ({refused:,}) dead-lettered: nothing to learn"
            return outcome, tail.tolist()
        screening = screen_batch(batch, spec, self.spec_dir)
        outcome.quality, outcome.quality_detail = screening.action, screening.result.summary
        if screening.kept is None:
            return outcome, tail.tolist()
        kept = screening.kept
        outcome.split_off = screening.rejected.rows if screening.rejected is not None else 0
        labelled = kept.labelled
        outcome.unlabelled = int((~labelled).sum())
        if labelled.any():
            y = kept.y[labelled]
            self.seen.add(batch)  # what a window can read back: the learned batches, as the model records them
            self._learn(kept, labelled, learned_ranges, outcome)
            outcome.baseline = _baseline(spec, self.history, y) if outcome.metrics else None
            self.history.extend(y.tolist())
            outcome.learned = len(y)
            self._remember(kept.X)
            self._choose_leader(tail_batch, outcome)
        return outcome, tail.tolist()

    def _remember(self, X: np.ndarray) -> None:
        """Keep the newest learned rows, just enough chunks to hold a batch's worth."""
        self.recent.append(X)
        while len(self.recent) > 1 and sum(len(x) for x in self.recent[1:]) >= self.batch_rows:
            self.recent.pop(0)

    def _parse(self, lines: np.ndarray, state: Any, result: Backtest | None, tail: bool = False) -> Any:
        """The lines as `micro_batch.read_batch` reads them; refusals are counted once (`result`), on the
        learned part, as production dead-letters them. A tail drops rows with a nullable feature's NaN
        (they cannot be scored; the next batch handles them)."""
        from dagster_project.features.batch import derive
        from dagster_project.ingest.events import EventParser, reason_kind
        from dagster_project.ingest.micro_batch import MicroBatch, unseen_examples

        chunk = [self.values[i] for i in lines.tolist()]
        partitions, offsets = self.place.partitions[lines], self.place.offsets[lines]
        parsed = EventParser(self.spec).parse_many(chunk)
        if state is not None:
            parsed = derive(state, partitions.tolist(), chunk, parsed, lambda _: self.place.produced)
        if result is not None:
            for position, reason in parsed.failures:
                kind = reason_kind(reason)
                result.refusals[kind] += 1
                result.refusal_examples.setdefault(kind, (int(lines[position]), reason))
        batch = MicroBatch(
            stream=self.spec.name,
            ranges={},
            X=parsed.X,
            y=parsed.y,
            ids=parsed.ids,
            partitions=partitions[parsed.index],
            offsets=offsets[parsed.index],
            unseen_examples=unseen_examples(partitions, offsets, parsed.unseen),  # the values the message quotes
            # what production's batch counts, so a batch refused whole is judged as it is (`nothing_but_dead_letters`)
            dlq_reasons=Counter(reason_kind(reason) for _, reason in parsed.failures),
            read=len(chunk),
        )
        if tail and batch.rows:
            keep = ~np.isnan(batch.X).any(axis=1)
            if not keep.all():
                batch = MicroBatch(
                    self.spec.name,
                    {},
                    batch.X[keep],
                    batch.y[keep],
                    [batch.ids[i] for i in np.flatnonzero(keep)],
                    batch.partitions[keep],
                    batch.offsets[keep],
                )
        return batch

    def _learn(self, kept: Any, labelled: np.ndarray, ranges: Ranges, outcome: BatchOutcome):
        """Test-then-train as the `model` asset does."""
        from dagster_project.learning.learner import rows_of, test_then_learn
        from dagster_project.learning.prequential import BatchMetrics

        rows = rows_of(kept.X[labelled], kept.y[labelled], kept.partitions[labelled], kept.offsets[labelled])
        learned = test_then_learn(self.model, self.spec, rows, ranges, self.seen.read)
        if self.model is not None:
            outcome.metrics = learned.metrics.as_metadata()
            outcome.families = {
                label: BatchMetrics.from_record(values).as_metadata() for label, values in learned.families.items()
            }
        self.model = learned.model

    def _choose_leader(self, tail: Any, outcome: BatchOutcome) -> None:
        """A candidate set's leader, chosen on the tail's labelled rows (no family has learned them)."""
        from dagster_project.learning.families import CandidateSet, choose_leader
        from dagster_project.registry.promotion import stream_metric

        if not isinstance(self.model, CandidateSet):
            return
        if tail is not None and tail.rows and tail.labelled.any():
            choice = choose_leader(
                self.model, self.spec, stream_metric(self.spec), tail.X[tail.labelled], tail.y[tail.labelled]
            )
            outcome.leader_reason = choice.reason
        outcome.leader = self.model.leader


def _baseline(spec: StreamSpec, history: list[float], y: np.ndarray) -> float | None:
    """What knowing only the labels so far scores on these rows: the most frequent class's accuracy,
    or the mean label's MAE."""
    if not history:
        return None
    past = np.asarray(history)
    if spec.task == "classification":
        values, counts = np.unique(past, return_counts=True)
        return float(np.mean(y == values[np.argmax(counts)]))
    return float(np.mean(np.abs(y - past.mean())))


def _export(result: Backtest, spec: StreamSpec, model: Any, X: np.ndarray) -> None:
    """Export the last model and check parity on the last batch's rows, as a version is registered."""
    from dagster_project.learning.pipeline import export_checked

    try:
        artifact = export_checked(spec, model, X)
    except Exception as exc:  # the user's estimator settings may not convert: report, do not crash
        result.onnx_problem = f"{type(exc).__name__}: {exc}"
        return
    result.onnx = {**artifact.parity, "onnx_bytes": len(artifact.onnx_bytes)}
    if not artifact.passed:
        result.onnx_problem = f"parity failed: {artifact.reason} (the version would not be registered)"
