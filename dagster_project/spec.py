"""Stream specs: one declarative YAML file per stream, validated into typed objects.

A spec is the single source of truth for a stream: topics, feature schema, label, estimator,
batching and policies. The Dagster factory turns each spec into its assets, checks and sensors.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import typing
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from dagster_project.learning.estimator_table import (
    DEFAULT_ESTIMATORS,
    DEFAULTS_CHANGED_ON,
    ESTIMATORS,
    RECOMMENDED_CANDIDATES,
    SCALE_OUT_ESTIMATORS,
    WINDOWED_ESTIMATORS,
    former_default_of,
)

DAY_S = 86_400
WEEK_S = 7 * DAY_S
YEAR_S = 365 * DAY_S
# A worker the limits are sized for: memory a setting may ask of one run, with room to spare.
WORKER_GIB = 24
# The most rows one batch may hold (batch.rows, batch.max_rows): a run holds its batch in memory.
BATCH_ROWS_MAX = 20_000_000


def at_most(limit: float, why: str, fix: str, **field: Any) -> Any:
    """A `Field` with an upper bound whose error names the limit, why it is there and the fix (a value
    far past any real need loaded, then failed much later: memory, overflow, a sensor that never fires)."""
    return Field(le=limit, json_schema_extra={"at_most": {"why": why, "fix": fix}}, **field)


FeatureType = Literal["float", "int", "bool", "category"]
Task = Literal["classification", "regression"]
# Validated against the estimator table (learning/estimator_table.py), the one list of names.
EstimatorName = Literal[tuple(ESTIMATORS)]  # type: ignore[valid-type]

# The metrics each task's models are scored by (learning/prequential.py): what promotion.metric may name.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "roc_auc", "log_loss"),
    "regression": ("mae", "rmse"),
}
MetricName = Literal[tuple(m for metrics in TASK_METRICS.values() for m in metrics)]  # type: ignore[valid-type]

STREAM_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
# Columns the data-quality frame adds next to the features (see dagster_project/quality.py).
RESERVED_COLUMNS = ("label", "event_id", "partition", "offset")
# Top-level fields of an event (`{"id": ..., "ts": ..., "features": {...}, "label": ...}`) that can never
# hold its time, so an `event_time.field` naming one is refused; `ts` is the default, and `id` may be a number.
NOT_AN_EVENT_TIME = {
    "features": "is the event's object of feature values",
    "label": "is the truth the model predicts, which an event being scored and a /predict row do not carry",
}


class _Strict(BaseModel):
    # No NaN or infinity anywhere a number is declared: a bound or window of inf means nothing, and
    # the data-quality suite's JSON round trip turned them into nulls that failed every batch.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# The most hash buckets a feature may have: one one-hot column each, and bucket indices must stay
# exact in the float32 model input (integers up to 2**24 are).
MAX_BUCKETS = 65_536


class FeatureSpec(_Strict):
    """One input feature: its JSON type and optional value range.

    ``type: category`` features take strings (or integers) and are one-hot encoded inside the
    exported model (dagster_project/ingest/categories.py). Exactly one of:

    - ``categories: [...]``, a fixed vocabulary (all strings or all integers). A value outside it
      is *unseen*: ``unseen: zero`` (the default) encodes it as all-zero columns, ``unseen: other``
      as one extra "other" column. Unseen values never fail a row; they are counted, and
      ``quality.max_unseen_category_share`` bounds their share per batch.
    - ``buckets: N``, for open-ended values (ids, zip codes): CRC-32 of the value's UTF-8 text
      (an integer as its decimal text) modulo N, one column per bucket; nothing is unseen, so
      ``unseen: other`` does nothing there (`StreamSpec.notes` says so).
    """

    name: str = Field(min_length=1)
    type: FeatureType = "float"
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    categories: list[StrictStr | StrictInt] | None = None
    buckets: int | None = None
    unseen: Literal["zero", "other"] = "zero"

    @cached_property
    def category_index(self) -> dict[str | int, int]:
        """Vocabulary value -> its position (built once; encoding looks every value up here)."""
        return {c: i for i, c in enumerate(self.categories or [])}

    @model_validator(mode="after")
    def _category_encoding(self) -> FeatureSpec:
        where = f"feature {self.name!r}"
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"{where} has min {self.min} above max {self.max}: swap them")
        if self.type != "category":
            if self.categories is not None or self.buckets is not None:
                raise ValueError(f"{where} has categories/buckets but type {self.type!r}: set type: category")
            return self
        if self.min is not None or self.max is not None:
            raise ValueError(f"{where} is a category: remove min/max (they apply to numeric features)")
        if (self.categories is None) == (self.buckets is None):
            raise ValueError(
                f"{where} is a category: give exactly one of categories: [...] (a fixed vocabulary) "
                "or buckets: N (hashing, for open-ended values)"
            )
        if self.buckets is not None:
            if not 2 <= self.buckets <= MAX_BUCKETS:
                raise ValueError(f"{where}: buckets must be between 2 and {MAX_BUCKETS}, got {self.buckets}")
            return self
        categories = self.categories or []
        if not categories:
            raise ValueError(f"{where}: categories is empty; list the known values, or use buckets: N")
        kinds = {type(c) for c in categories}
        if len(kinds) > 1:
            raise ValueError(
                f"{where}: categories must be all strings or all integers, got {sorted(k.__name__ for k in kinds)}; "
                "quote the numbers to make them strings"
            )
        counts = Counter(categories)  # list.count per value was quadratic: 70,000 values took over a minute
        duplicates = sorted({str(c) for c, n in counts.items() if n > 1})
        if duplicates:
            more = f" and {len(duplicates) - 10} more" if len(duplicates) > 10 else ""
            raise ValueError(f"{where}: duplicate categories {duplicates[:10]}{more}; list each value once")
        return self


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """`60s`, `500ms`, `5m`, `1h`, `1d` or a plain number of seconds, as seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{value!r} is not a duration: write e.g. 60s, 500ms, 5m, 1h, 1d or a number of seconds")
    return float(match.group(1)) * _DURATION_SECONDS[match.group(2)]


Duration = Annotated[float, BeforeValidator(parse_duration)]
Aggregation = Literal["count", "sum", "mean", "min", "max", "std"]


# How messages name an event-time unit, so that every refusal of a time says the same thing.
EPOCH_UNITS = {"s": "seconds", "ms": "milliseconds"}


