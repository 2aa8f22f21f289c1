"""Suite rules the event parser already enforces, verified on a batch's arrays instead of by GX.

The parser (`ingest.events.EventParser`) emits float64 columns, refuses a null in a feature that
is not ``nullable``, refuses non-finite values and maps every label to a class index. The suite
still holds those rules (an external frame or a hand-built batch may break them), but on a parsed
batch GX would spend about 8 ms per rule confirming them. Each such rule is checked here on every
row with numpy, with exactly the semantics of its GX expectation; a rule the arrays break goes
to GX like any other, so its failure names the rows and offsets the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dagster_project.spec import RESERVED_COLUMNS, StreamSpec

if TYPE_CHECKING:
    import pandas as pd

LABEL = RESERVED_COLUMNS[0]
Check = Callable[["pd.DataFrame"], bool]  # True: the rule holds on every row of the frame


def parser_guarantees(
    spec: StreamSpec, expectations: Sequence[Any], columns: Sequence[str], numeric_dtypes: Sequence[str]
) -> dict[int, Check]:
    """Position in the suite -> how to verify it, for the rules the parser enforces.

    `columns` is the frame's exact column list and `numeric_dtypes` the type rule's list. Rules
    about the data itself (ranges, null fractions of nullable features, row counts, unique ids,
    mean/std bounds, unseen categories, the suite file's own rules) are never listed: GX runs them.
    """
    import great_expectations.expectations as gxe

    strict = {f.name for f in spec.features if not f.nullable}  # parsed features the parser keeps non-null
    parsed = {f.name for f in spec.features} | {LABEL}  # derived features are computed, not parsed
    classes = [float(i) for i in range(len(spec.label.classes or []))]
    finite = float(np.finfo(np.float64).max)
    checks: dict[int, Check] = {}
    for position, e in enumerate(expectations):
        column = getattr(e, "column", None)
        exact = getattr(e, "mostly", 1.0) in (None, 1.0) and getattr(e, "row_condition", None) in (None, "")
        if not exact:
            continue
        if isinstance(e, gxe.ExpectTableColumnsToMatchSet):
            if e.exact_match and sorted(e.column_set or []) == sorted(columns):
                checks[position] = _columns_are(list(columns))
        elif isinstance(e, gxe.ExpectColumnValuesToBeInTypeList):
            if column in parsed and list(e.type_list or []) == list(numeric_dtypes):
                checks[position] = _numpy_dtype_in(column, set(numeric_dtypes))
        elif isinstance(e, gxe.ExpectColumnValuesToNotBeNull):
            if column in strict:
                checks[position] = _no_nan(column)
        elif isinstance(e, gxe.ExpectColumnValuesToBeBetween):
            unbounded = e.min_value == -finite and e.max_value == finite
            if column in parsed and unbounded and not e.strict_min and not e.strict_max:
                checks[position] = _no_inf(column)
        elif isinstance(e, gxe.ExpectColumnValuesToBeInSet):
            if column == LABEL and spec.task == "classification" and list(e.value_set or []) == classes:
                checks[position] = _labels_in(np.asarray(classes))
    return checks


def _float_column(df: pd.DataFrame, column: str) -> np.ndarray | None:
    """The column as a float numpy array, or None when it is not a plain float column."""
    if column not in df.columns:
        return None
    series = df[column]
    if not isinstance(series.dtype, np.dtype) or series.dtype.kind != "f":
        return None
    return series.to_numpy()


def _columns_are(expected: list[str]) -> Check:
    wanted = sorted(expected)

    def check(df: pd.DataFrame) -> bool:
        columns = list(df.columns)
        return all(type(c) is str for c in columns) and sorted(columns) == wanted  # 0 is not "0" to GX

    return check


def _numpy_dtype_in(column: str, names: set[str]) -> Check:
    def check(df: pd.DataFrame) -> bool:
        if column not in df.columns:
            return False
        dtype = df[column].dtype
        return isinstance(dtype, np.dtype) and dtype.kind in "fiu" and dtype.name in names

    return check


def _no_nan(column: str) -> Check:
    def check(df: pd.DataFrame) -> bool:
        values = _float_column(df, column)
        return values is not None and not np.isnan(values).any()

    return check


def _no_inf(column: str) -> Check:
    def check(df: pd.DataFrame) -> bool:
        values = _float_column(df, column)
        return values is not None and not np.isinf(values).any()

    return check


def _labels_in(classes: np.ndarray) -> Check:
    def check(df: pd.DataFrame) -> bool:
        values = _float_column(df, LABEL)
        if values is None:
            return False
        labelled = values[~np.isnan(values)]
        return bool(np.isin(labelled, classes).all())

    return check
