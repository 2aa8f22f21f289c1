"""Concept-drift detectors on a metric series, wrapping river's change detectors.

The series is an error signal where *up is bad*: per-row 0/1 errors, per-batch prequential error
rates (1 - accuracy), or a regression error. Detectors: ``page_hinkley`` (river.drift.PageHinkley),
``adwin`` (river.drift.ADWIN) and ``ddm`` (river.drift.binary.DDM, 0/1 input only).

State: replay, not pickled detector internals. The per-batch prequential metrics a drift sensor
needs are stored durably in each version's meta.json, so the sensor rebuilds the detector by
replaying the stored series (`detect_changes`, `detect_batch_change`). That is deterministic (same
series, same answer), survives restarts and river upgrades that change internals, and works for
ADWIN, whose state lives in river's Rust extension and cannot be serialized. Within one process (the
code server evaluates every tick) a detector that read a series is kept (`resume`), so the next
tick feeds it only the batches added since; any other series is replayed. `ChangeDetector.to_json`
and `from_json` follow the same rule: the JSON holds the detector name, its parameters and the
values seen, and `from_json` replays them.

Per-batch rates: a per-batch error rate is a very different scale from a per-row 0/1 error
(a batch of 1,000 rows at 10 % error has a rate standard deviation near 0.01, a single row 0.3),
and Page-Hinkley's threshold is in the units of the series. The defaults here are calibrated for
per-row 0/1 errors, so per-batch error rates with their row counts are expanded into a per-row
0/1 series (`expand_batch_errors`) and the detection is mapped back to the batch it fell in
(`detect_batch_change`). Within a batch the order of errors is unknown; the expansion spreads
them evenly, which is deterministic.

Choice and cost: ADWIN is the recommended detector (`DriftSpec.detector` defaults to it): on
stationary 10 % error streams it raised no false alarm in 20 runs of 50,000 rows and detected a
jump to 50 % within 23-87 rows; Page-Hinkley needed 91-146 rows for that jump and raised 5 false
alarms over the same 1,000,000 stationary rows. Replay costs about 1.5 us per row (Page-Hinkley)
and 1.1 us (ADWIN), so the sensor should replay the series since the champion's promotion or the
last action, not the whole history.

Direction: ``direction="up"`` (default) reports only increases of the series (degradation);
``"both"`` reports any change. Page-Hinkley gets ``mode="up"``/``"both"``; ADWIN detects both ways
and an "up" detector drops decreases (the mean of the window ADWIN kept after the cut against the
mean of the part it dropped); DDM only ever detects increases.

river quirks (0.26.1): ``update`` returns None; the verdict is the ``drift_detected`` property.
After a detection, every river detector resets itself completely on the *next* update (ADWIN
discards even the post-change window it just kept, unlike the original ADWIN). Page-Hinkley's
mean is the plain cumulative mean (``alpha`` only fades the cumulative deviations). ADWIN only
checks for a cut every ``clock`` (32) values, so its delays come in steps of 32, and its
``width`` is a float. DDM signals on the first error after a run of more than ``warm_start``
error-free values (its minimum standard deviation is then 0) and has by far the highest false
alarm rate here (see tests/monitors/test_detectors.py for measured numbers).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    # river's defaults except alpha=1 (the classic test): with river's alpha < 1 the cumulative
    # deviation fades but its running minimum does not, so false alarms grow with stream length
    # (measured: 19 vs 5 over 20 stationary runs of 50,000 rows at 10 % error, same delays).
    "page_hinkley": {"min_instances": 30, "delta": 0.005, "threshold": 50.0, "alpha": 1.0},
    "adwin": {"delta": 0.002, "clock": 32, "max_buckets": 5, "min_window_length": 5, "grace_period": 10},
    "ddm": {"warm_start": 30, "warning_threshold": 2.0, "drift_threshold": 3.0},
}
DETECTORS = tuple(DEFAULT_PARAMS)
DIRECTIONS = ("up", "both")


class ChangeDetector:
    """One change detector: ``update(value) -> bool`` (True when a change is detected at this value).

    `params` override `DEFAULT_PARAMS[name]`; unknown parameters raise. After a detection the
    detector starts afresh (river's behaviour), so later changes are detected again.
    """

    def __init__(
        self, name: str = "page_hinkley", direction: str = "up", keep_values: bool = True, **params: Any
    ) -> None:
        if name not in DEFAULT_PARAMS:
            raise ValueError(f"unknown detector {name!r}; choose one of {list(DETECTORS)}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        unknown = set(params) - set(DEFAULT_PARAMS[name])
        if unknown:
            hint = " (use direction= instead of mode=)" if "mode" in unknown else ""
            raise ValueError(
                f"unknown {name} parameters {sorted(unknown)}{hint}; known: {sorted(DEFAULT_PARAMS[name])}"
            )
        if name == "ddm" and direction != "up":
            raise ValueError("ddm only detects increases of an error rate; use direction='up'")
        self.name = name
        self.direction = direction
        self.params = {**DEFAULT_PARAMS[name], **params}
        self._detector = self._build()
        self._values: list[float] | None = [] if keep_values else None  # `state` needs them, detecting does not
        self._seen = 0
        self._since_reset = 0  # values fed to the river detector since it last started afresh
        self._sum_since_reset = 0.0
        self.detections: list[int] = []

    def _build(self) -> Any:
        # Imported here: river.drift pulls in scikit-learn (~1.4 s), and every Dagster run worker
        # imports this module with the definitions before it can start (freshness).
        from river.drift import ADWIN, PageHinkley
        from river.drift.binary import DDM

        if self.name == "page_hinkley":
            return PageHinkley(mode="up" if self.direction == "up" else "both", **self.params)
        if self.name == "adwin":
            return ADWIN(**self.params)
        return DDM(**self.params)

    @property
    def n(self) -> int:
        """How many values have been seen."""
        return self._seen

    def update(self, value: float) -> bool:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"detector input must be finite, got {value}")
        if self.name == "ddm" and value not in (0.0, 1.0):
            raise ValueError(f"ddm takes 0/1 errors, got {value}")
        if self._detector.drift_detected:  # river resets on this update; mirror it
            self._since_reset, self._sum_since_reset = 0, 0.0
        self._detector.update(value)
        if self._values is not None:
            self._values.append(value)
        self._seen += 1
        self._since_reset += 1
        self._sum_since_reset += value
        detected = bool(self._detector.drift_detected)
        if detected and self.name == "adwin" and self.direction == "up":
            detected = self._adwin_went_up()
        if detected:
            self.detections.append(self._seen - 1)
        return detected

    def _adwin_went_up(self) -> bool:
        """After a cut ADWIN keeps the recent window; the change is an increase if its mean is higher."""
        kept = int(self._detector.width)
        dropped = self._since_reset - kept
        if dropped <= 0 or kept <= 0:
            return True  # cannot tell; report it rather than hide it
        kept_mean = float(self._detector.estimation)
        dropped_mean = (self._sum_since_reset - kept_mean * kept) / dropped
        return kept_mean > dropped_mean

    def state(self) -> dict[str, Any]:
        """JSON-serializable state: name, direction, parameters and the values seen (replayed on load)."""
        if self._values is None:
            raise ValueError("this detector was built with keep_values=False: it has no values to save")
        return {
            "detector": self.name,
            "direction": self.direction,
            "params": dict(self.params),
            "values": list(self._values),
        }

    def to_json(self) -> str:
        return json.dumps(self.state())

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ChangeDetector:
        detector = cls(state["detector"], state.get("direction", "up"), **state.get("params", {}))
        for value in state.get("values", []):
            detector.update(value)
        return detector

    @classmethod
    def from_json(cls, text: str) -> ChangeDetector:
        return cls.from_state(json.loads(text))


def detect_changes(
    series: Sequence[float] | np.ndarray, detector: str = "page_hinkley", direction: str = "up", **params: Any
) -> list[int]:
    """Every index of `series` at which a change is detected (replaying it from the start)."""
    d = ChangeDetector(detector, direction, **params)
    for value in np.asarray(series, dtype=np.float64).tolist():
        d.update(value)
    return d.detections


def detect_change(
    series: Sequence[float] | np.ndarray, detector: str = "page_hinkley", direction: str = "up", **params: Any
) -> int | None:
    """The index at which a change is first detected in `series`, or None."""
    found = detect_change_point(series, detector, direction, **params)
    return found[0] if found else None


def detect_change_point(
    series: Sequence[float] | np.ndarray,
    detector: str = "page_hinkley",
    direction: str = "up",
    resume: str | None = None,
    **params: Any,
) -> tuple[int, int | None] | None:
    """``(detected at, change point)`` of the first change in `series`, or None.

    The change point is where the new regime began as far as the detector says: for ADWIN its cut,
    i.e. the first value of the window it kept (``width`` values ending at the detection); None for
    detectors that do not locate it (Page-Hinkley, DDM). Callers combine it with the series itself
    (the first value of the rise), since river's ADWIN may keep part of the old regime. With
    `resume` (a key naming the series, e.g. its stream), a series that continues the one last read
    under that key feeds the detector only its new values (`_RESUMABLE`).
    """
    values = np.asarray(series, dtype=np.float64)
    d, seen, _ = _resumed(resume, values, detector, direction, params)
    found = _first_change(d, values[seen:].tolist(), seen)
    if found is None:
        _keep(resume, values, d, values.size, detector, direction, params)
    return found


def _first_change(d: ChangeDetector, values: Sequence[float], start: int) -> tuple[int, int | None] | None:
    """`detect_change_point` for `values` numbered from `start` on a detector that has read the rest."""
    for i, value in enumerate(values, start):
        if d.update(value):
            if d.name == "adwin":
                return i, max(0, i - int(d._detector.width) + 1)
            return i, None
    return None


# Detectors that read a whole series without a detection, by the caller's `resume` key, with how
# much they read: the series' units (values, or a batch's rate and rows) and a digest of them, and
# the values fed. The drift sensor's series (every batch since the last action) grows between its
# ticks and, on a stationary stream, forever: replaying it took 0.75 s a tick at 2,000 batches of
# 163 rows. A detector is deterministic, so feeding what follows the same units answers exactly as
# a replay from the start; a series that does not continue the one read is replayed.
RESUMABLE_DETECTORS = 256
_RESUMABLE: OrderedDict[tuple[str, str, str, str], tuple[int, bytes, int, ChangeDetector]] = OrderedDict()


def _resume_key(resume: str, detector: str, direction: str, params: dict[str, Any]) -> tuple[str, str, str, str]:
    return resume, detector, direction, repr(sorted(params.items()))


def _digest(units: np.ndarray) -> bytes:
    return hashlib.blake2b(memoryview(np.ascontiguousarray(units)).cast("B"), digest_size=16).digest()


def _resumed(
    resume: str | None, units: np.ndarray, detector: str, direction: str, params: dict[str, Any]
) -> tuple[ChangeDetector, int, int]:
    """(detector, units it read, values it was fed): the one kept under `resume` when `units` begins
    with what it read, else a new one."""
    if resume is not None:
        kept = _RESUMABLE.pop(_resume_key(resume, detector, direction, params), None)
        if kept is not None:
            seen, digest, fed, d = kept
            if seen <= len(units) and digest == _digest(units[:seen]):
                return d, seen, fed
    return ChangeDetector(detector, direction, keep_values=False, **params), 0, 0


def _keep(
    resume: str | None,
    units: np.ndarray,
    d: ChangeDetector,
    fed: int,
    detector: str,
    direction: str,
    params: dict[str, Any],
) -> None:
    """Keep a detector that read all of `units` without a detection, for the series' next read."""
    if resume is None:
        return
    _RESUMABLE[_resume_key(resume, detector, direction, params)] = (len(units), _digest(units), fed, d)
    while len(_RESUMABLE) > RESUMABLE_DETECTORS:
        _RESUMABLE.popitem(last=False)


def expand_batch_errors(error_rates: Sequence[float], rows: Sequence[int]) -> np.ndarray:
    """Per-row 0/1 errors from per-batch error rates and row counts, errors spread evenly in a batch."""
    if len(error_rates) != len(rows):
        raise ValueError(f"{len(error_rates)} error rates but {len(rows)} row counts")
    parts = []
    for rate, n in zip(error_rates, rows, strict=True):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"error rates must be in [0, 1], got {rate}")
        n = int(n)
        errors = int(round(rate * n))
        # row j is an error when floor((j+1)*e/n) > floor(j*e/n): exactly e errors, evenly spaced
        j = np.arange(n)
        parts.append((((j + 1) * errors) // n - (j * errors) // n).astype(np.float64) if n else np.zeros(0))
    return np.concatenate(parts) if parts else np.zeros(0)


@dataclass(frozen=True)
class ChangeResult:
    """A detected change, with what the decision logic needs to explain it."""

    metric: str
    detector: str
    params: dict[str, Any]
    index: int  # batch (or value) index where the change was first detected
    n: int  # length of the series examined
    mean_before: float  # metric mean before the detection index
    value_at: float  # metric value at the detection index
    at: float | None = None  # when the detecting batch was seen (epoch seconds), if known
    # Where the new regime began (batch or value index): ADWIN's cut point, else the first value
    # of the rise that led to the detection. A retrain learns from here on.
    start_index: int | None = None

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        began = "" if self.start_index in (None, self.index) else f"; the change began at index {self.start_index}"
        return (
            f"{self.metric}: {self.detector}({shown}) detected an increase at index {self.index} of {self.n} "
            f"(value {self.value_at:.4f} vs mean {self.mean_before:.4f} before{began})"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


NOISE_UNITS = 100.0  # ADWIN's range term (2/3 ln(1/delta) / m) is then negligible beside its variance term


def noise_units(values: np.ndarray) -> np.ndarray:
    """`values` rescaled so their batch-to-batch noise has standard deviation `NOISE_UNITS`.

    The noise is estimated from successive differences (median absolute difference / 0.6745 / sqrt 2),
    which a level shift or a slow learning curve barely moves, so the same relative change is detected
    the same way whatever the metric's units. A series without noise is returned as it is.
    """
    if values.size < 3:
        return values
    sigma = float(np.median(np.abs(np.diff(values)))) * 1.4826 / np.sqrt(2.0)
    return values * (NOISE_UNITS / sigma) if sigma > 0 else values


def detect_series_change(
    series: Sequence[float],
    detector: str = "page_hinkley",
    *,
    metric: str = "error",
    times: Sequence[float] | None = None,
    resume: str | None = None,
    **params: Any,
) -> ChangeResult | None:
    """`detect_change` on the series as given (no expansion), as a `ChangeResult`.

    For series that are not error rates with row counts, e.g. a per-batch regression MAE. ADWIN
    sees the series in units of its own noise (`noise_units`) and checks every value (``clock`` 1:
    a value is a whole batch): its bound assumes values in [0, 1], so on a raw MAE series it never
    detected a doubling of an MAE near 0.1 and took 23 batches at MAE 10 (measured in
    tests/monitors/test_detectors.py). ADWIN needs a history: its bound grows with the variance of
    the whole window (both regimes) and counts each side's values minus ``min_window_length``, so
    after only 7 batches a tripling of the MAE went unseen for 8 more batches; after 30, it was found
    at once (tests/assets/test_self_healing.py). Page-Hinkley's ``threshold`` and ``delta`` stay in
    the series' own units: choose them with `params`.
    """
    values = np.asarray(series, dtype=np.float64)
    if detector == "adwin":
        params = {"clock": 1, **params}
        found = detect_change_point(noise_units(values), detector, "up", resume, **params)
    else:
        found = detect_change_point(values, detector, "up", resume, **params)
    if found is None:
        return None
    index, cut = found
    result = _result(values, np.ones(values.size), index, detector, metric, times, params)
    start = _rise_start(values, index, result.mean_before)
    if cut is not None:
        start = max(start, cut)
    return replace(result, start_index=min(start, index))


def detect_batch_change(
    error_rates: Sequence[float],
    rows: Sequence[int],
    detector: str = "page_hinkley",
    *,
    metric: str = "error_rate",
    times: Sequence[float] | None = None,
    resume: str | None = None,
    **params: Any,
) -> ChangeResult | None:
    """The first batch whose rows contain a detected increase of the error rate, or None.

    Replays the batches as per-row 0/1 errors (`expand_batch_errors`), so the detector defaults
    (calibrated on per-row errors) apply whatever the batch size. `times` (one per batch) lets the
    result carry when the detecting batch was seen. `resume`: as in `detect_change_point`, per batch.
    """
    units = np.column_stack([np.asarray(error_rates, dtype=np.float64), np.asarray(rows, dtype=np.float64)])
    d, seen, fed = _resumed(resume, units, detector, "up", params)
    values = expand_batch_errors(error_rates[seen:], rows[seen:])  # a batch's rows do not depend on others'
    found = _first_change(d, values.tolist(), fed)
    if found is None:
        _keep(resume, units, d, fed + values.size, detector, "up", params)
        return None
    row_index, cut_row = found
    bounds = np.cumsum(np.asarray(rows, dtype=np.int64))
    batch = int(np.searchsorted(bounds, row_index, side="right"))
    rates = np.asarray(error_rates, dtype=np.float64)
    result = _result(rates, np.asarray(rows, dtype=np.float64), batch, detector, metric, times, params)
    # Where the new regime began: the first batch of the rise that led to the detection, or ADWIN's
    # cut if that is later. river's ADWIN drops only the old buckets its one check at the detection
    # condemns, so the window it keeps (`width`) can still reach back into the old concept.
    start = _rise_start(rates, batch, result.mean_before)
    if cut_row is not None:
        cut = int(np.searchsorted(bounds, cut_row, side="right"))
        if cut < batch and bounds[cut] - cut_row < 0.5 * rows[cut]:  # mostly before the cut: the next one
            cut += 1
        start = max(start, cut)
    return replace(result, start_index=min(start, batch))


def _rise_start(series: np.ndarray, index: int, mean_before: float) -> int:
    """The first index of the run of values up to `index` that lie above the midpoint between the
    mean before the change and the value at the detection (a detector's delay spans a few)."""
    threshold = (mean_before + series[index]) / 2
    start = index
    while start > 0 and series[start - 1] > threshold:
        start -= 1
    return start


def _result(
    series: np.ndarray,
    weights: np.ndarray,
    index: int,
    detector: str,
    metric: str,
    times: Sequence[float] | None,
    params: dict[str, Any],
) -> ChangeResult:
    if times is not None and len(times) != series.size:
        raise ValueError(f"{len(times)} times for a series of {series.size}")
    if index and weights[:index].sum() > 0:
        before = float(np.average(series[:index], weights=weights[:index]))
    else:
        before = float(series[index])
    return ChangeResult(
        metric=metric,
        detector=detector,
        params={**DEFAULT_PARAMS[detector], **params},
        index=index,
        n=int(series.size),
        mean_before=before,
        value_at=float(series[index]),
        at=float(times[index]) if times is not None else None,
    )
