"""Data quality of a micro-batch: a Great Expectations suite built from the stream spec.

No bad batch may reach training. Every batch is turned into a flat frame (features, label, event
id, partition, offset) and validated against a suite built from the spec's ``quality`` section,
feature ranges and label classes, plus any hand-written GX expectations in ``quality.suite_file``.
Per-row rules are also available as a numpy mask (no GX), so that ``allow_partial`` streams can
send the offending rows to the DLQ and train on the rest.

great_expectations takes seconds to import, so it is imported on the first validation, never at
module import (Dagster imports this module when it loads the code location). The GX context and
each spec's suite are built once per process and cached.

GX costs about 8 ms per expectation whatever the row count, so the rules the event parser already
enforces (schema, numeric types, no null in a non-nullable feature, finite values, label classes),
the row count and unique ids are verified with numpy/pandas on every row (`guarantees.py`) and GX
runs the data's other rules (none left: no GX call); a batch that breaks a verified rule is
validated with the whole suite, so GX names its rows and offsets.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import math
import os
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from dagster_project.ingest.categories import UNSEEN_LABEL, unseen_code, unseen_counts
from dagster_project.ingest.micro_batch import MicroBatch
from dagster_project.quality.guarantees import Check, exact_data_checks, parser_guarantees
from dagster_project.spec import RESERVED_COLUMNS, StreamSpec, specs_dir

if TYPE_CHECKING:
    import great_expectations as gx
    import pandas as pd

LABEL, EVENT_ID, PARTITION, OFFSET = RESERVED_COLUMNS
ID_COLUMNS = (EVENT_ID, PARTITION, OFFSET)
SAMPLE_ROWS = 5
# dtype names GX compares against; the nullable extension types (capitalised) count as numeric too
NUMERIC_DTYPES = [
    *("float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"),
    *("Float32", "Float64", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64"),
]
# Finite bounds for features without min/max: GX's between check ignores nulls but fails +-inf.
_FLOAT_MAX = float(np.finfo(np.float64).max)


@dataclass(frozen=True)
class QualityFailure:
    """One expectation that failed, with where and how.

    ``observed`` is the statistic for aggregate rules (row count, column list, dtype, mean, std)
    and, for per-row rules, the fraction of rows that broke the rule. ``sample`` holds up to five
    offending rows as ``{event_id, partition, offset, value}``.
    """

    expectation: str
    column: str | None
    observed: Any
    unexpected_count: int
    sample: list[dict[str, Any]]
    message: str
    severity: str = "critical"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QualityResult:
    """The verdict on one batch. ``passed`` is False when any critical expectation failed.

    ``unexpected_rows`` counts distinct rows that break the spec's per-row rules (the rows
    ``allow_partial`` would split off); a frame whose columns do not match counts all its rows.
    ``warnings`` are failed expectations of severity warning/info from the suite file: reported,
    not blocking. ``seconds`` includes building the suite (and importing GX) on the first call.
    """

    passed: bool
    failures: list[QualityFailure]
    rows: int
    seconds: float
    unexpected_rows: int = 0
    evaluated_expectations: int = 0
    guaranteed_expectations: int = 0  # of those, verified on the arrays (rules the parser enforces), not by GX
    warnings: list[QualityFailure] = field(default_factory=list)
    unseen_categories: dict[str, int] = field(default_factory=dict)  # rows per vocabulary feature

    def as_metadata(self) -> dict[str, Any]:
        """JSON-safe Dagster metadata; the numeric keys are stable so the Plots tab can chart them."""
        return {
            "passed": self.passed,
            "rows": self.rows,
            "failed_expectations": len(self.failures),
            "unexpected_rows": self.unexpected_rows,
            "evaluated_expectations": self.evaluated_expectations,
            "guaranteed_expectations": self.guaranteed_expectations,
            "warnings": len(self.warnings),
            "seconds": round(self.seconds, 4),
            "failures": [f.as_dict() for f in self.failures],
            **({"unseen_categories": self.unseen_categories} if self.unseen_categories else {}),
        }

    @property
    def summary(self) -> str:
        """One line for logs, check descriptions and DLQ reasons."""
        if self.passed:
            return f"{self.evaluated_expectations} expectations passed on {self.rows} rows"
        return f"{len(self.failures)} of {self.evaluated_expectations} expectations failed: " + "; ".join(
            f.message for f in self.failures
        )


# ---------------------------------------------------------------------------------------------
# The frame GX validates


def batch_frame(batch: MicroBatch, spec: StreamSpec) -> pd.DataFrame:
    """The batch as a frame: one float64 column per feature (NaN = null), then ``label``,
    ``event_id``, ``partition`` and ``offset``.

    ``label`` is what training consumes: for classification the class *index* into
    ``spec.label.classes`` as a float (the parser has already mapped values to indices; indices
    keep the column numeric whatever the class values are), for regression the value; NaN where
    the row is unlabelled.
    """
    import pandas as pd

    width = len(spec.inputs)
    if batch.X.ndim != 2 or batch.X.shape != (batch.rows, width):
        raise ValueError(f"batch X has shape {batch.X.shape}, expected ({batch.rows}, {width}) for {spec.name}")
    data: dict[str, Any] = {name: batch.X[:, j] for j, name in enumerate(spec.input_names)}
    data[LABEL] = np.asarray(batch.y, dtype=np.float64)
    # Object strings, not pandas' default Arrow strings: the Arrow column and its `is_unique` go
    # through pyarrow's mimalloc pool, whose first large allocations in a process cost 30-70 ms at
    # 100 k rows (a run process validates one batch, so every run paid it); object strings cost
    # ~13 ms the first time and ~11 ms after (Arrow ~11-16 ms after). Values and checks are the same.
    data[EVENT_ID] = pd.Series(batch.ids, dtype=object)
    data[PARTITION] = np.asarray(batch.partitions, dtype=np.int32)
    data[OFFSET] = np.asarray(batch.offsets, dtype=np.int64)
    return pd.DataFrame(data)


# ---------------------------------------------------------------------------------------------
# Per-row rules in numpy: the mask allow_partial splits on


@dataclass(frozen=True)
class _RowRule:
    reason: str
    mask: np.ndarray
    values: np.ndarray | None = None


def _nulls_allowed(spec: StreamSpec) -> set[str]:
    return {f.name for f in spec.inputs if f.nullable} if spec.quality.max_null_fraction > 0 else set()


def _row_rules(spec: StreamSpec, X: np.ndarray, y: np.ndarray, ids: list[str] | np.ndarray) -> list[_RowRule]:
    rules: list[_RowRule] = []
    nullable = _nulls_allowed(spec)
    for j, feature in enumerate(spec.inputs):
        col = X[:, j]
        null = np.isnan(col)
        if feature.name not in nullable:
            rules.append(_RowRule(f"feature {feature.name!r} is null", null))
        low = -np.inf if feature.min is None else feature.min
        high = np.inf if feature.max is None else feature.max
        with np.errstate(invalid="ignore"):
            bad = ~null & (np.isinf(col) | (col < low) | (col > high))
        rules.append(_RowRule(f"feature {feature.name!r} infinite or outside [{low:g}, {high:g}]", bad, col))
    if spec.task == "classification":
        k = len(spec.label.classes or [])
        labelled = ~np.isnan(y)
        rules.append(_RowRule(f"label is not a class index 0..{k - 1}", labelled & ~np.isin(y, np.arange(k)), y))
    else:
        rules.append(_RowRule("label is not finite", np.isinf(y), y))
    if spec.quality.unique_ids and len(ids):
        _, first = np.unique(np.asarray(ids, dtype=str), return_index=True)
        repeat = np.ones(len(ids), dtype=bool)
        repeat[first] = False
        rules.append(_RowRule("duplicate event id (an earlier row has it)", repeat))
    return rules


def row_violations(batch: MicroBatch, spec: StreamSpec) -> np.ndarray:
    """Boolean mask of rows that break a per-row rule.

    Per-row rules: a null in a feature that may not be null (all features when
    ``max_null_fraction`` is 0, else the non-nullable ones), a value outside the feature's
    ``[min, max]`` or infinite, a label that is not a class index (or an infinite regression
    label), and, with ``unique_ids``, every repeat of an event id after its first row. Batch-level
    rules (row count, null fraction of nullable features, mean/std bounds) are not row rules.
    """
    mask = np.zeros(batch.rows, dtype=bool)
    for rule in _row_rules(spec, batch.X, batch.y, batch.ids):
        mask |= rule.mask
    return mask


def row_violation_reasons(batch: MicroBatch, spec: StreamSpec) -> dict[int, str]:
    """Why each offending row is offending, keyed by row position: the DLQ reason for that row."""
    reasons: dict[int, list[str]] = {}
    for rule in _row_rules(spec, batch.X, batch.y, batch.ids):
        for i in np.flatnonzero(rule.mask):
            text = rule.reason if rule.values is None else f"{rule.reason}: {_json_safe(rule.values[i])}"
            reasons.setdefault(int(i), []).append(text)
    return {i: "quality: " + "; ".join(texts) for i, texts in sorted(reasons.items())}


def split_partial(batch: MicroBatch, mask: np.ndarray) -> tuple[MicroBatch, MicroBatch]:
    """``(kept, rejected)``: the rows where ``mask`` is False and True, each in the original order.

    Both halves keep the batch's offset ``ranges`` (they came from the same read); ``kept`` keeps
    the parse-time ``dlq_reasons`` and ``rejected`` starts with none.
    """
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (batch.rows,):
        raise ValueError(f"mask must be a boolean array of {batch.rows} rows, got {mask.dtype} {mask.shape}")

    def take(select: np.ndarray, reasons: Counter) -> MicroBatch:
        index = np.flatnonzero(select)
        return MicroBatch(
            stream=batch.stream,
            ranges=dict(batch.ranges),
            X=batch.X[index],
            y=batch.y[index],
            ids=[batch.ids[i] for i in index],
            partitions=batch.partitions[index],
            offsets=batch.offsets[index],
            dlq_reasons=reasons,
            identity=batch.identity,
            learn_ends=batch.learn_ends,
        )

    kept = take(~mask, Counter(batch.dlq_reasons))
    kept.tail = batch.tail
    # The split-off rows entered the derived-feature state when read, as the scorer's do.
    kept.feature_state, kept.feature_counters = batch.feature_state, batch.feature_counters
    kept.filling = batch.filling
    return kept, take(mask, Counter())


# ---------------------------------------------------------------------------------------------
# The GX suite


def expected_columns(spec: StreamSpec) -> list[str]:
    return [*spec.input_names, *RESERVED_COLUMNS]


def suite_file_path(spec: StreamSpec, spec_dir: str | Path | None = None) -> Path | None:
    """Where ``quality.suite_file`` points: absolute, or relative to the spec directory."""
    if not spec.quality.suite_file:
        return None
    path = Path(spec.quality.suite_file).expanduser()
    return path if path.is_absolute() else Path(spec_dir or specs_dir()) / path


@functools.lru_cache(maxsize=1)
def _context() -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")  # also makes it GX's current project: suites need one
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    _skip_batch_fingerprints()
    return context


def _skip_batch_fingerprints() -> None:
    """Stop GX fingerprinting each pandas batch it loads.

    The fingerprint (an md5 over `pandas.util.hash_pandas_object` of every row, ids included) is
    only a batch marker in GX's result, which Streamfit never keeps (a batch is named by its
    offsets): ~25 ms of a 100 k-row batch's ~60 ms suite, ~3 ms at 10 k. GX's only switch is its
    pandas engine's size threshold below which it hashes; nothing is checked differently.
    """
    from great_expectations.execution_engine import pandas_execution_engine

    if hasattr(pandas_execution_engine, "HASH_THRESHOLD"):
        pandas_execution_engine.HASH_THRESHOLD = 0


def build_suite(spec: StreamSpec, spec_dir: str | Path | None = None) -> gx.ExpectationSuite:
    """The stream's expectation suite (not yet added to a context)."""
    return _build_suite(spec, suite_file_path(spec, spec_dir))


