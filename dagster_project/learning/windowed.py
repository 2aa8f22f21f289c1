"""Windowed learners: a batch estimator (gradient boosting, forests) refit on the newest learned rows.

scikit-learn's strongest non-linear learners have no `partial_fit`, but Streamfit can re-read any
offset range it has learned. So such a model is refit on a sliding window of the newest learned
offsets, read back from Kafka, every `refit_every` batches and at once in a drift retrain. Between
refits the fitted model is unchanged, yet every batch is still scored first (prequential metrics)
and recorded as seen: the learned offsets advance exactly as for an incremental model.

The window is whole learned batches, newest first, up to `window_rows` offsets; a batch larger
than that on its own contributes its newest `window_rows` offsets, shared between partitions by
their offsets. Rows that training excluded (dead letters, per-row rule violations, unlabelled
rows) are excluded from the refit the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dagster_project.kafka.offsets import Ranges
from dagster_project.spec import StreamSpec

# Per partition, the offset segments `[start, end)` a window holds (gaps: batches never learned).
Segments = dict[int, list[tuple[int, int]]]


@dataclass
class WindowRows:
    """The valid, labelled rows read back for a window, with where each one came from."""

    X: np.ndarray
    y: np.ndarray
    partitions: np.ndarray
    offsets: np.ndarray


# Reads the rows of offset ranges (one span per partition) as training would see them.
WindowReader = Callable[[Ranges], WindowRows]


def single_threaded(method: Callable[..., Any]) -> Callable[..., Any]:
    """`method` run with one OpenMP/BLAS thread. Gradient boosting's OpenMP threads spin while they
    wait: on a trainer sharing 2 cores, a 1,500-row fit took 1.8 s with the default threads and
    0.09 s with one (measured side by side)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            return method(*args, **kwargs)

    return call


class WindowedModel:
    """A batch-fitted pipeline and the window bookkeeping that travels with it (estimator.joblib).

    Predictions delegate to the fitted pipeline, so scoring, the paired tests and ONNX export
    treat it like any other model (`servable` unwraps it for export).
    """

    def __init__(self, window_rows: int, refit_every: int) -> None:
        self.window_rows = window_rows
        self.refit_every = refit_every
        self.pipeline: Any = None
        self.batches: list[dict[int, tuple[int, int]]] = []  # learned ranges of the newest batches, oldest first
        self.since_refit = 0
        self.refits = 0
        self.fitted_on: dict[str, Any] | None = None  # the window of the current fit
        self.waiting_for: list[Any] | None = None  # classes the first window missed (not fitted yet)
        self.last: dict[str, Any] = {}  # what the latest batch did (refit or not, and why)

    def fitted(self) -> Any:
        if self.pipeline is None:
            raise ValueError("the windowed model has not been fitted on a window yet")
        return self.pipeline

    def unfitted_reason(self, spec: StreamSpec) -> str | None:
        """Why this model cannot serve yet (its first window missed a class), with the fixes; None once fitted."""
        if self.pipeline is not None:
            return None
        missing = getattr(self, "waiting_for", None) or "every class"  # absent from an older pickle
        if missing == "every class" and self.last.get("reason", "").startswith("waiting: the window's"):
            return (
                f"{spec.name}: the first window cannot serve yet: {self.last['reason'].removeprefix('waiting: ')}. "
                "Make batch.rows large enough for one batch to be split (HistGradientBoosting's min_samples_leaf "
                "is 20 by default), or declare model.candidates with an incremental family (it serves while the "
                "windowed one waits for a window it can fit)"
            )
        return (
            f"{spec.name}: the first window holds no labelled row of class(es) {missing}, and a windowed "
            "classifier must see every class before it can serve. Make batch.rows large enough for one batch to "
            "hold every class, or declare model.candidates with an incremental family (it serves while the "
            "windowed one waits for its classes)"
        )

    def predict(self, X: np.ndarray) -> np.ndarray:
        return single_threaded(self.fitted().predict)(X)

    @property
    def predict_proba(self) -> Callable[[np.ndarray], np.ndarray]:
        return single_threaded(self.fitted().predict_proba)

    @property
    def decision_function(self) -> Callable[[np.ndarray], np.ndarray]:
        return single_threaded(self.fitted().decision_function)

    def describe(self) -> dict[str, Any]:
        """What a version records: the window it was fit on and what this batch did."""
        return {
            "window_rows": self.window_rows,
            "refit_every": self.refit_every,
            "refits": self.refits,
            "batches_since_refit": self.since_refit,
            "fitted_on": self.fitted_on,
            **self.last,
        }


def new_model(spec: StreamSpec) -> WindowedModel:
    return WindowedModel(spec.model.window, spec.model.refit_period)


def _chosen(batches: list[dict[int, tuple[int, int]]], window_rows: int) -> list[dict[int, tuple[int, int]]]:
    """The newest whole batches (the list is in offset order) within `window_rows` offsets, newest first."""
    chosen: list[dict[int, tuple[int, int]]] = []
    total = 0
    for ranges in reversed(batches):
        size = sum(e - s for s, e in ranges.values())
        if chosen and total + size > window_rows:
            break
        chosen.append(ranges)
        total += size
    return chosen


