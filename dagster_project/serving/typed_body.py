"""`POST /predict` bodies decoded straight into the checked matrix, for the common request.

The general path parses the body with orjson (a dict per row, an object per value) and
`validate_rows` picks the dicts apart again: at 100 rows that is 19 + 39 us of a request's ~175.
For object rows holding exactly the spec's numeric features as JSON numbers, msgspec decodes the
bytes into one per-spec struct type per row (types checked in C, no dict, untracked by the garbage
collector), and `rows.bulk_plan`'s number rules run on the values. Anything else (bad JSON, another
shape, a missing, unknown or non-number value, a rule broken, no rows or too many) gives None and
the caller takes the general path, which alone words the errors: this decode accepts nothing that
path refuses, and a body it accepts gets the same matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import msgspec
import numpy as np
from msgspec.structs import astuple

from dagster_project.serving.rows import SMALL_REQUEST_ROWS, bulk_plan
from dagster_project.spec import StreamSpec


@dataclass(frozen=True)
class _TypedBody:
    decoder: msgspec.json.Decoder
    width: int


_DECODERS: dict[int, tuple[StreamSpec, _TypedBody | None]] = {}  # by id(spec), the spec kept (as `rows._PLANS`)


def _typed_body(spec: StreamSpec) -> _TypedBody | None:
    cached = _DECODERS.get(id(spec))
    if cached is not None and cached[0] is spec:
        return cached[1]
    typed = None
    names = spec.feature_names
    # derived features need each row's context fields and raw dict: the general path serves those specs
    if bulk_plan(spec) is not None and not spec.derived and all(n.isidentifier() for n in names):
        # msgspec's `float` takes JSON integers too, never booleans, strings or null: the bulk check's types
        row = msgspec.defstruct("Row", [(n, float) for n in names], forbid_unknown_fields=True, gc=False)
        body = msgspec.defstruct("Body", [("rows", list[row])], forbid_unknown_fields=True, gc=False)
        typed = _TypedBody(msgspec.json.Decoder(body), len(names))
    if len(_DECODERS) >= 256:  # tests build specs by the hundred; a scorer has one
        _DECODERS.clear()
    _DECODERS[id(spec)] = (spec, typed)
    return typed


def decode_rows(spec: StreamSpec, raw: bytes, max_rows: int) -> np.ndarray | None:
    """The body's rows as float32 in the spec's feature order, or None: take the general path."""
    typed = _typed_body(spec)
    if typed is None:
        return None
    try:
        rows = typed.decoder.decode(raw).rows
    except msgspec.DecodeError:  # also its ValidationError: a missing, unknown or non-number value
        return None
    if not 0 < len(rows) <= max_rows:
        return None
    picked = list(map(astuple, rows))  # the struct's fields are the features, in order
    plan = bulk_plan(spec)
    assert plan is not None  # `_typed_body` exists only for specs with a bulk plan
    if len(picked) <= SMALL_REQUEST_ROWS:
        return plan.numbers(picked)
    # every value is a float (the decoder's types): one flat pass into the matrix, then the number rules
    flat = np.fromiter(chain.from_iterable(picked), dtype=np.float64, count=len(picked) * typed.width)
    return plan.matrix(flat.reshape(len(picked), typed.width))