class EventTimeSpec(_Strict):
    """Where an event's time is and how late it may arrive (dagster_project/features/).

    ``field`` is a top-level field of the event, next to ``id`` (default ``ts``). Its value is epoch
    time as a number (``unit: s`` seconds, the default, or ``ms``) or an ISO-8601 string with a UTC
    offset (``2026-01-01T12:00:00Z``; not allowed in ``ts``, which the event contract keeps numeric).
    An event more than ``lateness`` older than the newest event time seen on its partition is late:
    it goes to the DLQ with the reason.

    An event more than ``max_ahead`` later than its Kafka record's timestamp (the producer's clock,
    or the broker's with LogAppendTime) is refused too: accepted, one event from a wrong clock holds
    the partition's watermark as far in the future as it is, and every other event of the partition
    is late until real time catches up. The default, five minutes, bounds that harm while leaving
    room for ordinary clock skew; with Apache Kafka's own bound (one hour,
    ``message.timestamp.after.max.ms``) one event 59 minutes ahead sent half a probe's good events
    to the DLQ. ``null`` turns the check off. Files given to ``streamfit check --sample`` have no record
    timestamps: their events are checked against the time the check runs.
    """

    field: str = "ts"
    unit: Literal["s", "ms"] = "s"
    lateness: Duration = at_most(
        YEAR_S,
        "a year: each key's history is kept for lateness plus the longest derived window behind its "
        "partition's newest event (in memory and in every version's checkpoint), and a larger value is "
        "usually a unit mistake (ms for s: 7 days written in ms reads as 19 years)",
        "give seconds or a unit (2h, 7d), at most 365d",
        default=0.0,
        ge=0,
    )
    max_ahead: Duration | None = at_most(
        DAY_S,
        "a day: one event from a clock that far ahead holds its partition's watermark there, and every "
        "other event of the partition is late (dead-lettered) until real time catches up; Kafka's own "
        "bound is an hour",
        "give seconds or a unit (5m, 1h), at most 1d; null turns the check off",
        default=300.0,
        gt=0,
    )


class DerivedFeatureSpec(_Strict):
    """A per-key rolling aggregate over an event-time window, computed by Streamfit.

    For an event at time t with key k (the value of field ``by``), the feature aggregates ``of``
    over the *earlier* events of k on the same partition with time in ``[t - window, t)``: the
    current event is never in its own window (its values are model inputs already, and a window
    that never holds the row it predicts cannot leak that row's label). ``count`` needs no ``of``.
    An empty window gives count 0 and sum 0, and ``default`` for mean, min, max and std (population
    standard deviation, so a single earlier event gives 0).
    """

    name: str = Field(min_length=1)
    of: str | None = None
    by: str = Field(min_length=1)
    agg: Aggregation
    window: Duration = at_most(
        YEAR_S,
        "a year: the state holds every event of a key within the window (in memory and in every "
        "version's checkpoint), and a window is still filling (drift checks leave the feature out) "
        "until a window of event time has passed; a larger value is usually a unit mistake (ms for s)",
        "give seconds or a unit (90s, 1h, 30d), at most 365d",
        gt=0,
    )
    default: float = 0.0

    @model_validator(mode="after")
    def _of_given(self) -> DerivedFeatureSpec:
        if self.of is None and self.agg != "count":
            raise ValueError(f"derived feature {self.name!r}: agg {self.agg} needs of: <a numeric feature>")
        return self


class FeatureStateSpec(_Strict):
    """Bounds of the derived-feature state (per partition and ``by`` field).

    Keys whose newest event left the window (``window + lateness`` behind the partition's newest
    event time) are dropped; at ``max_keys`` a new key evicts the least recently seen one, counted
    as ``evicted_keys`` in the version's meta.json and logged.
    """

    max_keys: int = at_most(
        10_000_000,
        "each key holds at least ~0.6 KB (its history and index, measured with one event in its window): "
        "10,000,000 keys is ~6 GB per partition and `by` field, most of a "
        f"{WORKER_GIB} GiB worker",
        "lower it; keys past it evict the least recently seen (counted as evicted_keys)",
        default=100_000,
        ge=1,
    )


