"""The whole-stream reference the tests compare derived features with: pandas, per key, at once."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from dagster_project.features.aggregations import ExactSums, finish
from dagster_project.spec import DerivedFeatureSpec, StreamSpec


def pandas_reference(spec: StreamSpec, frame: pd.DataFrame) -> np.ndarray:
    """Each derived feature over `frame` (columns `partition`, the `by` fields, `ts`, the `of`
    features; in arrival order, non-decreasing time per key) with pandas' time-based rolling window
    `closed="left"`: the earlier events in [t - window, t), the current one excluded."""
    out = np.zeros((len(frame), len(spec.derived)))
    frame = frame.assign(_row=np.arange(len(frame)), _time=pd.to_datetime(frame["ts"], unit="s"))
    for j, d in enumerate(spec.derived):
        column = d.of or "ts"
        for _, group in frame.groupby(["partition", d.by], sort=False):
            rolled = group.set_index("_time")[column].rolling(f"{int(d.window * 1000)}ms", closed="left")
            if d.agg == "count":
                values = rolled.count().fillna(0.0)
            elif d.agg == "std":
                values = rolled.std(ddof=0)
            else:
                values = getattr(rolled, d.agg)()
            values = values.to_numpy()
            if d.agg == "sum":
                values = np.nan_to_num(values, nan=0.0)
            values = np.where(np.isnan(values), d.default, values)
            out[group["_row"].to_numpy(), j] = values
    return out


def from_scratch(feature: DerivedFeatureSpec, values: Sequence[float]) -> float:
    """`feature.agg` over one window's values (oldest first) built from scratch with the product's
    formulas: what the running windows must give, bit for bit, for the same window."""
    sums = ExactSums(feature.agg == "std")
    for x in values:
        sums.add(x)
    low, high = (min(values), max(values)) if len(values) else (0.0, 0.0)
    return finish(feature, sums, len(values), low, high)
