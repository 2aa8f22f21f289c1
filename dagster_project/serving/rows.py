"""The `POST /predict` body contract: `{"rows": [{feature: value, ...}, ...]}` checked against the spec.

Values follow the event contract's exact type rules (`coerce_feature`), so HTTP accepts exactly
what the Kafka path accepts. Every bad row is reported with its reasons (up to `MAX_ROW_ERRORS`),
because a client fixing a batch needs all of them, not the first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dagster_project.ingest.events import (
    InvalidEvent,
    coerce_feature,  # the event contract's exact type rules
)
from dagster_project.serving.limits import RequestError
from dagster_project.spec import StreamSpec

MAX_ROW_ERRORS = 20  # per response: enough to fix a client, bounded for a 10,000-row request


def context_fields(spec: StreamSpec) -> list[str]:
    """Fields a row carries beside its features for derived features: the event time and the keys
    that are not features (README "Derived features")."""
    if not spec.derived or spec.event_time is None:
        return []
    return list(dict.fromkeys([spec.event_time.field, *(d.by for d in spec.derived if d.by not in spec.feature_names)]))


def validate_rows(spec: StreamSpec, body: Any, max_rows: int) -> np.ndarray:
    """The request's rows as a float32 matrix in the spec's feature order, or a RequestError."""
    if not isinstance(body, dict) or "rows" not in body:
        raise RequestError(422, 'the body must be a JSON object {"rows": [{feature: value, ...}, ...]}')
    rows = body["rows"]
    if not isinstance(rows, list):
        raise RequestError(422, f"'rows' must be a list of objects, got {type(rows).__name__}")
    if not rows:
        raise RequestError(422, "'rows' is empty: send at least one row")
    if len(rows) > max_rows:
        raise RequestError(413, f"too many rows: {len(rows)} > {max_rows}; split the request")
    features = spec.features
    known = set(spec.feature_names) | set(context_fields(spec))
    values = np.empty((len(rows), len(features)), dtype=np.float32)
    problems: list[dict[str, Any]] = []
    missing_all: set[str] = set()
    unknown_all: set[str] = set()
    bad_rows = 0
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            problem: dict[str, Any] = {"row": i, "errors": [f"row must be an object, got {type(row).__name__}"]}
        else:
            missing = [f.name for f in features if f.name not in row]
            unknown = sorted(set(row) - known)
            errors = []
            for j, feature in enumerate(features):
                if feature.name in row:
                    try:
                        values[i, j] = coerce_feature(feature, row[feature.name])
                    except InvalidEvent as exc:
                        errors.append(str(exc))
            if not (missing or unknown or errors):
                continue
            missing_all.update(missing)
            unknown_all.update(unknown)
            problem = {"row": i}
            if missing:
                problem["missing"] = missing
            if unknown:
                problem["unknown"] = unknown
            if errors:
                problem["errors"] = errors
        bad_rows += 1
        if len(problems) < MAX_ROW_ERRORS:
            problems.append(problem)
    if bad_rows:
        parts = []
        if missing_all:
            parts.append(f"missing feature(s) {sorted(missing_all)}")
        if unknown_all:
            parts.append(f"unknown feature(s) {sorted(unknown_all)}")
        if len(parts) < bad_rows and any("errors" in p for p in problems):
            parts.append("invalid values")
        raise RequestError(
            422,
            f"{bad_rows} of {len(rows)} rows are invalid: {'; '.join(parts)}; expected features {spec.feature_names}",
            missing=sorted(missing_all),
            unknown=sorted(unknown_all),
            rows=problems,
        )
    return values