def _build_suite(spec: StreamSpec, suite_path: Path | None) -> gx.ExpectationSuite:
    _context()
    import great_expectations as gx
    import great_expectations.expectations as gxe

    quality = spec.quality
    suite = gx.ExpectationSuite(name=f"streamfit.{spec.name}")
    add = suite.add_expectation
    add(gxe.ExpectTableColumnsToMatchSet(column_set=expected_columns(spec), exact_match=True))
    add(gxe.ExpectTableRowCountToBeBetween(min_value=quality.min_rows, max_value=quality.max_rows))
    for column in [*spec.input_names, LABEL]:
        add(gxe.ExpectColumnValuesToBeInTypeList(column=column, type_list=NUMERIC_DTYPES))
    nullable = _nulls_allowed(spec)
    for f in spec.inputs:
        mostly = 1.0 - quality.max_null_fraction if f.name in nullable else 1.0
        add(gxe.ExpectColumnValuesToNotBeNull(column=f.name, mostly=mostly))
        low = -_FLOAT_MAX if f.min is None else f.min
        high = _FLOAT_MAX if f.max is None else f.max
        add(gxe.ExpectColumnValuesToBeBetween(column=f.name, min_value=low, max_value=high))
    if spec.task == "classification":
        classes = [float(i) for i in range(len(spec.label.classes or []))]
        add(gxe.ExpectColumnValuesToBeInSet(column=LABEL, value_set=classes))  # nulls (unlabelled) ignored
    else:
        add(gxe.ExpectColumnValuesToBeBetween(column=LABEL, min_value=-_FLOAT_MAX, max_value=_FLOAT_MAX))
    for f in spec.inputs:
        code = unseen_code(f) if f.type == "category" else None
        if code is not None:  # share of values outside the vocabulary, all rows counted
            mostly = 1.0 - quality.max_unseen_category_share
            add(gxe.ExpectColumnValuesToNotBeInSet(column=f.name, value_set=[code], mostly=mostly))
    if quality.unique_ids:
        add(gxe.ExpectColumnValuesToBeUnique(column=EVENT_ID))
    for name, (low, high) in quality.mean_bounds.items():
        add(gxe.ExpectColumnMeanToBeBetween(column=name, min_value=low, max_value=high))
    for name, (low, high) in quality.std_bounds.items():
        add(gxe.ExpectColumnStdevToBeBetween(column=name, min_value=low, max_value=high))
    if suite_path is not None:
        for expectation in _read_suite_file(suite_path, set(expected_columns(spec))):
            add(expectation)
    return suite


