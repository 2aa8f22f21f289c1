"""Data profiles: a compact summary of a batch that later batches are compared against."""

from __future__ import annotations

from typing import Any

import numpy as np

QUANTILES = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0)


def profile_features(X: np.ndarray, names: list[str]) -> dict[str, dict[str, Any]]:
    """Per feature: count, null fraction, mean, std and quantiles (drift checks bin on these)."""
    result: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        column = X[:, i]
        present = column[~np.isnan(column)]
        summary: dict[str, Any] = {"count": int(column.size), "null_fraction": 0.0}
        if column.size:
            summary["null_fraction"] = float(1 - present.size / column.size)
        if present.size:
            summary.update(
                mean=float(present.mean()),
                std=float(present.std()),
                quantiles=[float(q) for q in np.quantile(present, QUANTILES)],
            )
        result[name] = summary
    return result


def profile_labels(y: np.ndarray, task: str) -> dict[str, Any]:
    labelled = y[~np.isnan(y)]
    if task == "classification":
        classes, counts = np.unique(labelled.astype(int), return_counts=True)
        return {"counts": {str(c): int(n) for c, n in zip(classes, counts, strict=True)}}
    if not labelled.size:
        return {"count": 0}
    return {"count": int(labelled.size), "mean": float(labelled.mean()), "std": float(labelled.std())}
