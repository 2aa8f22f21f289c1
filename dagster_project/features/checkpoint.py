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

    A window read back (a windowed refit, a drift retrain) may start anywhere a batch did, or inside
    one (a located change). State is per partition, so each partition starts from the newest batch
    (in registration order, so an offset reset that went back is followed) that started at or before
    its offset, with the state that batch began from: its parent's, or the state a skip it applied
    carried. Before any batch of the partition: its offset, with an empty history. The caller reads
    from there and keeps the rows from `starts` on. None without derived features.
    """
    if not spec.derived:
        return dict(starts), None
    versions = registry.versions(spec.name)
    chosen: dict[int, tuple[int, Version]] = {}
    for version in reversed(versions):
        if len(chosen) == len(starts):
            break
        if version.meta.get("retrain") or version.meta.get("replay"):
            continue  # they re-learn rows behind the head; no batch was read from their state
        for p, (start, _) in version.meta.get("offsets", {}).get("batch", {}).items():
            p, start = int(p), int(start)
            if p in starts and p not in chosen and start <= starts[p]:
                chosen[p] = (start, version)
    by_name = {v.name: v for v in versions}
    applied: dict[str, dict[str, Any]] | None = None
    began: dict[str, FeatureState | None] = {}
    combined = FeatureState(spec)
    for p, (_, version) in chosen.items():
        if version.name not in began:
            reset = None
            if version.meta.get("offset_reset_applied"):  # listed only when needed: on MLflow each is a download
                applied = registry.applied_offset_resets(spec.name) if applied is None else applied
                reset = applied.get(version.name)
            parent = by_name.get(version.parent) if version.parent else None
            began[version.name] = expected_state(registry, spec, parent, reset)
        state = began[version.name]
        if state is not None and p in state.partitions:
            combined.partitions[p] = state.partitions[p]
    return {p: chosen[p][0] if p in chosen else start for p, start in starts.items()}, combined
