"""Data profiles: a compact summary of a batch that later batches are compared against.

A version's meta.json carries the profile of the batch it was trained on, so drift checks
(`monitors/drift.py`) never need the raw reference rows. Per numeric column (features, and the
label of a regression stream) a profile holds:

- ``count``, ``null_fraction``: rows in the batch and the fraction that was null (NaN);
- ``mean``, ``std``, ``quantiles`` (at `QUANTILES`) of the present values;
- ``histogram``: ``{"edges": [...], "counts": [...]}`` with ``len(counts) == len(edges) + 1``.
  The edges are the distinct reference deciles (`HISTOGRAM_BINS` bins), and bin ``i`` holds the
  values ``v`` with ``edges[i-1] < v <= edges[i]``; the two outer bins are open, so
  ``counts[0]`` is ``v <= edges[0]`` and ``counts[-1]`` is ``v > edges[-1]``. PSI bins later batches
  on the same edges (`bin_counts`). Ties (integer or boolean features) merge deciles, so such a
  feature has fewer, unequal bins;
- ``sample``: a seeded uniform random sample, without replacement, of at most `SAMPLE_SIZE` present
  values (sorted), for a real two-sample Kolmogorov-Smirnov test.

A category feature (its column holds codes, see dagster_project/ingest/categories.py) is
profiled by frequency instead: ``kind: "category"``, ``count``, ``null_fraction`` (code -1),
``counts`` (``{code: rows}`` for the codes present; sparse, as a hashed feature may have
thousands of buckets), ``labels`` (``{code: value}`` for a vocabulary, the last code being
values outside it) and ``sample`` (codes, as for numeric columns). PSI and chi-square compare
``counts`` (`monitors.drift`).

The ``histogram`` and ``sample`` keys were added for drift checks; profiles written before them lack the keys and the
drift code falls back to the quantiles (PSI) or skips the test (KS). A profile is deterministic:
the same batch always gives the same profile.
"""

from __future__ import annotations

from typing import Any

import numpy as np

QUANTILES = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0)
HISTOGRAM_BINS = 10
SAMPLE_SIZE = 500
SAMPLE_SEED = 0


