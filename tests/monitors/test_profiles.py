"""A column's profile holds the values numpy's own quantile and binning functions give."""

from __future__ import annotations

import numpy as np
import pytest

from monitors.profiles import QUANTILES, bin_counts, histogram_edges, reference_sample, summarize

COLUMNS = {
    "floats": lambda rng: rng.normal(3.0, 2.0, 5_001),
    "integers": lambda rng: rng.integers(0, 7, 4_000).astype(np.float64),  # ties merge deciles
    "booleans": lambda rng: (rng.random(3_000) < 0.2).astype(np.float64),
    "with nulls": lambda rng: np.where(rng.random(2_000) < 0.1, np.nan, rng.exponential(1.0, 2_000)),
    "one value": lambda rng: np.full(10, 4.0),
    "a single row": lambda rng: np.array([2.5]),
    "two rows": lambda rng: np.array([7.0, -1.0]),
    "wide magnitudes": lambda rng: rng.normal(0.0, 1.0, 999) * 10.0 ** rng.integers(-30, 30, 999),
    "heavy ties": lambda rng: np.repeat(rng.normal(0.0, 1.0, 13), rng.integers(1, 40, 13)),
}


def test_quantiles_and_edges_are_numpys_at_every_small_size() -> None:
    # Interpolation weights and inverted-CDF indices change with the count: every count up to 64,
    # where rounding at a quantile's index is most varied, must give numpy's values exactly.
    rng = np.random.default_rng(11)
    for size in range(1, 65):
        present = rng.normal(0.0, 3.0, size)
        profile = summarize(present)
        assert profile["quantiles"] == [float(q) for q in np.quantile(present, QUANTILES)], size
        assert profile["histogram"]["edges"] == [float(e) for e in histogram_edges(present)], size


@pytest.mark.parametrize("make", COLUMNS.values(), ids=COLUMNS.keys())
def test_profile_statistics_are_numpys_on_the_values_as_they_came(make) -> None:
    column = make(np.random.default_rng(5))
    present = column[~np.isnan(column)]

    profile = summarize(column)

    edges = histogram_edges(present)
    assert profile["quantiles"] == [float(q) for q in np.quantile(present, QUANTILES)]
    assert profile["histogram"] == {
        "edges": [float(e) for e in edges],
        "counts": [int(c) for c in bin_counts(edges, present)],
    }
    assert profile["mean"] == float(present.mean()) and profile["std"] == float(present.std())
    assert profile["sample"] == [float(v) for v in reference_sample(present)]
    assert sum(profile["histogram"]["counts"]) == present.size
