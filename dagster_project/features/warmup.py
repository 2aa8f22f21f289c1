"""Which derived features' windows were still filling while a batch was read.

A partition's windows hold less than a window of history until a window of event time after its
first event (an empty window gives the feature's default): early in a stream a 1-hour mean looks
nothing like the same mean an hour later. A probe's stream retrained on `sqft_mean_1h: psi 4.84`
two minutes after its first version, whose profile drift checks used as the reference. The version
records the features still filling (`profile.filling`) and drift checks leave them out
(`monitors.evidence`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from dagster_project.features.state import FeatureState

# More than this share of a batch's rows within a window of their partition's first event, and the
# batch's profile of that feature describes the warm-up (each such row's window is partly empty). A
# backfill whose first batch spans many windows has few such rows, and its profile stands.
FILLING_SHARE = 0.05


def windows_filling(state: FeatureState, accepted: Mapping[int, Sequence[float]]) -> tuple[str, ...]:
    """The derived features for which more than `FILLING_SHARE` of a batch's rows came within a
    window of their partition's first event. `accepted` maps each partition to the event times the
    state accepted from the batch (`features.batch.derive` collects them); `state` is the state after."""
    rows = sum(len(times) for times in accepted.values())
    if not rows:
        return ()
    filling = []
    for derived in state.spec.derived:
        young = 0
        for partition, times in accepted.items():
            first = state.partitions[partition].first
            if first is not None:
                young += int(np.count_nonzero(np.asarray(times) - first < derived.window))
        if young > FILLING_SHARE * rows:
            filling.append(derived.name)
    return tuple(filling)