def _read_suite_file(path: Path, columns: set[str]) -> list[Any]:
    """Expectations from a GX suite JSON (``{"expectations": [...]}`` as GX writes it, or a list)."""
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"quality.suite_file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"quality.suite_file {path} is not valid JSON: {exc}") from None
    items = raw.get("expectations") if isinstance(raw, dict) else raw
    if not isinstance(items, list):
        raise ValueError(f"quality.suite_file {path} must hold a list of expectations or {{'expectations': [...]}}")
    expectations = []
    for i, item in enumerate(items):
        kind = (item.get("type") or item.get("expectation_type")) if isinstance(item, dict) else None
        try:
            if not kind:
                raise ValueError("each expectation needs a 'type' and 'kwargs'")
            kwargs = dict(item.get("kwargs") or {})
            named = [kwargs.get(k) for k in ("column", "column_A", "column_B")] + list(kwargs.get("column_list") or [])
            unknown = sorted({c for c in named if c is not None} - columns)
            if unknown:
                raise ValueError(f"unknown column(s) {unknown}; the batch frame has {sorted(columns)}")
            config = ExpectationConfiguration(
                type=kind, kwargs=kwargs, meta=item.get("meta"), severity=item.get("severity", "critical")
            )
            expectations.append(config.to_domain_obj())
        except Exception as exc:
            raise ValueError(f"quality.suite_file {path}: expectation #{i} ({kind}): {exc}") from exc
    return expectations


