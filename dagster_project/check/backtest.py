"""A sample of events run through the product's training path, with no broker and nothing registered.

The file is read in order as one partition (offset = the message's position), cut into the spec's
batches, and each batch goes through what a training run does: `EventParser.parse_many`, derived
features with a `FeatureState` carried from batch to batch, the data-quality screening
(`screen_batch`, the spec's policy), test-then-train (`learner.test_then_learn`, every family of a
candidate set, windowed refits read back from the rows seen), and a leader choice on rows no family
has learned. The last model is exported with skl2onnx and checked for parity as a version would be.

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

from dagster_project.spec import StreamSpec


@dataclass
class BatchOutcome:
    """One batch of the sample: what was refused, what the quality screening decided, what was learned."""

    number: int
    start: int  # first message position (the batch's offsets are [start, end) of partition 0)
    end: int
    refused: int  # messages a training run would dead-letter (malformed or breaking the contract)
    quality: str  # train, partial, halt or quarantine (the spec's policy for a failing batch)
    quality_detail: str
    split_off: int  # rows a partial batch dead-letters with their reason
    unlabelled: int
    learned: int
    metrics: dict[str, float] = field(default_factory=dict)  # the serving model's, before the batch
    baseline: float | None = None  # the prequential baseline on the same rows (see `Backtest.baseline_name`)
    leader: str | None = None  # a candidate set's leader after the batch
    families: dict[str, dict[str, float]] = field(default_factory=dict)  # each family's metrics, before the batch


@dataclass
class Backtest:
    """The whole sample: per batch outcomes, refusal reasons, the final model's ONNX export."""

    spec: StreamSpec
    batch_rows: int
    messages: int = 0
    batches: list[BatchOutcome] = field(default_factory=list)
    refusals: Counter = field(default_factory=Counter)  # reason's kind -> messages
    refusal_examples: dict[str, tuple[int, str]] = field(default_factory=dict)  # kind -> (position, reason)
    onnx: dict[str, Any] | None = None
    onnx_problem: str | None = None
    seconds: float = 0.0
    model: Any = None  # the model after the last batch (what the last version would hold)

    @property
    def learned(self) -> int:
        return sum(b.learned for b in self.batches)

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
        return {
            "stream": self.spec.name,
            "batch_rows": self.batch_rows,
            "messages": self.messages,
            "learned": self.learned,
            "refused": dict(self.refusals),
            "refusal_examples": {k: {"position": p, "reason": r} for k, (p, r) in self.refusal_examples.items()},
            "unlabelled": sum(b.unlabelled for b in self.batches),
            "blocked_batches": [b.number for b in self.blocked],
            "prequential": self.mean_metrics(),
            "baseline": {"measure": self.baseline_name, "value": self.mean_baseline()},
            "families": {label: self.mean_metrics(label) for label in families},
            "onnx": self.onnx,
            "problems": self.problems,
            "seconds": self.seconds,
            "batches": [asdict(b) for b in self.batches],
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
        elif not self.learned:
            out.append("no labelled row was learned: the sample needs labelled events (label field)")
        for batch in self.blocked:
            out.append(
                f"batch {batch.number} [{batch.start}, {batch.end}) would {batch.quality} the stream: "
                f"{batch.quality_detail} (fix the data or the spec's quality section)"
            )
        if self.onnx_problem:
            out.append(f"ONNX export: {self.onnx_problem}")
        return out


class _SeenRows:
    """The rows learned so far, by batch, so a windowed family can read its window back as from Kafka
    (kept as chunks: appending to one array would copy every earlier row at every batch)."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (X, y, offsets) per batch

    def add(self, X: np.ndarray, y: np.ndarray, offsets: np.ndarray) -> None:
        self.chunks.append((X, y, offsets))

    @property
    def last_X(self) -> np.ndarray | None:
        return self.chunks[-1][0] if self.chunks else None

    def read(self, ranges: dict[int, tuple[int, int]]) -> Any:
        from dagster_project.learning.windowed import WindowRows

        parts = []
        for X, y, offsets in self.chunks:
            keep = np.zeros(len(offsets), dtype=bool)
            for _, (start, end) in ranges.items():
                keep |= (offsets >= start) & (offsets < end)
            if keep.any():
                parts.append((X[keep], y[keep], offsets[keep]))
        if not parts:
            nothing = np.empty(0, dtype=np.int64)
            return WindowRows(np.empty((0, self.width)), np.empty(0), nothing.astype(np.int32), nothing)
        X, y, offsets = (np.concatenate(column) for column in zip(*parts, strict=True))
        return WindowRows(X, y, np.zeros(len(offsets), dtype=np.int32), offsets)


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
    state = FeatureState(spec) if spec.derived else None
    seen = _SeenRows(len(spec.inputs))
    model: Any = None
    history: list[float] = []  # every label learned so far, for the baseline
    for number, start in enumerate(range(0, len(values), rows), start=1):
        end = min(start + rows, len(values))
        outcome, model = _one_batch(spec, values, start, end, number, state, seen, model, history, result, spec_dir)
        result.batches.append(outcome)
        if on_batch is not None:
            on_batch(outcome)
    result.model = model
    if model is not None and seen.last_X is not None:
        _export(result, spec, model, seen.last_X)
    result.seconds = time.perf_counter() - started
    return result


def _one_batch(
    spec: StreamSpec,
    values: list[bytes | None],
    start: int,
    end: int,
    number: int,
    state: Any,
    seen: _SeenRows,
    model: Any,
    history: list[float],
    result: Backtest,
    spec_dir: Path | None,
) -> tuple[BatchOutcome, Any]:
    """Messages [start, end) as one training run: parse, derive, screen, learn; returns the model after it."""
    from dagster_project.features.batch import derive
    from dagster_project.ingest.events import EventParser
    from dagster_project.ingest.micro_batch import MicroBatch
    from dagster_project.quality.suite import screen_batch

    chunk = values[start:end]
    parsed = EventParser(spec).parse_many(chunk)
    if state is not None:
        parsed = derive(state, [0] * len(chunk), chunk, parsed)
    for position, reason in parsed.failures:
        kind = reason.split(":")[0]
        result.refusals[kind] += 1
        result.refusal_examples.setdefault(kind, (start + position, reason))
    batch = MicroBatch(
        stream=spec.name,
        ranges={0: (start, end)},
        X=parsed.X,
        y=parsed.y,
        ids=parsed.ids,
        partitions=np.zeros(len(parsed.ids), dtype=np.int32),
        offsets=start + np.asarray(parsed.index, dtype=np.int64),
    )
    outcome = BatchOutcome(number, start, end, len(parsed.failures), "train", "", 0, 0, 0)
    if not len(parsed.ids):
        outcome.quality, outcome.quality_detail = "empty", "no valid message"
        return outcome, model
    screening = screen_batch(batch, spec, spec_dir)
    outcome.quality, outcome.quality_detail = screening.action, screening.result.summary
    if screening.kept is None:
        return outcome, model
    kept = screening.kept
    outcome.split_off = screening.rejected.rows if screening.rejected is not None else 0
    labelled = kept.labelled
    outcome.unlabelled = int((~labelled).sum())
    if not labelled.any():
        return outcome, model
    X, y, offsets = kept.X[labelled], kept.y[labelled], kept.offsets[labelled]
    model = _learn(spec, model, X, y, offsets, kept.learned_ranges, seen, outcome)
    outcome.baseline = _baseline(spec, history, y) if outcome.metrics else None
    history.extend(y.tolist())
    outcome.learned = len(y)
    return outcome, model


def _learn(
    spec: StreamSpec,
    model: Any,
    X: np.ndarray,
    y: np.ndarray,
    offsets: np.ndarray,
    ranges: dict[int, tuple[int, int]],
    seen: _SeenRows,
    outcome: BatchOutcome,
) -> Any:
    """Test-then-train as the `model` asset does; a candidate set's leader is then chosen on these
    rows with the members as they were before them (rows none had learned), as the product does on a
    batch's tail."""
    from dagster_project.learning.families import CandidateSet, choose_leader
    from dagster_project.learning.learner import rows_of, test_then_learn
    from dagster_project.registry.promotion import stream_metric

    rows = rows_of(X, y, np.zeros(len(y), dtype=np.int32), offsets)
    learned = test_then_learn(model, spec, rows, ranges, seen.read)
    seen.add(X, y, offsets)
    if model is not None:
        outcome.metrics = learned.metrics.as_metadata()
        outcome.families = {label: _numbers(values) for label, values in learned.families.items()}
    if isinstance(model, CandidateSet) and isinstance(learned.model, CandidateSet):
        choose_leader(model, spec, stream_metric(spec), X, y)
        if model.leader in learned.model.members:
            learned.model.leader, learned.model.record = model.leader, model.record
            learned.model.choice = model.choice
    if isinstance(learned.model, CandidateSet):
        outcome.leader = learned.model.leader
    return learned.model


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    """A family's prequential metrics out of its record (which also describes how it learns)."""
    return {k: v for k, v in values.items() if k in ("rows", "accuracy", "roc_auc", "log_loss", "mae", "rmse")}


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
