"""Which derived features' windows were still filling while a batch was read.

A partition's windows hold less than a window of history until a window of event time after its
first event (an empty window gives the feature's default): early in a stream a 1-hour mean looks
nothing like the same mean an hour later. A probe's stream retrained on `sqft_mean_1h: psi 4.84`
two minutes after its first version, whose profile drift checks used as the reference. The version
records the features still filling (`profile.filling`) and drift checks leave them out
(`monitors.evidence`).
"""

from __future__ import annotations

from collections.abc import Mapping

from dagster_project.features.state import FeatureState


def windows_filling(state: FeatureState, started: Mapping[int, float | None]) -> tuple[str, ...]:
    """The derived features whose window had not filled where the batch began on one of its
    partitions. `started` maps each partition the batch read to the newest event time the state had
    there before it (None: the batch holds the partition's first events); `state` is the state after."""
    filling = []
    for derived in state.spec.derived:
        for partition, before in started.items():
            part = state.partitions.get(partition)
            if part is None or part.first is None:
                continue  # nothing accepted there: no row of it to judge
            if (part.first if before is None else before) - part.first < derived.window:
                filling.append(derived.name)
                break
    return tuple(filling)
