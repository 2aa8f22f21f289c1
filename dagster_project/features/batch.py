"""Derived columns for parsed rows: the one path training and the scorer's Kafka loop share."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import orjson

from dagster_project.features.state import FeatureState
from dagster_project.features.timing import EventError
from dagster_project.ingest.events import MAGNITUDE_LIMIT, ParsedBatch
from dagster_project.spec import StreamSpec


def derive(
    state: FeatureState,
    partitions: Sequence[int],
    values: Sequence[bytes | None],
    parsed: ParsedBatch,
    produced: Callable[[int], float | None] | None = None,
    accepted: dict[int, list[float]] | None = None,
) -> ParsedBatch:
    """`parsed` with the derived columns appended; rows the state refuses become failures.

    `values[i]` and `partitions[i]` are the raw message and partition of input position i
    (`parsed.index` points there), `produced(i)` its Kafka timestamp in epoch seconds (None:
    unknown; read only for the rows that reach the state). Rows are fed in input order, which per
    partition is offset order; the state is per partition, so how partitions interleave does not matter.
    `accepted`, when given, receives the event times the state accepted, per partition
    (`features.warmup`).
    """
    width = len(state.spec.derived)
    extra = np.zeros((len(parsed.index), width), dtype=np.float64)
    keep = np.ones(len(parsed.index), dtype=bool)
    failures = list(parsed.failures)
    loads = orjson.loads
    if state.max_ahead is None:
        produced = None  # nothing to check against: no timestamp lookups
    for r, i in enumerate(parsed.index.tolist()):
        try:
            at = produced(i) if produced is not None else None
            extra[r] = state.observe(partitions[i], loads(values[i]), parsed.X[r], at)
            if accepted is not None:
                accepted.setdefault(partitions[i], []).append(state.last_time)
        except EventError as exc:
            keep[r] = False
            failures.append((i, str(exc)))
    for r in np.flatnonzero(keep & (np.abs(extra) > MAGNITUDE_LIMIT).any(axis=1)).tolist():
        keep[r] = False  # the event is in the state (it happened); only its row cannot be a model input
        failures.append((int(parsed.index[r]), beyond_limit(state.spec, extra[r])))
    kept = set(parsed.index[keep].tolist())
    return ParsedBatch(
        X=np.hstack([parsed.X[keep], extra[keep]]),
        y=parsed.y[keep],
        ids=[event_id for event_id, k in zip(parsed.ids, keep, strict=True) if k],
        index=parsed.index[keep],
        failures=sorted(failures),
        unseen=[u for u in parsed.unseen if u[0] in kept],
    )


def beyond_limit(spec: StreamSpec, values: Sequence[float]) -> str | None:
    """Why a row's derived values cannot be model inputs (one beyond ±MAGNITUDE_LIMIT: the float32
    model makes it inf), else None. Raw features are held to the limit one by one, but a window's
    sum of values within it can pass it."""
    for derived, value in zip(spec.derived, values, strict=True):
        if abs(value) > MAGNITUDE_LIMIT:
            return (
                f"derived feature {derived.name!r} = {value:.4g} is beyond the magnitude limit {MAGNITUDE_LIMIT:g}: "
                f"the float32 model cannot take it ({derived.agg} of {derived.of or 'events'} in its window)"
            )
    return None