def label_key(value: Any) -> tuple[str, Any]:
    """A label or class as labels are matched: True kept apart from 1 (Python treats them as equal),
    1.0 matching class 1; an integer beyond a float's range matches only itself."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        try:
            return ("number", float(value))
        except OverflowError:
            return ("number", value)
    return (type(value).__name__, value)


class LabelSpec(_Strict):
    """The target. Classification labels are mapped to class indices in the order given.

    ``name`` is the target's display name, for people reading the spec: Streamfit never reads it.
    Every event carries its label under its top-level ``label`` key whatever ``name`` says (the
    event contract: ``id``, ``ts``, ``features``, optional ``label``), so a field named after
    ``name`` is not the label. ``classes`` applies to classification only.
    """

    name: str = "label"
    classes: list[StrictBool | StrictInt | StrictFloat | StrictStr] | None = None

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, classes: list[Any] | None) -> list[Any] | None:
        if not classes:
            return classes  # none listed: a classification stream says it needs them (StreamSpec)
        if len(classes) < 2:
            raise ValueError(f"label.classes {classes} needs at least two classes for a classifier to tell apart")
        keys = [label_key(c) for c in classes]
        counts = Counter(keys)
        repeated = sorted({str(c) for c, k in zip(classes, keys, strict=True) if counts[k] > 1})
        if repeated:
            raise ValueError(f"label.classes repeats {repeated}: list each class once")
        return classes


class ScaleOutSpec(_Strict):
    """Fit each partition group's share of a batch in its own Dagster step and combine the models.

    Partitions are split round-robin into ``workers`` groups (partition p goes to group
    p % workers). A batch gets fewer workers when it has fewer non-empty partitions than
    ``workers``, or fewer than ``min_rows_per_worker`` rows per worker; with one, it is fitted
    sequentially as if scale-out were off. ``workers: 1`` (the default) is off.
    """

    workers: int = at_most(
        256,
        "each worker is a Dagster step in its own process, and a batch uses no more workers than it has "
        "non-empty partitions: more workers than the run's machine has cores add processes, not speed",
        "lower it to the cores the run gets (or the partitions, if fewer)",
        default=1,
        ge=1,
    )
    min_rows_per_worker: int = Field(default=5000, ge=1)


# A windowed estimator's window (learning/windowed.py): the newest offsets it has learned, read back
# from Kafka at each refit. The cap bounds a refit's read, memory (~8 bytes a value) and fit time.
WINDOW_ROWS_DEFAULT = 10_000
WINDOW_ROWS_MAX = 100_000


class ModelSpec(_Strict):
    """Which estimator learns, with which scikit-learn parameters; or several `candidates` that
    compete through the promotion gate (the first serves until another wins)."""

    estimator: EstimatorName = DEFAULT_ESTIMATORS["classification"]  # regression: StreamSpec fills its own
    params: dict[str, Any] = Field(default_factory=dict)
    scale: bool = True
    seed: int = 0
    scale_out: ScaleOutSpec = ScaleOutSpec()
    name: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]{0,62}$")  # a candidate's name
    # Windowed estimators only: refit on the newest `window_rows` learned offsets every
    # `refit_every` batches (and at once in a drift retrain).
    window_rows: int | None = Field(default=None, ge=10, le=WINDOW_ROWS_MAX)
    refit_every: int | None = at_most(
        10_000,
        "between refits a windowed model learns nothing (it serves its last refit): 10,000 batches is over a "
        "day at the fastest run cycle (~10 s a batch) and days to weeks on a quieter one: a model that looks stopped",
        "lower it; to refit less often on a busy stream, raise batch.rows (fewer, larger batches)",
        default=None,
        ge=1,
    )
    # Incremental estimators only: partial_fit passes over each micro-batch (None: the estimator
    # table's default, 8 for sgd_*, else 1; adaptive_sgd_* set their own, `params.passes_options`).
    passes: int | None = Field(default=None, ge=1, le=64)
    # While learning, a value further than this many learned standard deviations from its feature's
    # learned mean is clipped to that bound (scaled models), and so is a regressor's label against the
    # labels it learned, so one outlier cannot inflate the scaler's variance and SGD's steps (scoring
    # sees every value as sent). null: off.
    clip_sigmas: float | None = Field(default=10.0, gt=0)
    candidates: list[ModelSpec] = Field(default_factory=list)

    @property
    def label(self) -> str:
        """The family's name in decisions and metadata: `name`, else the estimator."""
        return self.name or self.estimator

    @property
    def windowed(self) -> bool:
        return self.estimator in WINDOWED_ESTIMATORS

    @property
    def window_cap(self) -> int:
        """The most rows this estimator's window may hold (the table's cap, else `WINDOW_ROWS_MAX`)."""
        return ESTIMATORS[self.estimator].max_window_rows or WINDOW_ROWS_MAX

    @property
    def window(self) -> int:
        return self.window_rows or min(WINDOW_ROWS_DEFAULT, self.window_cap)

    @property
    def refit_period(self) -> int:
        return self.refit_every or 1

    @property
    def passes_per_batch(self) -> int:
        return self.passes or ESTIMATORS[self.estimator].passes

    @property
    def families(self) -> list[ModelSpec]:
        """The models that learn the stream: the candidates, or this one alone."""
        return list(self.candidates) or [self]

    @model_validator(mode="after")
    def _window_fits_the_estimator(self) -> ModelSpec:
        given = [key for key in ("window_rows", "refit_every") if getattr(self, key) is not None]
        if given and not self.windowed:
            raise ValueError(
                f"model.{given[0]} applies to windowed estimators ({', '.join(sorted(WINDOWED_ESTIMATORS))}); "
                f"{self.estimator!r} learns incrementally: remove it"
            )
        if self.window_rows is not None and self.window_rows > self.window_cap:
            raise ValueError(
                f"model.window_rows {self.window_rows:,} is above {self.estimator!r}'s cap of {self.window_cap:,} rows "
                "(its ONNX graph holds every row of its window and scores each row against all of them): "
                f"set window_rows <= {self.window_cap:,}"
            )
        if self.passes is not None and ESTIMATORS[self.estimator].own_passes:
            former = former_default_of(self.estimator)
            written_for = (
                f"; a spec from before {DEFAULTS_CHANGED_ON} that names no estimator meant {former}, the default "
                f"then: `model: {{estimator: {former}, passes: {self.passes}}}` keeps it (and its learned model)"
                if former
                else ""
            )
            raise ValueError(
                f"model.passes does not apply to {self.estimator!r}, which learns each batch at several passes "
                f"and serves the best: set model.params.passes_options (e.g. [8, 2]) instead, or remove it{written_for}"
            )
        if self.passes is not None and self.windowed:
            raise ValueError(
                f"model.passes applies to incrementally learning estimators; {self.estimator!r} is refit on its "
                "window (set window_rows / refit_every instead): remove it"
            )
        return self

    @model_validator(mode="after")
    def _candidates_inherit_clip_sigmas(self) -> ModelSpec:
        """`model.clip_sigmas` beside `candidates` applies to every family that sets none of its own
        (each family learns with its own setting: ignored, the top-level one misled)."""
        if self.candidates and "clip_sigmas" in self.model_fields_set:
            inherited = [
                f if "clip_sigmas" in f.model_fields_set else f.model_copy(update={"clip_sigmas": self.clip_sigmas})
                for f in self.candidates
            ]
            object.__setattr__(self, "candidates", inherited)  # frozen: set once, while validating
        return self

    @model_validator(mode="after")
    def _candidates_are_families(self) -> ModelSpec:
        if not self.candidates:
            return self
        # A dumped spec holds every field: the defaults mean "not given" here.
        if self.params or self.estimator != ModelSpec.model_fields["estimator"].default:
            raise ValueError(
                "model.candidates replaces model.estimator and model.params: declare every family under candidates"
            )
        if len(self.candidates) < 2:
            raise ValueError("model.candidates needs at least two families; with one, use model.estimator")
        labels = [c.label for c in self.candidates]
        if len(set(labels)) != len(labels):
            raise ValueError(f"model.candidates names repeat ({labels}): give each a distinct name")
        if any(c.candidates for c in self.candidates):
            raise ValueError("a candidate cannot declare candidates of its own")
        if self.scale_out.workers > 1 or any(c.scale_out.workers > 1 for c in self.candidates):
            raise ValueError("model.candidates does not support scale_out yet: set scale_out.workers to 1")
        return self

    @model_validator(mode="after")
    def _scale_out_can_combine(self) -> ModelSpec:
        if self.scale_out.workers <= 1:
            return self
        supported = f"scale-out supports {', '.join(SCALE_OUT_ESTIMATORS)}"
        if ESTIMATORS[self.estimator].combiner is None:
            raise ValueError(
                f"model.scale_out.workers is {self.scale_out.workers} but {self.estimator!r} cannot be combined "
                f"across workers; {supported}"
            )
        if self.estimator.startswith("mlp_"):
            solver = self.params.get("solver", "adam")
            if solver not in ("adam", "sgd"):
                raise ValueError(
                    f"model.scale_out needs an incremental MLP solver ('adam' or 'sgd'), got {solver!r}; {supported}"
                )
            if not isinstance(self.params.get("random_state", self.seed), int):
                raise ValueError(
                    "model.scale_out with an MLP needs an integer random_state (or none, to use model.seed): "
                    "workers of a new model must start from the same initial weights to be averaged"
                )
        return self


