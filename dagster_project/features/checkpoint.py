"""Which feature state a read starts from: the one saved with the version whose offsets it follows."""

from __future__ import annotations

from dagster_project.features.serialization import load_state
from dagster_project.features.state import FeatureState
from dagster_project.registry.store import ModelRegistry, Version
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
