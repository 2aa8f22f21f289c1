"""Rows the served model gave no finite output for: refused with the reason, never answered.

A `nullable` feature's null reaches the model as NaN. Estimators that handle missing values (the
gradient-boosted trees) score it; the others (linear models, MLPs) give NaN scores, which the
class choice would silently turn into the first class. Training refuses such rows too (a NaN
reaching `partial_fit` fails the run), so the scorer refuses them: 422 over HTTP, the DLQ on Kafka.
"""

from __future__ import annotations

import numpy as np

from dagster_project.serving.limits import RequestError
from dagster_project.spec import StreamSpec

MAX_NAMED = 20  # rows named in a 422 answer


def unscored_rows(labels: np.ndarray, scores: np.ndarray | None) -> np.ndarray:
    """Positions of the rows whose scores (classification) or value (regression) are not all finite."""
    out = scores if scores is not None else labels
    finite = np.isfinite(out) if out.ndim == 1 else np.isfinite(out).all(axis=1)
    return np.flatnonzero(~finite)


def unscored_reason(spec: StreamSpec, row: np.ndarray) -> str:
    """Why one row got no prediction, naming its null inputs."""
    nulls = [name for name, value in zip(spec.input_names, row.tolist(), strict=False) if value != value]
    if not nulls:  # finite inputs: the float32 arithmetic overflowed (a value far beyond what was learned)
        return (
            "the model gives no finite prediction for these values: they overflow its float32 arithmetic "
            "(a value far beyond what the features have shown); send values in the features' usual range, "
            "or bound them with the spec's feature min/max so such events are refused as they arrive"
        )
    return (
        f"the model gives no finite prediction for null {', '.join(repr(n) for n in nulls)}: its estimator "
        "does not handle missing values; send a value, or serve a model that handles them (e.g. hist_gradient_boosting)"
    )


def refuse_unscored(spec: StreamSpec, X: np.ndarray, labels: np.ndarray, scores: np.ndarray | None) -> None:
    """422 naming the rows of one request that got no finite prediction, if any did."""
    bad = unscored_rows(labels, scores)
    if len(bad):
        rows = [{"row": int(i), "errors": [unscored_reason(spec, X[i])]} for i in bad[:MAX_NAMED].tolist()]
        raise RequestError(
            422,
            f"{len(bad)} of {len(X)} rows cannot be scored: row {rows[0]['row']}: {rows[0]['errors'][0]}",
            rows=rows,
        )
