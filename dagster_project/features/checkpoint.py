"""Which feature state a read starts from: the one saved with the offsets it follows."""

from __future__ import annotations

from typing import Any

from dagster_project.features.serialization import load_state
from dagster_project.features.state import FeatureState
from dagster_project.registry.store import ModelRegistry, Version, carried_state
from dagster_project.spec import StreamSpec


def state_after(registry: ModelRegistry, spec: StreamSpec, version: Version | None) -> FeatureState | None:
    """The state after `version`'s learned offsets (empty before the first version); None without derived features.

    A version without a stored state (registered before the spec declared derived features)
    gives an empty state: history before it was never kept.
    """
    if not spec.derived:
        return None
    if version is None:
        return FeatureState(spec)
    data = registry.load_feature_state(spec.name, version.name)
    return load_state(spec, data, where=f"{spec.name}/{version.name}")


def expected_state_bytes(
    registry: ModelRegistry, spec: StreamSpec, head: Version | None, reset: dict[str, Any] | None
) -> bytes | None:
    """The saved state at `expected_offsets`: a pending reset's own state when it carries one (a
    quarantined batch, a first batch with nothing to learn, a skipped data-quality halt: their
    events were read and stay in the features), else the head's (an offset reset, a skipped failed
    run: nothing read the skipped events)."""
    carried = carried_state(spec.name, reset)
    if carried is not None or head is None:
        return carried
    return registry.load_feature_state(spec.name, head.name)


def expected_state(
    registry: ModelRegistry, spec: StreamSpec, head: Version | None, reset: dict[str, Any] | None
) -> FeatureState | None:
    """The state the next batch starts from (see `expected_state_bytes`); None without derived features."""
    if not spec.derived:
        return None
    where = f"{spec.name}/{head.name if head else 'the start'}" + (" (pending offset reset)" if reset else "")
    return load_state(spec, expected_state_bytes(registry, spec, head, reset), where=where)


def state_before(
    registry: ModelRegistry, spec: StreamSpec, starts: dict[int, int]
) -> tuple[dict[int, int], FeatureState | None]:
    """Where to read from so that events at `starts` get the values training gave them, and the state there.

    A windowed refit reads back batches learned earlier, and a window may start inside a batch (a drift
    retrain's located change). State is per partition, so each partition starts from the newest batch
    start at or before its offset, with the state that batch began from (its parent's, or the skip it
    applied); before any batch of the partition, from its offset with an empty history. The caller
    reads from there and keeps the rows from `starts` on. None without derived features.
    """
    if not spec.derived:
        return dict(starts), None
    versions = registry.versions(spec.name)
    by_name = {v.name: v for v in versions}
    applied = registry.applied_offset_resets(spec.name)
    best: dict[int, tuple[int, Version]] = {}
    for version in versions:
        if version.meta.get("retrain") or version.meta.get("replay"):
            continue  # they re-learn rows behind the head; their batch is not where a state was read from
        for p, (start, _) in version.meta.get("offsets", {}).get("batch", {}).items():
            p, start = int(p), int(start)
            if p in starts and start <= starts[p] and (p not in best or start > best[p][0]):
                best[p] = (start, version)
    combined = FeatureState(spec)
    loaded: dict[str, FeatureState | None] = {}
    for p, (_, version) in best.items():
        if version.name not in loaded:
            parent = by_name.get(version.parent) if version.parent else None
            loaded[version.name] = expected_state(registry, spec, parent, applied.get(version.name))
        began = loaded[version.name]
        if began is not None and p in began.partitions:
            combined.partitions[p] = began.partitions[p]
    return {p: best[p][0] if p in best else start for p, start in starts.items()}, combined