def window_segments(batches: list[dict[int, tuple[int, int]]], window_rows: int) -> Segments:
    """The newest whole batches within `window_rows` offsets; a single larger batch, its newest
    `window_rows` offsets, shared between partitions in proportion to their offsets."""
    chosen = _chosen(batches, window_rows)
    total = sum(e - s for ranges in chosen for s, e in ranges.values())
    if total > window_rows:  # only the newest batch, too large on its own
        (ranges,) = chosen
        keep = {p: (e - s) * window_rows // total for p, (s, e) in ranges.items()}
        chosen = [{p: (e - keep[p], e) for p, (s, e) in ranges.items() if keep[p] > 0}]
    by_partition: dict[int, list[tuple[int, int]]] = {}
    for ranges in chosen:
        for p, (s, e) in ranges.items():
            if e > s:
                by_partition.setdefault(p, []).append((s, e))
    segments: Segments = {}
    for p in sorted(by_partition):
        parts: list[tuple[int, int]] = []
        for s, e in sorted(by_partition[p]):
            if parts and parts[-1][1] >= s:  # consecutive batches are contiguous; a replay inside a retrain's span
                parts[-1] = (parts[-1][0], max(parts[-1][1], e))
            else:
                parts.append((s, e))
        segments[p] = parts
    return segments


def _insert_in_offset_order(batches: list[dict[int, tuple[int, int]]], ranges: dict[int, tuple[int, int]]) -> None:
    """Put a replayed quarantined batch before the newer batches it lies behind."""
    at = len(batches)
    while at and any(p in ranges and start >= ranges[p][1] for p, (start, _) in batches[at - 1].items()):
        at -= 1
    batches.insert(at, ranges)


def _went_back(batches: list[dict[int, tuple[int, int]]], ranges: dict[int, tuple[int, int]]) -> bool:
    """A new batch (not a replay) that starts behind the last one: the offsets were reset (a recreated
    topic, `streamfit offsets reset`), so the older batches' offsets no longer hold those rows."""
    return bool(batches) and any(p in ranges and ranges[p][0] < end for p, (_, end) in batches[-1].items())


def in_segments(partitions: np.ndarray, offsets: np.ndarray, segments: Segments) -> np.ndarray:
    """Which rows lie inside the window's segments."""
    keep = np.zeros(len(offsets), dtype=bool)
    for p, parts in segments.items():
        on = partitions == p
        for s, e in parts:
            keep |= on & (offsets >= s) & (offsets < e)
    return keep


def _without(segments: Segments, current: Ranges) -> Segments:
    """The window's segments with the current batch's own offsets cut out (those rows are in memory)."""
    out: Segments = {}
    for p, parts in segments.items():
        cs, ce = current.get(p, (0, 0))
        kept = [piece for s, e in parts for piece in ((s, min(e, cs)), (max(s, ce), e)) if piece[1] > piece[0]]
        if kept:
            out[p] = kept
    return out


def _span(segments: Segments) -> Ranges:
    """One read per partition covering its segments (the rows between them are filtered out after)."""
    return {p: (parts[0][0], parts[-1][1]) for p, parts in segments.items()}


LEAFLESS_WHY = (
    "fewer than 2 x min_samples_leaf rows, or nothing to split on: exported by skl2onnx, such a gradient-"
    "boosted classifier labels every row with the first class whatever its probabilities, so it fails parity"
)


def _every_tree_one_leaf(pipeline: Any) -> bool:
    """A HistGradientBoostingClassifier whose trees are all a single leaf: it predicts the class prior,
    and skl2onnx's label output for it is always class 0 (p(1) = 0.555, sklearn says 1, ONNX 0), so
    the batch's parity failed at every retry and halted the stream (batches of 1-5 rows)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    estimator = pipeline.steps[-1][1] if hasattr(pipeline, "steps") else pipeline
    trees = getattr(estimator, "_predictors", None) if isinstance(estimator, HistGradientBoostingClassifier) else None
    return bool(trees) and all(len(tree.nodes) == 1 for iteration in trees for tree in iteration)


def refit(
    model: WindowedModel,
    spec: StreamSpec,
    current: WindowRows,
    current_ranges: Ranges,
    read: WindowReader,
    reason: str,
) -> None:
    """Fit a fresh pipeline on the window ending with the current batch (in place on `model`).

    The current batch's rows are in memory; the rest of the window is read with `read`. A window
    that misses a class keeps the previous fit (a classifier must know every class to be scored
    and exported), and says so; with no previous fit that is an error naming the fix.
    """
    from dagster_project.learning.estimators import build_model

    started = time.perf_counter()
    segments = window_segments(model.batches, model.window_rows)
    before = _without(segments, current_ranges)
    older = _span(before)
    parts = [(read(older), before)] if older else []
    parts.append((current, segments))
    X = np.concatenate([r.X[in_segments(r.partitions, r.offsets, within)] for r, within in parts])
    y = np.concatenate([r.y[in_segments(r.partitions, r.offsets, within)] for r, within in parts])
    window = {
        "ranges": {str(p): [list(seg) for seg in segs] for p, segs in sorted(segments.items())},
        "offsets": sum(e - s for segs in segments.values() for s, e in segs),
        "rows": len(y),
        "read": {str(p): list(r) for p, r in sorted(older.items())},
        "reason": reason,
    }
    if spec.task == "classification":
        missing = sorted(set(range(len(spec.label.classes))) - set(np.unique(y).astype(int).tolist()))
        if missing:
            names = [spec.label.classes[i] for i in missing]
            if model.pipeline is None:  # not servable yet: it tries again next batch, on a larger window
                model.last = {"refit": False, "reason": f"waiting: the window ({len(y)} rows) has no row of {names}"}
                model.waiting_for = names
                return
            model.last = {"refit": False, "reason": f"{reason}, skipped: the window has no row of class(es) {names}"}
            return
    if not len(y):
        model.last = {"refit": False, "reason": f"{reason}, skipped: the window has no labelled rows"}
        return
    pipeline = build_model(spec)
    single_threaded(pipeline.fit)(X, y.astype(int) if spec.task == "classification" else y)
    if spec.task == "classification" and _every_tree_one_leaf(pipeline):
        why = f"the window's {len(y)} rows gave every tree a single leaf ({LEAFLESS_WHY})"
        if model.pipeline is None:  # not servable yet: it tries again next batch, on a larger window
            model.last = {"refit": False, "reason": f"waiting: {why}"}
            model.waiting_for = None  # no class is missing now: `unfitted_reason` names this instead
            return
        model.last = {"refit": False, "reason": f"{reason}, skipped: {why}"}
        return
    model.pipeline = pipeline
    model.fitted_on = window | {"seconds": round(time.perf_counter() - started, 4)}
    model.since_refit = 0
    model.refits += 1
    model.last = {"refit": True, "reason": reason}


def learn(
    model: WindowedModel,
    spec: StreamSpec,
    current: WindowRows,
    current_ranges: Ranges,
    read: WindowReader,
    force: str | None = None,
    replayed: bool = False,
) -> WindowedModel:
    """Record the batch as seen, then refit if it is due (in place; the caller passes a copy).

    Due: the first batch, every `refit_every` batches, or `force` (a drift retrain's reason). A
    `replayed` quarantined batch takes its place in offset order; older than the window, it is left
    out and nothing is refit.
    """
    batch = {p: (int(s), int(e)) for p, (s, e) in current_ranges.items()}
    if replayed:
        _insert_in_offset_order(model.batches, batch)
    else:
        if _went_back(model.batches, batch):
            model.batches.clear()
        model.batches.append(batch)
    model.since_refit += 1
    while len(model.batches) > 1 and sum(e - s for b in model.batches[1:] for s, e in b.values()) >= model.window_rows:
        model.batches.pop(0)  # older than the window can ever reach
    if (
        replayed
        and model.pipeline is not None
        and not any(b is batch for b in _chosen(model.batches, model.window_rows))
    ):
        model.last = {  # a replayed batch older than the window: a window of the newest offsets leaves it out
            "refit": False,
            "reason": f"the batch lies behind the window (the newest {model.window_rows} offsets): nothing to refit",
        }
        return model
    if force:
        reason = force
    elif model.pipeline is None:
        reason = "first window"
    elif model.since_refit >= model.refit_every:
        reason = f"refit every {model.refit_every} batch(es)"
    else:
        model.last = {
            "refit": False,
            "reason": f"{model.since_refit} of {model.refit_every} batches since the last refit",
        }
        return model
    refit(model, spec, current, current_ranges, read, reason)
    return model


def kafka_reader(
    settings: Any, spec: StreamSpec, hook: Callable[[], None] | None = None, registry: Any = None
) -> WindowReader:
    """Reads a window's spans from the events topic as training saw them: unparsable messages and
    rows breaking per-row rules excluded (never dead-lettered again), unlabelled rows dropped, derived
    features with the values training gave them (`retraining.read_window`, which needs the
    `registry`'s checkpoints). Several windowed families of one run share a read of the same spans.
    `hook` runs after the read (the fault-injection point of crash tests)."""
    if spec.derived and registry is None:
        raise ValueError(f"{spec.name} has derived features: a window read needs the registry's checkpoints")
    done: dict[tuple[tuple[int, int, int], ...], WindowRows] = {}

    def read(ranges: Ranges) -> WindowRows:
        from dagster_project.learning.retraining import read_window
        from dagster_project.quality.suite import row_violations

        key = tuple(sorted((p, s, e) for p, (s, e) in ranges.items()))
        if key not in done:
            batch = read_window(settings, registry, spec, ranges)
            keep = batch.labelled & ~row_violations(batch, spec) if batch.rows else np.zeros(0, dtype=bool)
            done[key] = WindowRows(batch.X[keep], batch.y[keep], batch.partitions[keep], batch.offsets[keep])
        if hook is not None:
            hook()
        return done[key]

    return read