@dataclass(frozen=True)
class _Compiled:
    """One spec's suite, registered once per process, and its split by who verifies each rule.

    ``data_suite`` holds the rules the parser does not enforce; ``guarantees`` verifies the others
    (`guarantees.parser_guarantees`). A frame that passes every guarantee is validated with
    ``data_suite``; any other frame with the whole ``suite``, so GX reports what broke.
    """

    batch_definition: Any
    suite: Any
    data_suite: Any
    guarantees: dict[int, Check]
    order: dict[str, int]  # expectation id (in either suite) -> position in the whole suite
    size: int


_lock = threading.RLock()  # one GX context per process; validations do not interleave
_names = itertools.count()


@functools.lru_cache(maxsize=32)
def _compiled(spec_json: str, suite_path: str | None, suite_stamp: tuple[int, int] | None) -> _Compiled:
    import great_expectations as gx

    spec = StreamSpec.model_validate_json(spec_json)
    context = _context()
    suite = _build_suite(spec, Path(suite_path) if suite_path else None)
    tag = f"{spec.name}-{hashlib.sha1(spec_json.encode()).hexdigest()[:10]}-{next(_names)}"
    suite.name = f"streamfit-{tag}"
    suite = context.suites.add(suite)  # gives each expectation an id, by which results are put back in order
    guarantees = parser_guarantees(spec, suite.expectations, expected_columns(spec), NUMERIC_DTYPES)
    guarantees |= exact_data_checks(suite.expectations)
    data_rules = [i for i in range(len(suite.expectations)) if i not in guarantees]
    data_suite = context.suites.add(
        gx.ExpectationSuite(
            name=f"{suite.name}-data", expectations=[_unbound_copy(suite.expectations[i]) for i in data_rules]
        )
    )
    batch_definition = (
        context.data_sources.add_pandas(f"streamfit-{tag}")
        .add_dataframe_asset("micro_batch")
        .add_batch_definition_whole_dataframe("whole")
    )
    order = {e.id: i for i, e in enumerate(suite.expectations)}
    order.update({e.id: i for i, e in zip(data_rules, data_suite.expectations, strict=True)})
    return _Compiled(
        batch_definition=batch_definition,
        suite=suite,
        data_suite=data_suite,
        guarantees=guarantees,
        order=order,
        size=len(suite.expectations),
    )


