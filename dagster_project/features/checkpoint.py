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
