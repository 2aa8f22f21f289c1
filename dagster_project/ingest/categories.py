"""Category features: the one mapping from a raw value to the code the model input holds.

Training (the event parser) and serving (`/predict` rows, the scorer's Kafka loop) both call
`category_code`, so a value is encoded identically everywhere. The model input stays one float32
matrix: a category column holds an integer *code*, and the pipeline's fixed ``OneHotEncoder``
(learning/estimators.py, exported to ONNX with the rest) turns codes into one-hot columns:

- vocabulary ``categories: [c0, ..., c(k-1)]``: ``ci`` -> ``i``; any other value -> ``k``
  (`unseen_code`), which the encoder maps to the "other" column (``unseen: other``) or to all zeros
  (``unseen: zero``, ``k`` is not one of its categories);
- ``buckets: N``: CRC-32 (zlib, IEEE polynomial) of the value's UTF-8 text, modulo N. Stable
  across processes, machines and languages, unlike Python's salted ``hash()``; an integer is
  hashed as its decimal text, so ``94110`` and ``"94110"`` share a bucket;
- null (a ``nullable`` feature) -> ``NULL_CODE`` (-1), all zeros in either encoding: a code, not
  NaN, because the estimators cannot take NaN and ONNX cannot cast it to an index.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from dagster_project.ingest.quoting import described
from dagster_project.spec import FeatureSpec, StreamSpec

NULL_CODE = -1.0
UNSEEN_LABEL = "<unseen>"


class CategoryError(ValueError):
    """A value a category feature cannot take (wrong JSON type); the reason names the fix."""


def stable_bucket(value: str | int, buckets: int) -> int:
    """The hash bucket of a value: CRC-32 of its UTF-8 text modulo `buckets`."""
    return zlib.crc32(str(value).encode("utf-8")) % buckets


def value_kind(feature: FeatureSpec) -> type:
    """The JSON type a category feature's values must have: str, or int for an integer vocabulary."""
    if feature.categories and isinstance(feature.categories[0], int):
        return int
    return str


def category_code(feature: FeatureSpec, raw: Any) -> float:
    """The code of one present (non-null) value of a category feature, or a CategoryError."""
    if feature.buckets is not None:
        if isinstance(raw, str) or (isinstance(raw, int) and not isinstance(raw, bool)):
            return float(stable_bucket(raw, feature.buckets))
        raise CategoryError(
            f"feature {feature.name!r} is a hashed category: send a string or an integer, got {described(raw)}"
        )
    kind = value_kind(feature)
    if not isinstance(raw, kind) or isinstance(raw, bool):
        expected = "a string" if kind is str else "an integer"
        raise CategoryError(
            f"feature {feature.name!r} is a category with {kind.__name__} values: send {expected}, got {described(raw)}"
        )
    return float(feature.category_index.get(raw, len(feature.categories or [])))


def fast_coder(feature: FeatureSpec) -> Callable[[Any], int | None]:
    """`category_code` for the batch parser's fast path: the same code for every value it accepts,
    None for anything else (a null, a wrong type), which then takes `category_code`'s exact path."""
    if feature.buckets is not None:
        buckets = feature.buckets
        return lambda v: stable_bucket(v, buckets) if type(v) is str or type(v) is int else None
    index, unseen, kind = feature.category_index, len(feature.categories or []), value_kind(feature)
    return lambda v: index.get(v, unseen) if type(v) is kind else None


def unseen_code(feature: FeatureSpec) -> float | None:
    """The code of values outside a vocabulary; None for hashed features (nothing is unseen)."""
    return None if feature.categories is None else float(len(feature.categories))


def encoder_categories(feature: FeatureSpec) -> np.ndarray:
    """The codes the pipeline's OneHotEncoder has a column for (any other code encodes as zeros)."""
    if feature.buckets is not None:
        return np.arange(feature.buckets, dtype=np.float64)
    known = len(feature.categories or [])
    return np.arange(known + (1 if feature.unseen == "other" else 0), dtype=np.float64)


def level_labels(feature: FeatureSpec) -> list[str]:
    """A readable name per code 0..: the vocabulary then `UNSEEN_LABEL`, or ``bucket <i>``."""
    if feature.buckets is not None:
        return [f"bucket {i}" for i in range(feature.buckets)]
    return [str(c) for c in feature.categories or []] + [UNSEEN_LABEL]


def category_columns(spec: StreamSpec) -> list[int]:
    """Positions of the category features in the model input."""
    return [j for j, f in enumerate(spec.features) if f.type == "category"]


def unseen_counts(spec: StreamSpec, X: np.ndarray) -> dict[str, int]:
    """Rows per vocabulary feature whose value was outside the vocabulary (from the encoded codes)."""
    counts: dict[str, int] = {}
    for j, feature in enumerate(spec.features):
        code = unseen_code(feature) if feature.type == "category" else None
        if code is not None:
            counts[feature.name] = int(np.count_nonzero(X[:, j] == code)) if len(X) else 0
    return counts


def encoding_signature(spec: StreamSpec) -> str | None:
    """The category encoding as canonical JSON (None without category features).

    Stored in every exported model; the scorer compares it with the spec, because a model trained
    with another vocabulary or bucket count would read the same codes as other values.
    """
    encoded = [
        {"name": f.name, "categories": f.categories, "unseen": f.unseen}
        if f.categories is not None
        else {"name": f.name, "buckets": f.buckets}
        for f in spec.features
        if f.type == "category"
    ]
    return json.dumps(encoded, sort_keys=True, separators=(",", ":")) if encoded else None
