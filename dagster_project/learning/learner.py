"""Test-then-learn one batch, whatever the model's kind: incremental, windowed or a candidate set.

A single incremental estimator takes exactly the path it always took
(`prequential.test_then_train_partitioned`). A windowed estimator is scored, records the batch and
refits when due (`learning/windowed.py`). A candidate set does both for each of its families and
reports every family's prequential metrics (`learning/families.py`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dagster_project.kafka.offsets import Ranges
from dagster_project.learning import windowed
from dagster_project.learning.families import CandidateSet
from dagster_project.learning.prequential import BatchMetrics, evaluate, test_then_train_partitioned
from dagster_project.learning.windowed import WindowedModel, WindowReader, WindowRows
from dagster_project.registry.contract import families_of
from dagster_project.spec import StreamSpec


@dataclass
class Learned:
    """A batch learned: the new model, the pre-batch metrics of what serves, and per-family details."""

    model: Any
    metrics: BatchMetrics
    fit: Any = None  # the scale-out report of an incremental model (None otherwise)
    families: dict[str, dict[str, Any]] = field(default_factory=dict)  # family -> metrics (candidate sets)


def servable(model: Any) -> Any:
    """The scikit-learn pipeline a version exports and serves: a windowed model's fit, a candidate
    set's leader; any other model is its own."""
    if isinstance(model, CandidateSet):
        return servable(model.members[model.leader])
    if isinstance(model, WindowedModel):
        return model.fitted()
    return model


def describe(model: Any) -> dict[str, Any]:
    """What a version's meta.json records about how the model learns: a candidate set's families, a
    windowed model's window, adaptive SGD's step (empty for any other pipeline)."""
    from dagster_project.learning.adaptive_sgd import step_of

    if isinstance(model, CandidateSet):
        return {"families": model.describe({k: describe(m) for k, m in model.members.items()})}
    if isinstance(model, WindowedModel):
        return {"window": model.describe()}
    step = step_of(model)
    return {"adaptive_sgd": step} if step else {}


def test_then_learn(
    model: Any,
    spec: StreamSpec,
    rows: WindowRows,
    ranges: Ranges,
    read: WindowReader,
    force: str | None = None,
    replayed: bool = False,
) -> Learned:
    """Score the batch with the model as it stood, then learn it. `model` is never mutated.

    `rows` are the batch's learned, labelled rows with their partitions and offsets; `ranges` the
    offsets it learns; `read` reads the rest of a window back. `force` (a drift retrain's reason)
    refits windowed families at once. `replayed`: a quarantined batch learned behind newer ones.
    """
    if len(spec.model.families) > 1:
        current = model if isinstance(model, CandidateSet) else None
        members: dict[str, Any] = {}
        families: dict[str, dict[str, Any]] = {}
        for family in spec.model.families:
            member_spec = spec.for_family(family)
            start = current.member_of(family) if current else None
            learned = _learn_one(start, member_spec, rows, ranges, read, force, replayed, alone=False)
            members[family.label] = learned.model
            families[family.label] = learned.metrics.as_metadata() | describe(learned.model)
        # A windowed family whose first window missed a class cannot lead (it cannot serve) until it fits.
        leader = _ready_leader(members, spec, current.leader if current is not None else None)
        kept = current is not None and current.leader == leader
        record = {k: list(v) for k, v in current.record.items() if k in members} if kept else None
        metrics = BatchMetrics.from_record(families[leader])
        return Learned(CandidateSet(members, leader, record, _estimators(spec)), metrics, None, families)
    return _learn_one(model, spec, rows, ranges, read, force, replayed)


def _ready_leader(members: dict[str, Any], spec: StreamSpec, preferred: str | None) -> str:
    """`preferred` if it can serve, else the first family that can: a windowed classifier whose window
    lacked a class cannot (ValueError naming the fix when no family can)."""
    ready = [label for label, member in members.items() if _unfitted(member, spec) is None]
    if not ready:
        raise ValueError(_unfitted(next(iter(members.values())), spec))
    return preferred if preferred in ready else ready[0]


def _estimators(spec: StreamSpec) -> dict[str, dict]:
    """Each family's label and settings: what `CandidateSet.member_of` compares the next spec with."""
    return families_of(spec)


def _unfitted(model: Any, spec: StreamSpec) -> str | None:
    """Why `model` cannot serve yet (a windowed classifier waiting for its classes), or None."""
    return model.unfitted_reason(spec) if isinstance(model, WindowedModel) else None


def _learn_one(
    model: Any,
    spec: StreamSpec,
    rows: WindowRows,
    ranges: Ranges,
    read: WindowReader,
    force: str | None,
    replayed: bool = False,
    alone: bool = True,
) -> Learned:
    if not spec.model.windowed:
        fitted, metrics, _, fit = test_then_train_partitioned(model, spec, rows.X, rows.y, rows.partitions)
        return Learned(fitted, metrics, fit)
    new = copy.deepcopy(model) if isinstance(model, WindowedModel) else windowed.new_model(spec)
    new.window_rows, new.refit_every = spec.model.window, spec.model.refit_period  # the spec may have changed
    if new.pipeline is not None:
        metrics = evaluate(new, spec, rows.X, rows.y)
    else:
        metrics = BatchMetrics(rows=len(rows.y))
    windowed.learn(new, spec, rows, ranges, read, force, replayed)
    if alone and new.pipeline is None:  # the stream's only model cannot serve: no version can be made
        raise ValueError(new.unfitted_reason(spec))
    return Learned(new, metrics)


def rows_of(X: np.ndarray, y: np.ndarray, partitions: np.ndarray, offsets: np.ndarray) -> WindowRows:
    return WindowRows(np.asarray(X, dtype=np.float64), np.asarray(y), np.asarray(partitions), np.asarray(offsets))


# Not a test, despite the name: keeps pytest from collecting it when a test module imports it.
test_then_learn.__test__ = False  # type: ignore[attr-defined]


def retrained(
    spec: StreamSpec,
    start: Any,
    rows: WindowRows,
    window: Ranges,
    reason: str,
    replay: Callable[[StreamSpec, Any], Any],
    leader: str | None = None,
    alone: bool = True,
) -> Any:
    """A drift retrain's model, per family: an incremental family replays the window's rows
    (`replay(member_spec, warm_start_or_None)`), a windowed one is refit on them at once, so its
    recovery after a change is a fit on post-change rows only. A candidate set keeps `leader`
    (the champion's), else the first family."""
    if len(spec.model.families) > 1:
        current = start if isinstance(start, CandidateSet) else None
        members = {
            family.label: retrained(
                spec.for_family(family),
                current.member_of(family) if current else None,
                rows,
                window,
                reason,
                replay,
                alone=False,
            )
            for family in spec.model.families
        }
        return CandidateSet(members, _ready_leader(members, spec, leader), estimators=_estimators(spec))
    if not spec.model.windowed:
        return replay(spec, start if not isinstance(start, (WindowedModel, CandidateSet)) else None)
    model = windowed.new_model(spec)
    model.batches = [{p: (int(s), int(e)) for p, (s, e) in window.items()}]
    model.since_refit = 1

    def nothing_older(ranges: Ranges) -> WindowRows:
        raise AssertionError(f"a retrain window is read before the refit; asked for {ranges}")

    windowed.refit(model, spec, rows, window, nothing_older, reason)
    if alone and model.pipeline is None:  # the retrain window lacks a class: it cannot serve
        raise ValueError(model.unfitted_reason(spec))
    return model
