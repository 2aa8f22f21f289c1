"""Retraining on a recent window: the drift sensor's remedy for concept drift.

A retrained version re-learns rows that were already learned, so it does not move the learned
offsets: it records the window it used and becomes the new head, and it must still win the
promotion gate on the next batch before it serves.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from dagster_project.ingest.micro_batch import MicroBatch, read_batch
from dagster_project.kafka.offsets import Ranges
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.names import version_number
from dagster_project.registry.contract import model_changed
from dagster_project.registry.store import ModelRegistry, RegistryError, Version
from dagster_project.spec import StreamSpec

if TYPE_CHECKING:
    from dagster_project.features.state import FeatureState

log = logging.getLogger(__name__)


def learned_ranges(version: Version) -> Ranges:
    """`[batch start, learned end)` per partition: what the version learned of its batch. A batch's
    tail (held out for the promotion gate) is learned by the next version, so it is not in here."""
    learned = version.learned if "learned" in version.meta["offsets"] else {}
    return {
        int(p): (int(start), min(int(end), learned.get(int(p), int(end))))
        for p, (start, end) in version.meta["offsets"]["batch"].items()
    }


def _merge(versions: list[Version]) -> Ranges:
    """The versions' learned ranges joined per partition, from the newest back while each ends where
    the next one starts. Offsets between two batches were passed over (a quarantined or skipped batch,
    an offset reset): no version learned them, so a window stops there rather than span them."""
    window: Ranges = {}
    stopped: set[int] = set()
    for version in sorted(versions, key=lambda v: v.number, reverse=True):
        for p, (start, end) in learned_ranges(version).items():
            if p in stopped:
                continue
            if p not in window:
                window[p] = (start, end)
            elif end == window[p][0]:
                window[p] = (start, window[p][1])
            else:  # a gap (or an overlap: a reset back) between this batch and the next
                stopped.add(p)
    return window


def recent_window(versions: list[Version], rows: int, since: str | None = None) -> Ranges:
    """Offsets to retrain on, merged per partition (consecutive batches are contiguous; a window
    stops at offsets no batch learned: `_merge`).

    With `since` (the batch where a change was detected) it is every batch from there on, so a
    fresh model learns the new concept only; otherwise the batches holding the last `rows` rows.
    """
    learned = [v for v in versions if not v.meta.get("retrain") and not v.meta.get("replay")]  # behind the head
    if since:
        after = [v for v in learned if v.number >= version_number(since)]
        if after:
            return _merge(after)
    chosen: list[Version] = []
    for version in reversed(learned):
        chosen.append(version)
        if sum(v.meta["rows"]["read"] for v in chosen) >= rows:
            break
    return _merge(chosen)


def post_change(window: Ranges, partitions: np.ndarray, offsets: np.ndarray, errors: np.ndarray) -> Ranges:
    """The window from the row where the served model's errors rose, per partition
    (`monitors.change_point.rise_start` on that partition's rows in offset order); a partition
    without clear evidence keeps its start. A concept seldom changes on a batch boundary, and a
    fresh model fit on the old concept's rows of the change batch would serve the new one badly."""
    from monitors.change_point import rise_start

    trimmed: Ranges = {}
    for p, (start, end) in window.items():
        mine = np.flatnonzero(partitions == p)
        at = rise_start(errors[mine])
        trimmed[p] = (int(offsets[mine[at]]), int(end)) if at is not None else (int(start), int(end))
    return trimmed


def row_errors(spec: StreamSpec, estimator: object, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row error of a model: 0/1 (classification) or absolute (regression)."""
    from dagster_project.learning.learner import servable

    predicted = np.asarray(servable(estimator).predict(X))
    if spec.task == "classification":
        return (predicted != y).astype(np.float64)
    return np.abs(predicted.astype(np.float64) - y)


def _from(batch: MicroBatch, window: Ranges) -> MicroBatch:
    """The batch's rows inside `window` (a later start per partition), so its version records the
    window it was fit on. The feature values stay those computed from where the read started."""
    keep = np.ones(len(batch.offsets), dtype=bool)
    for p, (start, _) in window.items():
        keep &= ~((batch.partitions == p) & (batch.offsets < start))
    return dataclasses.replace(
        batch,
        ranges=dict(window),
        X=batch.X[keep],
        y=batch.y[keep],
        ids=[i for i, k in zip(batch.ids, keep, strict=True) if k],
        partitions=batch.partitions[keep],
        offsets=batch.offsets[keep],
        unseen_examples=[
            u for u in batch.unseen_examples if u.get("offset", 0) >= window.get(u.get("partition"), (0, 0))[0]
        ]
        if batch.unseen_examples
        else [],
    )


def _located(
    registry: ModelRegistry, spec: StreamSpec, versions: list[Version], since: str, batch: MicroBatch
) -> Ranges | None:
    """`batch.ranges` trimmed to where the errors of the model that served `since` (its parent)
    rose (None: nothing to trim, or no such model)."""
    named = next((v for v in versions if v.name == since), None)
    parent = named.parent if named else None
    if not parent:
        return None
    labelled = batch.labelled
    served = registry.load_estimator(spec.name, parent)
    errors = row_errors(spec, served, batch.X[labelled], batch.y[labelled])
    trimmed = post_change(batch.ranges, batch.partitions[labelled], batch.offsets[labelled], errors)
    return trimmed if trimmed != batch.ranges else None


def held_window(settings: KafkaSettings, spec: StreamSpec, versions: list[Version], window: Ranges) -> Ranges:
    """`window` from where the broker still holds each partition (retention, DeleteRecords): a
    retrain read from the old start failed with an OFFSET GAP whose fix (an offset reset) cannot move
    a window of learned batches, so it failed every time. With derived features a partition starts
    at the first batch start the broker holds, the state there being known; a partition of which
    nothing is held is left out."""
    from dagster_project.kafka.io import log_starts

    firsts = log_starts(settings, spec.events_topic, window)
    held: Ranges = {}
    for p, (start, end) in window.items():
        first = firsts.get(p, start)  # a partition the topic lacks: the read names it
        if first <= start:
            held[p] = (start, end)
            continue
        if spec.derived:
            batch_starts = [
                s
                for v in versions
                if not v.meta.get("retrain") and not v.meta.get("replay")
                for q, (s, _) in learned_ranges(v).items()
                if q == p and first <= s < end
            ]
            first = min(batch_starts, default=end)
        if first < end:
            held[p] = (first, end)
    return held


def read_window(settings: KafkaSettings, registry: ModelRegistry, spec: StreamSpec, window: Ranges) -> MicroBatch:
    """`window`'s events read again as training read them (nothing dead-lettered twice). With derived
    features each partition is read from the newest batch start at or before the window's start, with
    the state that batch began from (`features.checkpoint.state_before`), and the rows before the
    window's start are dropped: a value depends on every earlier event of its key."""
    from dagster_project.features.checkpoint import state_before

    starts, state = state_before(registry, spec, {p: start for p, (start, _) in window.items()})
    spans = {p: (starts[p], end) for p, (_, end) in window.items()}
    batch = _read_in_chunks(settings, spec, spans, state)
    return _from(batch, window) if spans != window else batch


WINDOW_READ_ROWS = 50_000
"""Offsets one read of a retrain window asks for at most, shared evenly by its partitions. A read
holds its raw records and parsed events until they are parsed, about 0.9 KB a row beside the 40
bytes of 5 float features, and `drift.retrain_window_rows` has no upper bound: 1,000,000 rows read
at once peaked at 963 MiB, in chunks of 50,000 at 325 MiB (of 100,000: 356 MiB), in a process that only
read them (`benchmarks/retrain_memory.py`). Only each chunk's compact arrays stay."""


def window_chunks(spans: Ranges, rows: int) -> list[Ranges]:
    """`spans` as consecutive reads of at most `rows` offsets in all (at least one per partition still
    unread): each read shares `rows` evenly between the partitions not yet read to their end, and a
    share a partition's rest does not fill goes to the others. A share fixed up front left a hot
    partition beside short ones a sliver of `rows` per read once they were done (1,281 reads instead
    of 31 for 64 partitions, one of them holding 1,000,000 of 1,504,000 offsets)."""
    at = {p: s for p, (s, e) in sorted(spans.items()) if s < e}
    chunks: list[Ranges] = []
    while at:
        budget = max(rows, len(at))
        chunk: Ranges = {}
        shortest_first = sorted(at, key=lambda p: (spans[p][1] - at[p], p))
        for i, p in enumerate(shortest_first):
            take = min(spans[p][1] - at[p], max(1, budget // (len(shortest_first) - i)))
            chunk[p] = (at[p], at[p] + take)
            budget -= take
        for p, (_, end) in chunk.items():
            if end >= spans[p][1]:
                del at[p]
            else:
                at[p] = end
        chunks.append(dict(sorted(chunk.items())))
    return chunks


def _read_in_chunks(settings: KafkaSettings, spec: StreamSpec, spans: Ranges, state: FeatureState | None) -> MicroBatch:
    """`spans` read in `WINDOW_READ_ROWS` chunks and merged into the batch one read gives (rows in
    chunk order, each partition's in offset order): each chunk continues the feature state the one
    before left (`state` is advanced in place), and `filling` is judged on all the chunks' rows."""
    from dagster_project.features.warmup import windows_filling
    from dagster_project.ingest.group_reads import merge

    chunks = window_chunks(spans, WINDOW_READ_ROWS)
    if len(chunks) <= 1:
        return read_batch(settings, spec, spans, dead_letter_invalid=False, state=state)
    parts: list[MicroBatch] = []
    times: dict[int, list[np.ndarray]] = {}  # per partition, the event times the state accepted
    for chunk in chunks:
        accepted: dict[int, list[float]] = {}
        if parts:
            parts[-1].feature_state = None  # superseded by this chunk's: only the last one is kept
        parts.append(read_batch(settings, spec, chunk, dead_letter_invalid=False, state=state, accepted=accepted))
        for p, accepted_times in accepted.items():
            times.setdefault(p, []).append(np.asarray(accepted_times, dtype=np.float64))
    identities = [p.identity for p in parts if p.identity]
    if any(identity != identities[0] for identity in identities):  # the topic was deleted and made again between
        raise RegistryError(  # two chunks: rows of two incarnations
            f"{spec.name}: the events topic changed while the retrain read its window (over {len(parts)} reads): "
            "nothing learned; run the retrain again"
        )
    batch = merge(spans, None, parts, chained=True)
    if state is not None:
        batch.filling = windows_filling(state, {p: np.concatenate(t) for p, t in times.items()})
    return batch


def replayed(spec: StreamSpec, member_spec: StreamSpec, start: object, X: np.ndarray, y: np.ndarray) -> object:
    """One incremental family retrained on a window's rows: `drift.retrain_epochs` passes in batches
    of `batch.rows` (each batch learned as the stream learns it: `model.passes` times), from a copy
    of `start` (warm) or a fresh model. Shared with the benchmarks so they measure the retrain the
    product runs."""
    from dagster_project.learning.estimators import build_model, partial_fit

    model = copy.deepcopy(start) if start is not None else build_model(member_spec)
    classes = np.arange(len(spec.label.classes)) if spec.task == "classification" else None
    rows, passes, clip_sigmas = spec.batch.rows, member_spec.model.passes_per_batch, member_spec.model.clip_sigmas
    for _ in range(spec.drift.retrain_epochs):
        for chunk in range(0, len(X), rows):
            partial_fit(model, X[chunk : chunk + rows], y[chunk : chunk + rows], classes, passes, clip_sigmas)
    return model


def unseen_tail(
    settings: KafkaSettings, registry: ModelRegistry, spec: StreamSpec, parent: Version | None
) -> MicroBatch | None:
    """The tail `parent` held out of its batch (None if it held none): rows no version has learned
    yet, the unseen rows a retrain on `parent`'s window is judged on (its leader, its gate)."""
    from dagster_project.features.checkpoint import state_after

    if parent is None:
        return None
    learned = parent.learned
    tail = {
        int(p): (learned[int(p)], int(end))
        for p, (_, end) in parent.meta["offsets"]["batch"].items()
        if int(p) in learned and learned[int(p)] < int(end)
    }
    if not tail:
        return None
    # The tail starts at the parent's learned offsets: its features continue the parent's state.
    return read_batch(settings, spec, tail, dead_letter_invalid=False, state=state_after(registry, spec, parent))


def _lead_refit(model: object, spec: StreamSpec, unseen: MicroBatch | None) -> None:
    """A retrained candidate set's leader: the best refit family on the unseen tail (families.py)."""
    from dagster_project.learning.families import CandidateSet, choose_leader
    from dagster_project.registry.promotion import stream_metric

    if not isinstance(model, CandidateSet) or unseen is None or not unseen.rows or not unseen.labelled.any():
        return
    metric = stream_metric(spec)
    choose_leader(model, spec, metric, unseen.X[unseen.labelled], unseen.y[unseen.labelled], refit=True)


def retrain(
    settings: KafkaSettings,
    registry: ModelRegistry,
    spec: StreamSpec,
    reasons: list[str],
    run_id: str,
    since: str | None = None,
    number_after: int = 0,
) -> Version:
    """Fit a fresh (or champion-warm-started) model on the recent window and register it as head
    (numbered after `number_after` too: `registry.store.ModelRegistry.register`)."""
    from dagster_project.learning.learner import retrained, rows_of
    from dagster_project.learning.pipeline import ParityFailed, TrainedModel, learn_export_register

    name = spec.name
    versions = registry.versions(name)
    if not versions:
        raise RegistryError(f"{name} has no versions to retrain from")
    head = versions[-1]
    wanted = recent_window(versions, spec.drift.retrain_window_rows, since or None)
    window = held_window(settings, spec, versions, wanted)
    lost = {str(p): [s, window[p][0] if p in window else e] for p, (s, e) in wanted.items() if window.get(p) != (s, e)}
    if not window:
        raise RegistryError(
            f"{name}: the broker no longer holds any of the retrain window {wanted} (retention): nothing to retrain on"
        )
    if lost:
        log.warning("%s: the broker no longer holds %s of the retrain window (retention): not learned", name, lost)
    batch = read_window(settings, registry, spec, window)
    change_at = _located(registry, spec, versions, since, batch) if since else None
    if change_at:
        batch, window = _from(batch, change_at), change_at
    labelled = batch.labelled
    X, y = batch.X[labelled], batch.y[labelled]
    if not len(X):
        raise RegistryError(f"{name}: the retrain window {window} has no labelled rows")
    mode = spec.drift.retrain_mode
    champion = registry.champion(name)

    def replay(member_spec: StreamSpec, start) -> object:
        return replayed(spec, member_spec, start, X, y)

    # A champion learned under another estimator or settings is not continued: a warm start from it
    # was registered under the spec's new estimator name and continued for ever. Read only when the
    # champion would be reused: a fresh retrain is a way out of a champion that cannot be read.
    families = len(spec.model.families) > 1  # a candidate set keeps the champion's leader
    reused = bool(champion) and (mode == "warm" or families)
    changed = model_changed(registry.get(name, champion).meta, spec) if reused else None
    lineage = {"from": None, "why": f"{changed} since {champion}: a fresh model"} if changed else None
    if lineage and mode == "warm":
        log.warning("%s: the warm retrain starts afresh: %s", name, lineage["why"])

    def fit() -> TrainedModel:
        current = registry.load_estimator(name, champion) if reused and not changed else None
        start = current if mode == "warm" else None
        started = time.perf_counter()
        if not families and not spec.model.windowed:
            model = replay(spec, start)  # a single incremental model: exactly as it always was
        else:
            rows = rows_of(X, y, batch.partitions[labelled], batch.offsets[labelled])
            why = "drift retrain: " + "; ".join(reasons) if reasons else "drift retrain"
            model = retrained(spec, start, rows, window, why, replay, leader=getattr(current, "leader", None))
            _lead_refit(model, spec, unseen_tail(settings, registry, spec, head) if families else None)
        return TrainedModel(model, head.name, {}, int(len(X)), time.perf_counter() - started, lineage=lineage)

    retrain_meta = {"mode": mode, "epochs": spec.drift.retrain_epochs, "reasons": reasons, "from": head.name}
    if lost:  # per partition [wanted start, held start): offsets of the window the broker had deleted
        retrain_meta["lost_to_retention"] = lost
    try:
        return learn_export_register(
            registry,
            spec,
            batch,
            run_id,
            fit,
            number_after,
            retrain=retrain_meta
            | {"since": since, "change_at": change_at and {str(p): s for p, (s, _) in change_at.items()}},
        )
    except ParityFailed as exc:
        raise RegistryError(f"{name}: retrained model failed ONNX parity: {exc}") from exc
