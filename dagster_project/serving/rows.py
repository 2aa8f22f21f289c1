"""The `POST /predict` body contract: `{"rows": [{feature: value, ...}, ...]}` checked against the spec.

Values follow the event contract's exact type rules (`coerce_feature`), so HTTP accepts exactly
what the Kafka path accepts. Every bad row is reported with its reasons (up to `MAX_ROW_ERRORS`),
because a client fixing a batch needs all of them, not the first.

The common request (object rows holding exactly the spec's numeric features as JSON numbers) is
checked in bulk: one key lookup and one type test per row, then the number rules (finite, within
the magnitude limit, integral for `int`, 0/1 for `bool`) on the whole matrix at once. Anything else
takes the per-value path, which alone words the errors; the bulk check never accepts a request that
path would refuse.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from dagster_project.ingest.events import (
    MAGNITUDE_LIMIT,
    InvalidEvent,
    coerce_feature,  # the event contract's exact type rules
)
from dagster_project.ingest.quoting import quoted
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
    plan = bulk_plan(spec)
    if plan is not None:
        values = plan.check(rows)
        if values is not None:
            return values
    return _check_each_value(spec, rows)


_NUMBER_TYPES = frozenset((int, float))  # bool is neither: True must not pass as 1
SMALL_REQUEST_ROWS = 8


@dataclass(frozen=True)
class _BulkPlan:
    """What the bulk check needs of one spec, built once: its feature names and the columns with extra rules."""

    width: int
    pick: Callable[[dict[str, Any]], Any]
    int_columns: tuple[int, ...]
    bool_columns: tuple[int, ...]

    def check(self, rows: list[Any]) -> np.ndarray | None:
        """The rows as float32 if every value passes the event contract, else None (the caller rechecks each)."""
        width, pick = self.width, self.pick
        try:
            picked = [pick(row) for row in rows]  # KeyError: a missing feature; TypeError: not an object
        except (KeyError, TypeError):
            return None
        if width == 1:
            picked = [(value,) for value in picked]
        if any(len(row) != width for row in rows):  # an unknown (or context) key: the per-value path decides
            return None
        if len(picked) > SMALL_REQUEST_ROWS and not _NUMBER_TYPES.issuperset(map(type, chain.from_iterable(picked))):
            return None
        return self.numbers(picked)

    def numbers(self, picked: list[tuple[Any, ...]]) -> np.ndarray | None:
        """Rows of values in feature order as float32 if each is an int or float passing the number rules, else None.

        Past `SMALL_REQUEST_ROWS` the caller has checked the types (`_NUMBER_TYPES`): the matrix cannot tell a bool.
        """
        if len(picked) <= SMALL_REQUEST_ROWS:  # numpy's fixed cost per call exceeds a few rows' Python checks
            if not self._numbers_pass(picked):
                return None
            return np.array(picked, dtype=np.float64).astype(np.float32)
        try:
            X = np.array(picked, dtype=np.float64)
        except OverflowError:  # an integer beyond float64 (orjson never makes one): the per-value path decides
            return None
        return self.matrix(X)

    def matrix(self, X: np.ndarray) -> np.ndarray | None:
        """The number rules on a float64 matrix of JSON numbers (in feature order): float32 if all pass, else None."""
        if not (np.abs(X) <= MAGNITUDE_LIMIT).all():  # also false for NaN and infinities
            return None
        for j in self.int_columns:
            if (X[:, j] != np.floor(X[:, j])).any():
                return None
        for j in self.bool_columns:
            if ((X[:, j] != 0) & (X[:, j] != 1)).any():
                return None
        return X.astype(np.float32)

    def _numbers_pass(self, picked: list[Any]) -> bool:
        """The same number rules as the matrix checks, value by value in Python."""
        limit = MAGNITUDE_LIMIT
        for value in chain.from_iterable(picked):
            if type(value) not in _NUMBER_TYPES or not -limit <= value <= limit:  # NaN fails the comparison
                return False
        for j in self.int_columns:
            if any(type(row[j]) is float and not row[j].is_integer() for row in picked):
                return False
        return all(row[j] in (0, 1) for j in self.bool_columns for row in picked)


_PLANS: dict[int, tuple[StreamSpec, _BulkPlan | None]] = {}  # by id(spec); the spec is kept so the id stays its own


def bulk_plan(spec: StreamSpec) -> _BulkPlan | None:
    """The spec's bulk check, or None when a feature needs the per-value path (category codes)."""
    cached = _PLANS.get(id(spec))
    if cached is not None and cached[0] is spec:
        return cached[1]
    features = spec.features
    plan = None
    if features and all(f.type in ("float", "int", "bool") for f in features):  # a null falls back by its type
        plan = _BulkPlan(
            width=len(features),
            pick=operator.itemgetter(*spec.feature_names),
            int_columns=tuple(j for j, f in enumerate(features) if f.type == "int"),
            bool_columns=tuple(j for j, f in enumerate(features) if f.type == "bool"),
        )
    if len(_PLANS) >= 256:  # tests build specs by the hundred; a scorer has one
        _PLANS.clear()
    _PLANS[id(spec)] = (spec, plan)
    return plan


def _check_each_value(spec: StreamSpec, rows: list[Any]) -> np.ndarray:
    """Every value through `coerce_feature`, collecting each bad row's reasons for the 422."""
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
            parts.append(f"unknown feature(s) {quoted(sorted(unknown_all))}{_label_note(spec, unknown_all)}")
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


def _label_note(spec: StreamSpec, unknown: set[str]) -> str:
    """What to do with a `label` sent in a row (an event copied whole, say): /predict needs none."""
    if "label" not in unknown:
        return ""
    return f" (a row holds features only: /predict needs no label; labels for live quality go to {spec.labels_topic})"
