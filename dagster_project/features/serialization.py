"""The feature state as bytes: the `features.json` file each version stores beside its model.

JSON (orjson), so it can be read without Streamfit; float64 values round-trip exactly. Each key is
`[key, times, [values of each of column]]`, in the least-recently-seen order eviction depends on.
"""

from __future__ import annotations

from collections import OrderedDict

import orjson

from dagster_project.features.state import FeatureState, History, PartitionState
from dagster_project.spec import StreamSpec

FORMAT = 1


def dump_state(state: FeatureState) -> bytes:
    """The settled state (nothing a future event cannot see) as JSON bytes."""
    state.settle()
    return orjson.dumps(
        {
            "format": FORMAT,
            "columns": state.table_columns(),
            "partitions": {
                str(p): {
                    "newest": part.newest,
                    "first": part.first,
                    "tables": {
                        by: [[key, h.times, h.columns] for key, h in keys.items()] for by, keys in part.tables.items()
                    },
                }
                for p, part in sorted(state.partitions.items())
            },
        }
    )


def _filled_since(state: FeatureState, newest: float | None) -> float | None:
    """A start for a partition saved before starts were kept: long enough ago that its windows count
    as filled (they were, or nearly: it had learned at least one batch)."""
    if newest is None:
        return None
    return newest - state.lateness - max(d.window for d in state.spec.derived)


def load_state(spec: StreamSpec, data: bytes | None, where: str = "the version") -> FeatureState:
    """A `FeatureState` for `spec` from `dump_state` bytes; None (no derived state yet) is an empty one."""
    state = FeatureState(spec)
    if data is None:
        return state
    raw = orjson.loads(data)
    if raw.get("format") != FORMAT:
        raise ValueError(f"feature state of {where} has format {raw.get('format')!r}, this Streamfit reads {FORMAT}")
    if raw["columns"] != state.table_columns():
        raise ValueError(
            f"feature state of {where} keeps {raw['columns']} (per key field) but the spec's derived features "
            f"need {state.table_columns()}: restore the derived features it was learned with, or declare the "
            "changed ones in a new stream (history that was never kept cannot be rebuilt)"
        )
    for p, part in raw["partitions"].items():
        state.partitions[int(p)] = PartitionState(
            newest=part["newest"],
            first=part["first"] if "first" in part else _filled_since(state, part["newest"]),
            tables={
                by: OrderedDict((key, History(times, columns)) for key, times, columns in rows)
                for by, rows in part["tables"].items()
            },
        )
    return state