def _unbound_copy(expectation: Any) -> Any:
    """A copy a second suite can own (GX refuses an expectation that already has a suite's id)."""
    clone = copy.copy(expectation)
    clone.id = None
    return clone


def _compile(spec: StreamSpec, spec_dir: str | Path | None) -> _Compiled:
    path = suite_file_path(spec, spec_dir)
    stamp = None
    if path is not None:
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise FileNotFoundError(f"quality.suite_file {path} does not exist") from None
        stamp = (stat.st_mtime_ns, stat.st_size)  # an edited suite file is picked up without a restart
    return _compiled(spec.model_dump_json(), str(path) if path else None, stamp)


# ---------------------------------------------------------------------------------------------
# Validation


def validate_batch(batch: MicroBatch, spec: StreamSpec, spec_dir: str | Path | None = None) -> QualityResult:
    """Validate one micro-batch against the stream's suite."""
    start = time.perf_counter()
    result = validate_frame(batch_frame(batch, spec), spec, spec_dir)
    failures = [_describe_unseen(f, spec, batch) for f in result.failures]
    return replace(
        result, failures=failures, unseen_categories=unseen_counts(spec, batch.X), seconds=time.perf_counter() - start
    )


UNSEEN_EXPECTATION = "expect_column_values_to_not_be_in_set"


def _describe_unseen(failure: QualityFailure, spec: StreamSpec, batch: MicroBatch) -> QualityFailure:
    """The unseen-category rule's failure in the stream's terms: feature, share, threshold, and
    example raw values with their offsets (the frame only holds codes)."""
    if failure.expectation != UNSEEN_EXPECTATION or failure.column not in spec.input_names:
        return failure
    raw = {(e["partition"], e["offset"]): e["value"] for e in batch.unseen_examples if e["feature"] == failure.column}
    sample = [  # a row without its raw value (a batch quarantined before they were kept) says <unseen>, not a code
        {**row, "value": raw.get((row.get("partition"), row.get("offset")), UNSEEN_LABEL)} for row in failure.sample
    ]
    examples = ", ".join(f"{row['value']!r} at {row.get('partition')}:{row.get('offset')}" for row in sample)
    threshold = spec.quality.max_unseen_category_share
    share = failure.observed if isinstance(failure.observed, float) else 0.0
    message = (
        f"unseen categories in {failure.column!r}: {failure.unexpected_count} of {batch.rows} rows ({share:.1%}) hold "
        f"values outside its categories, above quality.max_unseen_category_share {threshold:g}"
        + (f"; e.g. {examples} (partition:offset)" if examples else "")
        + "; if they are expected, raise the threshold (they are learned as the feature's `unseen` encoding). "
        "Adding them to the feature's categories changes the model's columns, which is a new stream (the sensor "
        "says SPEC CHANGED); for values that keep coming, declare a new stream with `buckets: N` (hashing)"
    )
    return replace(failure, sample=sample, message=message)