class BatchSpec(_Strict):
    """When the sensor launches a training run, and how large a batch may be.

    ``early_cut`` (by default on exactly when the stream has a label join that checkpoints often
    enough, below; `StreamSpec` resolves it) lets the sensor cut the waiting batch short when the served
    champion's live errors on it (the label join's checkpoints) rose over the batch before and stopped
    climbing, and the drift detector would retrain on the short batch: a concept change is then learned
    a partial batch sooner (`monitors.early_cut`; benchmarks/README.md parts 9-17). It needs the label
    join (a ``labels:`` section and `streamfit labels join <stream>` running) checkpointing at least four
    times a batch: ``labels.flush_interval_s`` at most a quarter of ``max_wait_s`` is checked here; at
    a rate of r rows/s it must also be at most ``rows / (4 r)`` seconds, else the rule sees too few
    checkpoints and never cuts.
    """

    rows: int = at_most(
        BATCH_ROWS_MAX,
        f"a run holds its batch in memory, ~0.5 KiB a row: {BATCH_ROWS_MAX:,} rows is ~10 GiB, most of a "
        f"{WORKER_GIB} GiB worker beside the model",
        "lower it; past ~1,000,000 rows a batch adds latency, not throughput (see max_rows)",
        default=1000,
        ge=1,
    )
    # The cap bounds sustained throughput at max_rows per run cycle, whatever the data: runs of a stream
    # never overlap, and each pays a fixed ~10 s (sensor tick, run launch, in-run imports) on a quiet
    # 2-core machine and ~30 s on a loaded one. 100,000 capped a stream at ~3-10 k rows/s
    # (benchmarks/README.md, "Sustained load"); 1,000,000 leaves room for tens of thousands of events/s.
    # A run holds its batch in memory (~0.5 KiB a row for a handful of features): lower it for wide rows.
    max_rows: int = at_most(
        BATCH_ROWS_MAX,
        f"a run holds its batch in memory, ~0.5 KiB a row: {BATCH_ROWS_MAX:,} rows is ~10 GiB, most of a "
        f"{WORKER_GIB} GiB worker beside the model",
        "lower it (a backlog is learned in several runs; their fixed ~10 s each is small at millions of rows)",
        default=1_000_000,
        ge=1,
    )
    max_wait_s: float = at_most(
        WEEK_S,
        "a week: a stream waiting longer for a batch looks stopped, and a larger value is usually a unit "
        "mistake (ms for s)",
        "give seconds, at most 604800; to train less often on a busy stream raise batch.rows",
        default=30.0,
        gt=0,
    )
    sensor_interval_s: int = at_most(
        DAY_S,
        "a day: the sensor is the stream's only trigger, and batch.max_wait_s is honoured only at its ticks",
        "give seconds, at most 86400 (the default, 5, is what the daemon's 5 s tick allows)",
        default=5,
        ge=1,
    )
    # A training run still going after this long is presumed dead (its worker was killed) and is
    # failed by Dagster's run monitoring, then retried; far above a healthy run's seconds.
    max_run_seconds: int = at_most(
        DAY_S,
        "a day: a dead run holds the stream's turn (no run of it starts) until this passes, and a healthy "
        "run takes seconds to minutes",
        "give seconds, at most 86400",
        default=600,
        ge=10,
    )
    # A failing step of a training run is retried inside the run, with exponential backoff and
    # jitter (Dagster's RetryPolicy: waits of about 1, 3, 7 s by default), before the run fails and
    # the daemon's run retries (the outer layer, dagster.yaml) start it again.
    step_retries: int = at_most(
        10,
        "the backoff doubles each wait: the 10th waits ~2**10 x retry_delay_s (17 min at 1 s), past "
        "max_run_seconds' default, and the daemon's run retries follow anyway",
        "lower it; a step that fails 10 times in a row has a cause to fix",
        default=3,
        ge=0,
    )
    retry_delay_s: float = at_most(
        3600,
        "an hour: a step waits inside its run, which holds the stream's turn and is failed at max_run_seconds",
        "give seconds, at most 3600",
        default=1.0,
        ge=0,
    )
    # None: on when the spec has a `labels:` section with flush_interval_s <= max_wait_s / 4, else off
    # (benchmarks/README.md, Part 17 "Repeats"); StreamSpec writes the resolved value here.
    early_cut: bool | None = None

    @model_validator(mode="after")
    def _rows_within_cap(self) -> BatchSpec:
        if self.rows > self.max_rows:
            raise ValueError(f"batch.rows ({self.rows}) exceeds batch.max_rows ({self.max_rows})")
        return self


class ParitySpec(_Strict):
    """How closely onnxruntime must match scikit-learn before a version may be registered.

    Every output must satisfy ``|onnx - sklearn| <= atol * scale + rtol * |sklearn|``. For a regressor
    ``scale`` is the root mean square of scikit-learn's outputs on the batch (at most 10 times their median
    magnitude, so a few extreme rows do not set it), so ``atol`` is a fraction
    of the labels' scale and parity means as much on labels around 1e-9 as around 1e9; for a classifier
    (probabilities, decision scores) it is 1.
    """

    # A negative tolerance failed every export, and `streamfit check` blamed the estimator.
    atol: float = Field(default=1e-4, ge=0)
    rtol: float = Field(default=1e-4, ge=0)