def histogram_edges(present: np.ndarray, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """The distinct interior quantiles of `present` that split it into `bins` equal-mass bins.

    Edges are observed values (inverted-CDF quantiles), so a boolean or integer feature gets
    edges at its own values rather than interpolated ones between them.
    """
    if bins < 2:
        raise ValueError(f"a histogram needs at least 2 bins, got {bins}")
    probabilities = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    return np.unique(np.quantile(present, probabilities, method="inverted_cdf"))


def _sorted_edges(ordered: np.ndarray, bins: int) -> np.ndarray:
    """`histogram_edges` of values already sorted (no NaN): numpy's inverted-CDF order statistics,
    indexed directly (index ``n * p - 1``, the next one up unless it is whole, clipped at 0)."""
    if bins < 2:
        raise ValueError(f"a histogram needs at least 2 bins, got {bins}")
    index = ordered.size * np.linspace(0.0, 1.0, bins + 1)[1:-1] - 1
    previous = np.floor(index)
    chosen = np.where(index - previous == 0, previous, previous + 1).astype(np.intp)
    chosen[chosen < 0] = 0
    return np.unique(ordered[chosen])


def _sorted_quantiles(ordered: np.ndarray, probabilities: tuple[float, ...]) -> np.ndarray:
    """`np.quantile(ordered, probabilities)` (its default linear method) of values already sorted,
    without NaN, computed as numpy does (same indices, same interpolation) but without the copy
    and partition of the whole column that np.quantile makes on every call (~0.8 ms per 100 k)."""
    q = np.asarray(probabilities, dtype=np.float64)
    n = ordered.size
    virtual = (n - 1) * q
    previous = np.floor(virtual)
    following = previous + 1
    above = virtual >= n - 1  # numpy takes the last value there
    previous[above] = following[above] = -1
    below = virtual < 0
    previous[below] = following[below] = 0
    previous, following = previous.astype(np.intp), following.astype(np.intp)
    gamma = virtual - previous
    a, b = ordered[previous], ordered[following]
    # numpy's _lerp: a + (b - a) * t, or b - (b - a) * (1 - t) from t = 0.5 on, for symmetric rounding
    difference = b - a
    result = a + difference * gamma
    np.subtract(b, difference * (1 - gamma), out=result, where=gamma >= 0.5)
    return result


def bin_counts(edges: np.ndarray | list[float], values: np.ndarray) -> np.ndarray:
    """Counts of `values` in the bins ``(-inf, e0], (e0, e1], ..., (e_last, inf)``; NaN is ignored."""
    edges = np.asarray(edges, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return np.bincount(np.searchsorted(edges, values, side="left"), minlength=edges.size + 1)


def _sorted_bin_counts(edges: np.ndarray, ordered: np.ndarray) -> np.ndarray:
    """`bin_counts` of sorted values without NaN: bin i ends after the last value <= edges[i]."""
    ends = np.searchsorted(ordered, edges, side="right")
    return np.diff(np.concatenate(([0], ends, [ordered.size])))


def reference_sample(present: np.ndarray, size: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED) -> np.ndarray:
    """A seeded uniform sample of at most `size` values, without replacement, sorted."""
    if present.size > size:
        present = np.random.default_rng(seed).choice(present, size=size, replace=False)
    return np.sort(present)


def summarize(
    column: np.ndarray, *, bins: int = HISTOGRAM_BINS, sample_size: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED
) -> dict[str, Any]:
    """The profile of one numeric column (see the module docstring for the keys)."""
    column = np.asarray(column, dtype=np.float64)
    present = column[~np.isnan(column)]
    summary: dict[str, Any] = {"count": int(column.size), "null_fraction": 0.0}
    if column.size:
        summary["null_fraction"] = float(1 - present.size / column.size)
    if present.size:
        # Quantiles depend on the values only, so they are read off one sorted copy: numpy sorts
        # 100 k floats in ~0.6 ms, while each np.quantile call copies and partitions the column
        # (~0.8 ms) and binning by search took 3 ms per feature. The values are numpy's (tested).
        # Mean, std and the sample use `present` as it came.
        ordered = np.sort(present)
        edges = _sorted_edges(ordered, bins)
        summary.update(
            mean=float(present.mean()),
            std=float(present.std()),
            quantiles=[float(q) for q in _sorted_quantiles(ordered, QUANTILES)],
            histogram={
                "edges": [float(e) for e in edges],
                "counts": [int(c) for c in _sorted_bin_counts(edges, ordered)],
            },
            sample=[float(v) for v in reference_sample(present, sample_size, seed)],
        )
    return summary


CATEGORY_NULL_CODE = -1.0  # dagster_project.ingest.categories.NULL_CODE (monitors import no project code)


def category_codes(column: np.ndarray) -> np.ndarray:
    """The present (non-null) codes of a category column, as integers."""
    column = np.asarray(column, dtype=np.float64)
    return column[~np.isnan(column) & (column != CATEGORY_NULL_CODE)].astype(np.int64)


def summarize_category(
    column: np.ndarray,
    labels: list[str] | None = None,
    *,
    sample_size: int = SAMPLE_SIZE,
    seed: int = SAMPLE_SEED,
) -> dict[str, Any]:
    """The frequency profile of one category column of codes (see the module docstring)."""
    column = np.asarray(column, dtype=np.float64)
    present = category_codes(column)
    codes, counts = np.unique(present, return_counts=True)
    summary: dict[str, Any] = {
        "kind": "category",
        "count": int(column.size),
        "null_fraction": float(1 - present.size / column.size) if column.size else 0.0,
        "counts": {str(c): int(n) for c, n in zip(codes.tolist(), counts.tolist(), strict=True)},
        "sample": [float(v) for v in reference_sample(present.astype(np.float64), sample_size, seed)],
    }
    if labels is not None:
        summary["labels"] = {str(i): label for i, label in enumerate(labels)}
    return summary


def profile_features(
    X: np.ndarray,
    names: list[str],
    *,
    categories: dict[str, list[str] | None] | None = None,
    bins: int = HISTOGRAM_BINS,
    sample_size: int = SAMPLE_SIZE,
    seed: int = SAMPLE_SEED,
) -> dict[str, dict[str, Any]]:
    """Per feature: count, null fraction, mean, std, quantiles, histogram and a sample; category
    features (the keys of `categories`, each with its vocabulary labels or None when hashed) by
    frequency."""
    categories = categories or {}
    return {
        name: summarize_category(X[:, i], categories[name], sample_size=sample_size, seed=seed)
        if name in categories
        else summarize(X[:, i], bins=bins, sample_size=sample_size, seed=seed)
        for i, name in enumerate(names)
    }


def profile_labels(y: np.ndarray, task: str) -> dict[str, Any]:
    """Class counts (classification), or count, mean, std and the column profile (regression).

    The same function profiles a model's predictions (class indices or values) for a reference
    prediction distribution; `monitors.drift.prediction_drift` accepts either.
    """
    labelled = y[~np.isnan(y)]
    if task == "classification":
        classes, counts = np.unique(labelled.astype(int), return_counts=True)
        return {"counts": {str(c): int(n) for c, n in zip(classes, counts, strict=True)}}
    if not labelled.size:
        return {"count": 0}
    summary = summarize(labelled)
    summary.pop("null_fraction")
    return summary