def validate_frame(df: pd.DataFrame, spec: StreamSpec, spec_dir: str | Path | None = None) -> QualityResult:
    """Validate a batch frame (see `batch_frame`); also how schema changes are caught."""
    start = time.perf_counter()
    with _lock:
        compiled = _compile(spec, spec_dir)
        from great_expectations.validator.v1_validator import Validator as V1Validator

        result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_ROWS}
        index_columns = [c for c in ID_COLUMNS if c in df.columns]
        if index_columns:
            result_format["unexpected_index_column_names"] = index_columns
        guaranteed = all(holds(df) for holds in compiled.guarantees.values())
        results: list[Any] = []
        if not guaranteed or compiled.data_suite.expectations:  # else every rule was verified above
            # The validator ValidationDefinition.run uses, without its storing every result in the context
            # (about half the time on small batches, and memory that grows with each batch), and without
            # Batch.validate's loading the frame twice (GX fingerprints each load: ~50 ms per 100k rows).
            validator = V1Validator(
                batch_definition=compiled.batch_definition,
                batch_parameters={"dataframe": df},
                result_format=result_format,
            )
            results = validator.validate_expectation_suite(
                compiled.data_suite if guaranteed else compiled.suite
            ).results
    rows = len(df)
    missing = [c for c in expected_columns(spec) if c not in df.columns]
    failures: list[tuple[int, QualityFailure]] = []
    warnings: list[tuple[int, QualityFailure]] = []
    for outcome in results:
        if outcome.success:
            continue
        config = outcome.expectation_config
        column = config.kwargs.get("column")
        if column in missing:
            continue  # the column-set failure already names it; every check on it raises "does not exist"
        details = dict(outcome.result or {})
        if rows == 0 and "observed_value" in details and details["observed_value"] is None and not _errors(outcome):
            continue  # a statistic of zero rows is undefined: min_rows decides whether empty is acceptable
        failure = _failure(config, column, details, _errors(outcome), rows)
        position = compiled.order.get(config.id, compiled.size)
        (failures if failure.severity == "critical" else warnings).append((position, failure))
    failures.sort(key=lambda pair: pair[0])
    warnings.sort(key=lambda pair: pair[0])
    return QualityResult(
        passed=not failures,
        failures=[f for _, f in failures],
        rows=rows,
        seconds=time.perf_counter() - start,
        unexpected_rows=0 if not failures else _unexpected_rows(df, spec, missing),  # a pass breaks no row rule
        evaluated_expectations=compiled.size,
        guaranteed_expectations=len(compiled.guarantees) if guaranteed else 0,
        warnings=[f for _, f in warnings],
    )


def _errors(outcome: Any) -> list[str]:
    """Exception messages of an expectation that could not run (GX nests them per metric)."""
    info = outcome.exception_info or {}
    if "raised_exception" in info:
        info = {"": info}
    return sorted(
        {str(v.get("exception_message")) for v in info.values() if isinstance(v, dict) and v.get("raised_exception")}
    )


def _failure(config: Any, column: str | None, details: dict[str, Any], errors: list[str], rows: int) -> QualityFailure:
    kind = config.type
    severity = getattr(config.severity, "value", str(config.severity))
    where = f" on {column!r}" if column else ""
    if errors:
        message = f"{kind}{where} could not run: {'; '.join(errors)}"
        return QualityFailure(kind, column, None, 0, [], message, severity)
    unexpected = int(details.get("unexpected_count") or 0)
    if "observed_value" in details:
        observed = _json_safe(details["observed_value"])
        mismatch = (details.get("details") or {}).get("mismatched")
        if mismatch:
            observed = {"columns": observed, **_json_safe(mismatch)}
            message = (
                f"columns differ from the spec: missing {mismatch.get('missing') or []}, "
                f"unexpected {mismatch.get('unexpected') or []}"
            )
        else:
            message = f"{kind}{where}: observed {observed!r}, expected {_expected(config.kwargs) or 'otherwise'}"
        return QualityFailure(kind, column, observed, unexpected, [], message, severity)
    elements = int(details.get("element_count") or rows)
    observed = round(unexpected / elements, 6) if elements else None
    sample = [_sample_row(row, column) for row in (details.get("partial_unexpected_index_list") or [])[:SAMPLE_ROWS]]
    if not sample:
        sample = [{"value": _json_safe(v)} for v in (details.get("partial_unexpected_list") or [])[:SAMPLE_ROWS]]
    where_rows = ", ".join(f"{r['partition']}:{r['offset']}" for r in sample if "offset" in r and "partition" in r)
    expected = _expected(config.kwargs)
    message = (
        f"{kind}{where}: {unexpected} of {elements} rows unexpected"
        + (f" ({expected})" if expected else "")
        + (f", e.g. partition:offset {where_rows}" if where_rows else "")
    )
    return QualityFailure(kind, column, observed, unexpected, sample, message, severity)