class QualitySpec(_Strict):
    """Data-quality rules checked on every micro-batch before it may reach training.

    Rules always applied: the batch frame has exactly the expected columns, features and label are
    numeric and finite, values lie within each feature's ``min``/``max``, labels are class indices of
    ``label.classes``, and the row count lies within ``[min_rows, max_rows]``. For each category
    feature with a vocabulary, at most ``max_unseen_category_share`` of the rows may hold a value
    outside it. A batch whose every message was dead-lettered is not checked: the stream moves past
    it by itself (a pending offset reset the next version records), as no re-run could pass. One
    with valid rows, however few, is: below ``min_rows`` it fails as any rule does.

    Nulls: a feature that is not ``nullable`` may never be null (the event parser already
    dead-letters such messages; the check is a second line of defence). A ``nullable`` feature may be
    null in at most ``max_null_fraction`` of a batch's rows. The default 0.0 is deliberately strict:
    the estimators do not impute, so a NaN that reaches ``partial_fit`` fails the run. Raise it only
    when the model copes with missing values.

    ``mean_bounds``/``std_bounds`` bound a feature's batch mean and sample standard deviation
    (ddof=1, nulls ignored) as ``[low, high]``. ``suite_file`` is a Great Expectations suite JSON
    (relative to the spec directory, or absolute) whose expectations are added to the built-in
    ones. ``allow_partial`` lets rows that break per-row rules go to the DLQ while the rest trains;
    otherwise ``policy`` decides what a failing batch does: ``halt`` the stream or ``quarantine``
    the batch and move on.
    """

    policy: Literal["halt", "quarantine"] = "halt"
    min_rows: int = Field(default=1, ge=0)
    max_rows: int | None = at_most(
        BATCH_ROWS_MAX,
        f"no batch holds more than batch.max_rows, itself at most {BATCH_ROWS_MAX:,} (a run holds its batch in "
        "memory): a larger bound never fails a batch, so the rule checks nothing",
        "give the most rows a batch should hold (at most batch.max_rows), or remove it",
        default=None,
        ge=1,
    )
    max_null_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    unique_ids: bool = True
    mean_bounds: dict[str, tuple[float, float]] = Field(default_factory=dict)
    std_bounds: dict[str, tuple[float, float]] = Field(default_factory=dict)
    suite_file: str | None = None
    allow_partial: bool = False
    # Share of a batch's rows whose vocabulary category feature holds a value outside its
    # ``categories`` (per feature). 5 %: a new value now and then is normal; more is a changed
    # upstream (a renamed category, a new product line) that the vocabulary should learn about.
    max_unseen_category_share: float = Field(default=0.05, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _consistent(self) -> QualitySpec:
        if self.max_rows is not None and self.max_rows < self.min_rows:
            raise ValueError(f"quality.max_rows ({self.max_rows}) is below quality.min_rows ({self.min_rows})")
        for kind, bounds in (("mean_bounds", self.mean_bounds), ("std_bounds", self.std_bounds)):
            for name, (low, high) in bounds.items():
                if not low <= high:
                    raise ValueError(f"quality.{kind}[{name!r}]: low {low} exceeds high {high}")
        return self


class PromotionSpec(_Strict):
    """When a new version may replace the champion, decided in the run that trains it.

    Each batch's last rows (the *tail*: ``min(tail_rows, tail_fraction * batch rows)``, shared
    between partitions in proportion to their rows) are not learned by the new version: the
    candidate and the champion are scored on them side by side, and the version's learned offsets
    end where the tail begins, so the next batch learns the tail (exactly once). A tail smaller
    than ``min_rows`` is raised to it when the batch has ``2 * min_rows`` rows, else none is held
    out (the gate could not decide on it anyway; `registry.promotion.tail_split`).

    ``significance`` is the level of the one-sided paired test every champion decision needs on
    top of its margin to act against the newer model (promotion, a retrain's gate, rollback;
    `registry/significance.py`): a candidate beyond the margin is kept a candidate only when the
    champion is significantly better (otherwise it is promoted: non-inferiority), a champion is
    rolled back only when significantly worse than its predecessor. ``null`` or ``0`` turns the
    test off (the margin alone decides).

    ``margin`` (and ``drift.regression_margin``) is in the metric's units for accuracy, ROC AUC and
    log loss, and a fraction of the reference model's error for RMSE and MAE, which are in the
    label's units: 0.01 is 1 % of the champion's RMSE whether targets are near 0.001 or 1e6.
    """

    metric: MetricName | None = None  # None: by task
    margin: float = Field(default=0.01, ge=0)
    min_rows: int = Field(default=50, ge=1)
    tail_rows: int = Field(default=250, ge=0)
    tail_fraction: float = Field(default=0.2, ge=0, le=0.5)
    significance: float | None = Field(default=0.05, ge=0, lt=1)


class DriftSpec(_Strict):
    """Drift thresholds and the self-healing policy (monitors/drift.py, detectors.py, decisions.py).

    Two schedules per stream start RUNNING (cron in UTC): ``full_retrain_cron`` runs
    `<stream>_full_retrain`, a retrain on the last ``retrain_window_rows`` rows learned that must win
    the promotion gate like a drift retrain, and ``report_cron`` runs `<stream>_report_schedule`,
    which materializes the `<stream>/report` asset. No setting switches them off: stop them in the
    UI or with `dagster schedule stop <name>` (the instance keeps them stopped).
    """

    psi_moderate: float = Field(default=0.1, ge=0)
    psi_major: float = Field(default=0.25, gt=0)
    pvalue: float = Field(default=0.001, gt=0, lt=1)  # KS / chi-square, together with min_effect
    min_effect: float = Field(default=0.1, ge=0, le=1)  # KS statistic / total variation distance
    null_fraction_delta: float = Field(default=0.1, gt=0, le=1)
    min_rows: int = Field(default=50, ge=1)
    detector: Literal["page_hinkley", "adwin", "ddm"] = "adwin"  # fewest false alarms measured
    detector_params: dict[str, Any] = Field(default_factory=dict)
    hysteresis: int = Field(default=3, ge=1)  # consecutive drifted evaluations before a retrain
    cooldown_s: float = at_most(
        WEEK_S,
        "a week: a longer cooldown leaves a drifted model serving for that long, and a larger value is "
        "usually a unit mistake (ms for s)",
        "give seconds, at most 604800",
        default=900.0,
        ge=0,
    )
    regression_margin: float = Field(default=0.02, ge=0)
    rollback_window_s: float = at_most(
        WEEK_S,
        "a week: the previous champion is compared with live errors this long after a promotion, and a "
        "larger value is usually a unit mistake (ms for s)",
        "give seconds, at most 604800",
        default=3600.0,
        ge=0,
    )
    min_comparison_rows: int = Field(default=200, ge=1)
    interval_s: int = at_most(  # drift sensor cadence (the daemon ticks every 5 s at best)
        DAY_S,
        "a day: drift, rollbacks and retrains are decided only at this sensor's ticks",
        "give seconds, at most 86400",
        default=10,
        ge=1,
    )
    retrain_mode: Literal["fresh", "warm"] = "fresh"  # fresh model on a recent window, or from the champion
    retrain_window_rows: int = at_most(
        100_000_000,
        "a retrain holds ~130 bytes a row of its window (features, labels, positions, event ids; "
        f"README.md): 100,000,000 rows is ~12 GiB, half of a {WORKER_GIB} GiB worker, as the chunks' merge "
        "holds the features twice",
        "lower it to what the run worker's memory holds",
        default=5000,
        ge=1,
    )
    retrain_epochs: int = at_most(
        100,
        "each epoch is a full pass over the retrain window inside one run, which holds the stream's turn; "
        "past a few dozen passes over the same rows an incremental model fits that window, not the stream",
        "lower it (the default, 2, is what the benchmarks use)",
        default=2,
        ge=1,
    )
    full_retrain_cron: str = "0 3 * * *"  # the scheduled sliding-window retrain
    report_cron: str = "0 * * * *"

    @field_validator("full_retrain_cron", "report_cron")
    @classmethod
    def _cron_dagster_accepts(cls, cron: str) -> str:
        """Dagster refuses a bad cron when it builds the schedule, which failed the whole code location
        (every stream, not just this one) with a traceback, while `streamfit check` said ok."""
        if cron in (cls.model_fields["full_retrain_cron"].default, cls.model_fields["report_cron"].default):
            return cron  # the defaults: no need to import Dagster to load every spec
        from dagster._utils.schedules import is_valid_cron_string

        if not is_valid_cron_string(cron):
            raise ValueError(
                f"{cron!r} is not a cron schedule Dagster accepts: write five fields, minute hour day month "
                "weekday, in UTC (e.g. '0 3 * * *' for daily at 03:00)"
            )
        return cron

    @field_validator("detector_params")
    @classmethod
    def _detector_params_known(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """An unknown or non-numeric parameter raised in the drift sensor (and the Kafka sensor's early
        cut) at every tick, while `streamfit check` said ok."""
        detector = info.data.get("detector")
        if not params or detector is None:  # no detector: its own error says so
            return params
        from monitors.detectors import DEFAULT_PARAMS

        known = DEFAULT_PARAMS.get(detector, {})
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ValueError(
                f"unknown {detector} parameter(s) {unknown} (drift.detector is {detector!r}): "
                f"its parameters are {sorted(known)}"
            )
        for key, value in params.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{key} must be a finite number, got {value!r}")
        return params

    @model_validator(mode="after")
    def _psi_order(self) -> DriftSpec:
        if self.psi_moderate > self.psi_major:
            raise ValueError(f"drift.psi_moderate ({self.psi_moderate}) exceeds drift.psi_major ({self.psi_major})")
        return self


class LabelsSpec(_Strict):
    """The delayed-label join (dagster_project/labels/): how long a prediction waits for its label
    (and a label for its prediction), how many may wait at once, and how often joined aggregates
    are checkpointed to live_metrics.jsonl.

    An empty section, ``labels: {}``, is not the same as none: any ``labels:`` section turns
    ``batch.early_cut`` on by default when ``flush_interval_s`` is at most a quarter of
    ``batch.max_wait_s`` (the defaults, 5 s and 30 s, are), so with `streamfit labels join <stream>`
    running the sensor may cut a batch short after a concept change. Set ``batch.early_cut: false``
    to keep it off. Without the section `streamfit labels join` uses these defaults all the same.
    """

    join_window_s: float = at_most(
        YEAR_S,
        "a year: longer than any label delay the join is for, and a larger value is usually a unit mistake (ms for s)",
        "give seconds, at most 31536000",
        default=3600.0,
        gt=0,
    )
    max_pending: int = at_most(
        10_000_000,
        "each waiting prediction or label is held in memory (~250 bytes with short ids, measured) and "
        "written in every checkpoint: 10,000,000 is ~2.5 GB held and a checkpoint of that order every "
        "flush_interval_s",
        "lower it; past it the oldest waiting entries are evicted unmatched (counted)",
        default=100_000,
        ge=1,
    )
    flush_interval_s: float = at_most(
        DAY_S,
        "a day: live metrics, early cuts and rollbacks see joined labels only at its checkpoints",
        "give seconds, at most 86400",
        default=5.0,
        gt=0,
    )


def _reserved_why(reserved: list[str]) -> str:
    """Why a name in `RESERVED_COLUMNS` cannot be a feature's, and the fix."""
    return (
        f"are reserved: the data-quality table has columns {list(RESERVED_COLUMNS)} next to the features, and "
        f"a feature cannot share a column's name; rename the feature (e.g. {reserved[0]}_value)"
    )


class StreamSpec(_Strict):
    """Everything Streamfit knows about one stream."""

    name: str = Field(pattern=STREAM_NAME_PATTERN)
    description: str = ""
    task: Task = "classification"
    # The partitions Streamfit creates the stream's topics with (beyond 10,000 is a typo); an existing topic keeps
    # its own count: Streamfit never changes it, and says so (io.partition_mismatch).
    partitions: int = Field(default=1, ge=1, le=10_000)
    features: list[FeatureSpec]
    label: LabelSpec = LabelSpec()
    model: ModelSpec = ModelSpec()
    batch: BatchSpec = BatchSpec()
    parity: ParitySpec = ParitySpec()
    promotion: PromotionSpec = PromotionSpec()
    quality: QualitySpec = QualitySpec()
    drift: DriftSpec = DriftSpec()
    labels: LabelsSpec = LabelsSpec()
    event_time: EventTimeSpec | None = None
    derived: list[DerivedFeatureSpec] = Field(default_factory=list)
    feature_state: FeatureStateSpec = FeatureStateSpec()

    @model_validator(mode="before")
    @classmethod
    def _recommended_candidates(cls, data: Any) -> Any:
        """`model.candidates: recommended` names the benchmark's best candidate set for the task."""
        model = data.get("model") if isinstance(data, dict) else None
        if isinstance(model, dict) and isinstance(model.get("candidates"), str):
            if model["candidates"] != "recommended":
                raise ValueError(
                    f"model.candidates is {model['candidates']!r}: give a list of families, or 'recommended'"
                )
            task = data.get("task", "classification")
            if not isinstance(task, str) or task not in RECOMMENDED_CANDIDATES:
                return data  # a task that is none: `task`'s own error names it (a KeyError said only 'regresion')
            families = RECOMMENDED_CANDIDATES[task]
            data = {**data, "model": {**model, "candidates": [dict(f) for f in families]}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _default_estimator_for_the_task(cls, data: Any) -> Any:
        """A model or candidate that names no estimator gets its task's default (`DEFAULT_ESTIMATORS`):
        a regression spec must not fail on the classifier that `ModelSpec`'s field default names."""
        task = data.get("task", "classification") if isinstance(data, dict) else None
        model = data.get("model", {}) if isinstance(data, dict) else None
        # `task: [regression]` raised "unhashable type: 'list'" here; `task`'s own error names it.
        if not isinstance(task, str) or task not in DEFAULT_ESTIMATORS or task == "classification":
            return data
        if not isinstance(model, dict):
            return data
        default = DEFAULT_ESTIMATORS[task]
        candidates = model.get("candidates")
        if isinstance(candidates, list) and candidates:
            families = [{"estimator": default, **c} if isinstance(c, dict) else c for c in candidates]
            return {**data, "model": {**model, "candidates": families}}
        if candidates:  # 'recommended' (expanded by the task) or something the model refuses
            return data
        return {**data, "model": {"estimator": default, **model}}

    @field_validator("features")
    @classmethod
    def _unique_features(cls, features: list[FeatureSpec]) -> list[FeatureSpec]:
        names = [f.name for f in features]
        if not names:
            raise ValueError("a stream needs at least one feature")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate feature names in {names}")
        return features

    @model_validator(mode="after")
    def _quality_names_features(self) -> StreamSpec:
        names = set(self.feature_names)
        reserved = sorted(names & set(RESERVED_COLUMNS))
        if reserved:
            raise ValueError(f"feature name(s) {reserved} {_reserved_why(reserved)}")
        for kind in ("mean_bounds", "std_bounds"):
            unknown = sorted(set(getattr(self.quality, kind)) - names)
            if unknown:
                raise ValueError(
                    f"quality.{kind} names unknown feature(s) {unknown}; features are {self.feature_names}"
                )
        return self

    @model_validator(mode="after")
    def _categories_fit_the_model(self) -> StreamSpec:
        categorical = [f.name for f in self.features if f.type == "category"]
        if categorical and self.model.scale_out.workers > 1:
            raise ValueError(
                f"model.scale_out does not support category features yet ({categorical}): set "
                "model.scale_out.workers to 1"
            )
        return self

    @model_validator(mode="after")
    def _derived_features_resolve(self) -> StreamSpec:
        if not self.derived:
            return self
        if self.event_time is None:
            raise ValueError("derived features need event_time: {field: ts, lateness: 5s} (which field holds the time)")
        # Loaded, every event was refused at read time ("event time 'features' must be ..., got dict").
        # Refused only with derived features: without them nothing reads the time, and such a spec ran.
        if (why := NOT_AN_EVENT_TIME.get(self.event_time.field)) is not None:
            raise ValueError(
                f"event_time.field {self.event_time.field!r} {why}, never an event time: set event_time.field "
                "to the top-level field that holds the event's time (default ts)"
            )
        by_name = {f.name: f for f in self.features}
        names = [d.name for d in self.derived]
        clash = sorted((set(names) & set(by_name)) | {n for n, k in Counter(names).items() if k > 1})
        if clash:
            raise ValueError(
                f"derived feature name(s) {clash} repeat a feature or another derived feature: rename them"
            )
        reserved = sorted(set(names) & set(RESERVED_COLUMNS))
        if reserved:
            raise ValueError(f"derived feature name(s) {reserved} {_reserved_why(reserved)}")
        for d in self.derived:
            where = f"derived feature {d.name!r}"
            source = by_name.get(d.of) if d.of is not None else None
            if d.of is not None and (source is None or source.type == "category" or source.nullable):
                raise ValueError(
                    f"{where}: of: {d.of!r} must name a numeric, non-nullable feature of this stream; "
                    f"numeric features are {[f.name for f in self.features if f.type != 'category' and not f.nullable]}"
                )
            key = by_name.get(d.by)
            if key is not None and key.type not in ("category", "int"):
                raise ValueError(f"{where}: by: {d.by!r} is a {key.type} feature; a key must be a category or int")
            if d.by in ("id", "features", "label", self.event_time.field):
                raise ValueError(f"{where}: by: {d.by!r} is not a key; name a field such as device_id")
        return self

    @model_validator(mode="after")
    def _task_matches_estimator(self) -> StreamSpec:
        for family in self.model.families:
            estimator_task = ESTIMATORS[family.estimator].task
            if estimator_task != self.task:
                kind = "classifier" if estimator_task == "classification" else "regressor"
                raise ValueError(f"estimator {family.estimator!r} is a {kind} but task is {self.task}")
        if self.task == "classification" and not self.label.classes:
            raise ValueError("classification streams must list label.classes (partial_fit needs them up front)")
        # Another task's metric is never computed: every gate was deferred ("not computable on this batch
        # (e.g. a single class)"), so no version after the first was ever promoted.
        metrics = TASK_METRICS[self.task]
        if self.promotion.metric is not None and self.promotion.metric not in metrics:
            raise ValueError(
                f"promotion.metric {self.promotion.metric!r} is not measured on a {self.task} stream: "
                f"choose one of {list(metrics)}, or remove it for the task's default"
            )
        return self

    def notes(self) -> list[str]:
        """Settings that load but do nothing, or hold a trap, each with the fix. Refusing them would
        stop a spec that ran before from loading (and with it every stream of the code location):
        `streamfit check` prints them and the code location logs them (`factory.build_stream_definitions`)."""
        found = []
        if self.task == "regression" and self.label.classes is not None:
            found.append(
                f"label.classes {self.label.classes} does nothing on a regression stream (its label is any finite "
                "number): remove it, or set task: classification"
            )
        for f in self.features:
            if f.unseen != "zero" and (f.type != "category" or f.buckets is not None):
                kind = f"hashed (buckets: {f.buckets})" if f.buckets is not None else f"a {f.type} feature"
                found.append(
                    f"feature {f.name!r} is {kind}: no value of it is unseen, so unseen: {f.unseen} does nothing; "
                    "remove it, or list categories: [...]"
                )
        if self.derived and self.event_time is not None and self.event_time.field in self.feature_names:
            field = self.event_time.field
            found.append(
                f"event_time.field {field!r} is also a feature's name: Kafka events keep them apart (top level and "
                f"`features`), but a /predict row holds one {field!r}, so /predict refuses this stream's rows; "
                "rename the feature or set event_time.field to another field"
            )
        if self.task == "regression":
            for where, margin in (
                ("promotion.margin", self.promotion.margin),
                ("drift.regression_margin", self.drift.regression_margin),
            ):
                if margin >= 1:
                    found.append(
                        f"{where} {margin:g} is a fraction of the champion's error for RMSE and MAE ({margin:.0%}): "
                        "margins in label units were read as such before; 0.01 is 1 %"
                    )
        return found

    @model_validator(mode="after")
    def _early_cut_has_live_labels(self) -> StreamSpec:
        """The early cut reads the served champion's live errors: without the label join it reads nothing.

        Not stated (None): on exactly when the join checkpoints four times a batch, so a spec that never
        asked for it is never refused for it; the resolved value is written into `batch`, so a dumped
        spec (which holds every field, `labels` too) keeps it."""
        if self.batch.early_cut is None:
            joins = "labels" in self.model_fields_set and self.labels.flush_interval_s <= self.batch.max_wait_s / 4
            object.__setattr__(self, "batch", self.batch.model_copy(update={"early_cut": joins}))
            return self
        if not self.batch.early_cut:
            return self
        if "labels" not in self.model_fields_set:
            raise ValueError(
                "batch.early_cut needs the label join: add a labels: section (e.g. labels: {flush_interval_s: 1}) "
                f"and run `streamfit labels join {self.name}`, or set batch.early_cut: false"
            )
        quarter = self.batch.max_wait_s / 4
        if self.labels.flush_interval_s > quarter:
            raise ValueError(
                f"batch.early_cut needs label-join checkpoints at least four times a batch: labels.flush_interval_s "
                f"{self.labels.flush_interval_s:g} > batch.max_wait_s / 4 = {quarter:g}; lower flush_interval_s"
            )
        return self

    def for_family(self, family: ModelSpec) -> StreamSpec:
        """This spec with `family` as its model: what builds, fits and names one candidate."""
        seed = family.seed or self.model.seed  # a candidate's own seed, else the stream's
        return self.model_copy(update={"model": family.model_copy(update={"seed": seed})})

    @property
    def feature_names(self) -> list[str]:
        """The fields each event carries in its `features` object."""
        return [f.name for f in self.features]

    @cached_property
    def inputs(self) -> list[FeatureSpec]:
        """The model's input columns: the event's features, then the derived ones (floats)."""
        return [*self.features, *(FeatureSpec(name=d.name, type="float") for d in self.derived)]

    @property
    def input_names(self) -> list[str]:
        return [f.name for f in self.inputs]

    @property
    def events_topic(self) -> str:
        return f"{self.name}.events"

    @property
    def labels_topic(self) -> str:
        return f"{self.name}.labels"

    @property
    def dlq_topic(self) -> str:
        return f"{self.name}.dlq"

    @property
    def predictions_topic(self) -> str:
        return f"{self.name}.predictions"

    @property
    def trainer_group(self) -> str:
        return f"streamfit-{self.name}-trainer"


def load_spec(path: str | Path) -> StreamSpec:
    """Load and validate one spec file; errors name the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
        spec = StreamSpec.model_validate(raw)
    except ValidationError as exc:  # one line a field, with the keys allowed where a key is unknown
        raise ValueError(f"invalid stream spec {path}: {describe_validation_error(exc)}") from exc
    except Exception as exc:  # re-raised with the file's name so the fix is obvious
        raise ValueError(f"invalid stream spec {path}: {exc}") from exc
    return spec


_YAML_TRUE_FALSE = ("true", "false")


def yaml_boolean_words(text: str) -> list[str]:
    """The label classes a spec's YAML writes as YAML 1.1 boolean words (yes, no, on, off, unquoted), which
    load as True/False: `[yes, no]` became [True, False] and every event labelled "yes" was dead-lettered.
    Read from the text, as `true`/`false` written out (phishing's JSON booleans) are not a mistake."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    label = _yaml_value(root, "label")
    classes = _yaml_value(label, "classes")
    if not isinstance(classes, yaml.SequenceNode):
        return []
    return [
        node.value
        for node in classes.value
        if node.tag == "tag:yaml.org,2002:bool" and node.value.lower() not in _YAML_TRUE_FALSE
    ]


def _yaml_value(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    return next((value for name, value in node.value if name.value == key), None)


def describe_validation_error(exc: ValidationError) -> str:
    """Pydantic's errors as `field: problem` lines, a misspelt key answered with the closest allowed
    one (`batch.max_wait` -> `max_wait_s`) and the list it must come from, without pydantic's links."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(the file)"
        if error["type"] == "extra_forbidden":
            allowed = _fields_at(StreamSpec, error["loc"][:-1])
            near = difflib.get_close_matches(str(error["loc"][-1]), allowed, n=1, cutoff=0.5)
            hint = f"did you mean {near[0]!r}? " if near else ""
            lines.append(f"{where}: not a setting here; {hint}allowed: {', '.join(sorted(allowed))}")
        elif error["type"] == "less_than_equal" and (cap := _at_most_of(error["loc"])) is not None:
            limit = limit_text(error["ctx"]["le"])
            lines.append(f"{where}: {error.get('input')!r} is over its limit, {limit}: {cap['why']}; {cap['fix']}")
        else:
            got = error.get("input")
            shown = f" (got {got!r})" if got is not None and not isinstance(got, dict | list) else ""
            siblings = _fields_at(StreamSpec, error["loc"][:-1])
            if isinstance(got, bool) and error["type"] == "string_type":  # `categories: [NO, SE]` read NO as false
                shown += (
                    "; YAML reads unquoted yes, no, on and off as booleans: quote the value if you meant text ('NO')"
                )
            if isinstance(got, str) and got in siblings:  # `policy: allow_partial`: a setting of its own
                shown += f"; {got!r} is a setting of its own: `{'.'.join(map(str, error['loc'][:-1]))}.{got}: ...`"
            lines.append(f"{where}: {error['msg']}{shown}")
    return f"{len(lines)} problem{'s' if len(lines) > 1 else ''}:\n  " + "\n  ".join(lines)


def limit_text(limit: float) -> str:
    return f"{int(limit):,}" if float(limit).is_integer() else f"{limit:,}"


def _at_most_of(loc: tuple) -> dict[str, str] | None:
    """The `at_most` reason of the field at `loc`, if it has one."""
    owner = _model_at(StreamSpec, loc[:-1])
    field = owner.model_fields.get(str(loc[-1])) if owner is not None else None
    extra = field.json_schema_extra if field is not None else None
    return extra.get("at_most") if isinstance(extra, dict) else None  # type: ignore[return-value]


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel) and isinstance(part, str):
            field = current.model_fields.get(part)
            current = field.annotation if field is not None else None
        current = section_model(current)
        if current is None:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names of the model found at `loc` inside `model` (list indices and dict keys passed
    through); none when the path does not lead to a model."""
    found = _model_at(model, loc)
    return list(found.model_fields) if found is not None else []


def section_model(annotation: Any) -> Any:
    """The BaseModel inside an annotation (itself, or in Optional/list/dict/Union), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = section_model(arg)
        if found is not None:
            return found
    return None


def specs_dir() -> Path:
    """Where stream specs live: $STREAMFIT_STREAMS, else ./streams next to the project."""
    configured = os.environ.get("STREAMFIT_STREAMS")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parent.parent / "streams"


def spec_paths(directory: Path) -> list[Path]:
    """The spec files in a directory (`*.yaml`, `*.yml`), in name order, dotfiles left out: an editor's
    lock or backup (Emacs's dangling `.#synthetic.yaml`) counted as a broken spec and raised an alert."""
    return sorted(path for path in directory.glob("*.y*ml") if not path.name.startswith("."))


def load_specs(directory: str | Path | None = None) -> list[StreamSpec]:
    """All specs in a directory, sorted by name; stream names must be unique."""
    directory = Path(directory) if directory else specs_dir()
    if not directory.is_dir():
        raise FileNotFoundError(f"no stream spec directory at {directory}: set STREAMFIT_STREAMS to one")
    specs = [load_spec(p) for p in spec_paths(directory)]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate stream names in {directory}: {names}")
    return sorted(specs, key=lambda s: s.name)


@dataclass(frozen=True)
class BrokenSpec:
    """A spec file that does not load, with the reason (it names the file and the fix)."""

    path: Path
    error: str
    fix: str = ""  # what to do, when it is not fixing the file until `streamfit check` passes


def load_specs_isolated(directory: str | Path | None = None) -> tuple[list[StreamSpec], list[BrokenSpec]]:
    """The specs that load, sorted by name, and the files that do not.

    The code location, the exporter and per-stream commands use this: with one team's 10-30 streams
    in one directory, one broken file stopped every stream's sensors and metrics. Two files declaring
    the same stream are both broken: which one to train is not a guess to make."""
    loaded, broken = load_spec_files_isolated(directory)
    return [spec for _path, spec in loaded], broken


def load_spec_files_isolated(
    directory: str | Path | None = None,
) -> tuple[list[tuple[Path, StreamSpec]], list[BrokenSpec]]:
    """`load_specs_isolated` with each spec's file (the code location names it when the stream's
    definitions do not build)."""
    directory = Path(directory) if directory else specs_dir()
    if not directory.is_dir():
        raise FileNotFoundError(f"no stream spec directory at {directory}: set STREAMFIT_STREAMS to one")
    loaded: list[tuple[Path, StreamSpec]] = []
    broken: list[BrokenSpec] = []
    for path in spec_paths(directory):
        try:
            loaded.append((path, load_spec(path)))
        except ValueError as exc:
            broken.append(BrokenSpec(path, str(exc)))
    files: dict[str, list[Path]] = {}
    for path, spec in loaded:
        files.setdefault(spec.name, []).append(path)
    specs = []
    for path, spec in loaded:
        others = [str(p) for p in files[spec.name] if p != path]
        if others:
            broken.append(BrokenSpec(path, f"stream {spec.name!r} is also declared in {', '.join(others)}: rename one"))
        else:
            specs.append((path, spec))
    return sorted(specs, key=lambda loaded: loaded[1].name), broken


def get_spec(name: str, directory: str | Path | None = None) -> StreamSpec:
    """The spec called `name`, with an error listing the known streams (and the files that do not load)."""
    loaded, broken = load_specs_isolated(directory)
    specs = {s.name: s for s in loaded}
    if name not in specs:
        unloadable = "".join(f"; {b.path} does not load: {b.error}" for b in broken)
        raise KeyError(f"unknown stream {name!r}; known streams: {sorted(specs)}{unloadable}")
    return specs[name]