def _sample_row(row: dict[str, Any], column: str | None) -> dict[str, Any]:
    out = {key: _json_safe(row[key]) for key in ID_COLUMNS if key in row}
    out["value"] = _json_safe(row.get(column)) if column in row else None
    return out


def _expected(kwargs: dict[str, Any]) -> str:
    shown = {k: v for k, v in kwargs.items() if k not in ("column", "batch_id", "result_format")}
    for key in ("min_value", "max_value"):
        if shown.get(key) in (_FLOAT_MAX, -_FLOAT_MAX):
            shown[key] = "finite"
    if shown.get("type_list") == NUMERIC_DTYPES:
        shown["type_list"] = "numeric"
    return ", ".join(f"{k}={_json_safe(v)}" for k, v in shown.items())


def _json_safe(value: Any) -> Any:
    """Plain JSON values: numpy scalars unwrapped, NaN as None, infinities as strings."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | np.ndarray):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def _unexpected_rows(df: pd.DataFrame, spec: StreamSpec, missing: list[str]) -> int:
    if len(df) == 0:
        return 0
    if missing:
        return len(df)
    numeric = [*spec.input_names, LABEL]
    if any(df[c].dtype.kind not in "fiu" for c in numeric):
        return len(df)  # a column of the wrong type: no row is usable as it stands
    X = df[spec.input_names].to_numpy(dtype=np.float64, na_value=np.nan)
    y = df[LABEL].to_numpy(dtype=np.float64, na_value=np.nan)
    mask = np.zeros(len(df), dtype=bool)
    for rule in _row_rules(spec, X, y, df[EVENT_ID].astype(str).to_numpy()):
        mask |= rule.mask
    return int(mask.sum())


# ---------------------------------------------------------------------------------------------
# The decision a training run acts on


@dataclass(frozen=True)
class Screening:
    """What to do with a batch.

    ``action`` is ``train`` (``kept`` is the whole batch), ``partial`` (train on ``kept``,
    dead-letter ``rejected`` with ``reasons``, keyed by row position in the original batch),
    ``halt`` or ``quarantine`` (the spec's policy for a batch that failed; nothing trains).
    """

    action: Literal["train", "partial", "halt", "quarantine"]
    result: QualityResult
    kept: MicroBatch | None = None
    rejected: MicroBatch | None = None
    kept_result: QualityResult | None = None
    reasons: dict[int, str] = field(default_factory=dict)


def screen_batch(batch: MicroBatch, spec: StreamSpec, spec_dir: str | Path | None = None) -> Screening:
    """Validate, and with ``allow_partial`` split off rows that break per-row rules.

    A split is only taken when the kept rows then pass the whole suite (row count, null fraction
    and distribution bounds included); otherwise the spec's policy applies to the batch.
    """
    result = validate_batch(batch, spec, spec_dir)
    if result.passed:
        return Screening("train", result, kept=batch)
    if spec.quality.allow_partial:
        mask = row_violations(batch, spec)
        if mask.any():
            kept, rejected = split_partial(batch, mask)
            kept_result = validate_batch(kept, spec, spec_dir)
            if kept_result.passed:
                reasons = row_violation_reasons(batch, spec)
                return Screening("partial", result, kept, rejected, kept_result, reasons)
    return Screening(spec.quality.policy, result)
