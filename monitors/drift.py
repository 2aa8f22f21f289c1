"""Data and prediction drift against a version's reference profile (see `monitors.profiles`).

Statistics
----------
- **PSI** (population stability index) on the reference's histogram bins:
  ``sum((a_i - e_i) * ln(a_i / e_i))`` over bins, where ``e_i``/``a_i`` are the reference/current
  proportions and empty bins count as `PSI_EPSILON`. Convention: below 0.1 stable, 0.1 to 0.25
  moderate shift, 0.25 or more major shift. Sampling noise alone inflates PSI by about
  ``(bins - 1) * (1/n_ref + 1/n)`` (~0.02 for two batches of 1,000 rows on 10 bins, ~0.1 for 100
  rows), which is why features with fewer than `DriftThresholds.min_rows` present values are not
  judged.
- **KS**: scipy's two-sample Kolmogorov-Smirnov test of the current values against the
  reference's stored sample (500 values by default). Its power is bounded by that sample size;
  profiles without a sample get no KS result (never an approximation passed off as a test).
- **Chi-square** (`prediction_drift`, classes; category features): goodness of fit of the
  current counts (predicted classes, or a category feature's codes: vocabulary values, the unseen
  code, hash buckets) to the reference proportions, with total variation distance as the effect
  size; PSI is computed over the same counts. Category features get no KS test (codes have no order).

A p-value alone flags trivially small shifts on big batches, so the tests only fire together with
a minimum effect size (KS statistic or total variation distance).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from monitors.profiles import QUANTILES, bin_counts, category_codes

PSI_EPSILON = 1e-4
PSI_MODERATE = 0.1
PSI_MAJOR = 0.25


@dataclass(frozen=True)
class DriftThresholds:
    """When a feature (or the prediction distribution) counts as drifted.

    Rules, each reported by name when it fires:
    ``psi``: PSI >= ``psi_major``; ``ks``: KS p-value < ``pvalue`` and KS statistic >= ``min_effect``;
    ``chi2`` (classes): p-value < ``pvalue`` and total variation distance >= ``min_effect``;
    ``nulls``: the null fraction moved by at least ``null_fraction_delta`` (absolute).
    """

    psi_moderate: float = PSI_MODERATE
    psi_major: float = PSI_MAJOR
    pvalue: float = 0.001
    min_effect: float = 0.1
    null_fraction_delta: float = 0.1
    min_rows: int = 50

    def __post_init__(self) -> None:
        if not 0 <= self.psi_moderate <= self.psi_major:
            raise ValueError(f"need 0 <= psi_moderate <= psi_major, got {self.psi_moderate}, {self.psi_major}")
        if not 0 < self.pvalue < 1:
            raise ValueError(f"pvalue must be in (0, 1), got {self.pvalue}")
        if self.min_rows < 1:
            raise ValueError(f"min_rows must be >= 1, got {self.min_rows}")

    @classmethod
    def from_spec(cls, drift_spec: Any) -> DriftThresholds:
        """From a `dagster_project.spec.DriftSpec` (or anything with the same attributes)."""
        return cls(
            psi_moderate=drift_spec.psi_moderate,
            psi_major=drift_spec.psi_major,
            pvalue=drift_spec.pvalue,
            min_effect=drift_spec.min_effect,
            null_fraction_delta=drift_spec.null_fraction_delta,
            min_rows=drift_spec.min_rows,
        )


@dataclass(frozen=True)
class KSResult:
    statistic: float
    pvalue: float
    reference_size: int
    size: int


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's drift statistics and verdict; `rules` says which rule(s) fired and why."""

    name: str
    rows: int  # present (non-null) current values
    psi: float | None
    psi_level: str  # "stable" | "moderate" | "major" | "not computed"
    ks_statistic: float | None
    ks_pvalue: float | None
    null_fraction_reference: float
    null_fraction: float
    drifted: bool
    rules: tuple[str, ...]
    notes: tuple[str, ...] = ()  # why a statistic was not computed
    chi2_pvalue: float | None = None  # category features: frequency test over their codes
    total_variation: float | None = None


@dataclass(frozen=True)
class DriftReport:
    """Per-feature drift of one set of rows against a reference profile."""

    rows: int
    features: tuple[FeatureDrift, ...]
    drifted_features: tuple[str, ...]
    psi_max: float | None
    thresholds: DriftThresholds
    at: float | None = None  # when the evaluated rows were seen (epoch seconds), if the caller knows

    @property
    def drifted(self) -> bool:
        return bool(self.drifted_features)

    def feature(self, name: str) -> FeatureDrift:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"no feature {name!r} in the report; features: {[f.name for f in self.features]}")

    def reasons(self) -> list[str]:
        """One line per fired rule, naming the feature, value and threshold."""
        return [f"{f.name}: {rule}" for f in self.features for rule in f.rules]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PredictionDrift:
    """Drift of the prediction distribution against the reference label/prediction distribution."""

    kind: str  # "classes" | "values"
    rows: int
    psi: float | None
    drifted: bool
    rules: tuple[str, ...]
    chi2_statistic: float | None = None
    chi2_pvalue: float | None = None
    total_variation: float | None = None
    ks_statistic: float | None = None
    ks_pvalue: float | None = None
    reference_proportions: dict[str, float] | None = None
    proportions: dict[str, float] | None = None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def psi_from_counts(reference_counts: Sequence[float], counts: Sequence[float], epsilon: float = PSI_EPSILON) -> float:
    """PSI between two count (or proportion) vectors over the same bins; empty bins count as `epsilon`."""
    expected = np.asarray(reference_counts, dtype=np.float64)
    actual = np.asarray(counts, dtype=np.float64)
    if expected.shape != actual.shape:
        raise ValueError(f"bin count mismatch: reference {expected.shape}, current {actual.shape}")
    if expected.sum() <= 0 or actual.sum() <= 0:
        raise ValueError("PSI needs at least one value on each side")
    e = np.maximum(expected / expected.sum(), epsilon)
    a = np.maximum(actual / actual.sum(), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def reference_bins(reference: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(edges, expected proportions)`` of a feature profile.

    Uses the stored histogram. Profiles written before histograms existed fall back to the stored
    quantiles as edges, with the quantile steps as expected proportions; that is only right when the
    interior quantiles are distinct (continuous data), so tied quantiles raise ValueError.
    """
    histogram = reference.get("histogram")
    if histogram is not None:
        counts = np.asarray(histogram["counts"], dtype=np.float64)
        return np.asarray(histogram["edges"], dtype=np.float64), counts / counts.sum()
    quantiles = reference.get("quantiles")
    if quantiles is None:
        raise ValueError("the reference profile has neither a histogram nor quantiles (no present values)")
    levels = np.asarray(QUANTILES[1:-1])
    values = np.asarray(quantiles[1:-1], dtype=np.float64)
    if np.any(np.diff(values) <= 0):
        raise ValueError("the reference profile has no histogram and its quantiles are tied: PSI not computable")
    return values, np.diff(np.concatenate([[0.0], levels, [1.0]]))


def psi(reference_profile_feature: Mapping[str, Any], values: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """PSI of `values` against one feature's reference profile, binned on the reference's edges.

    NaN values are ignored (null rates are judged separately). 0.1 is a moderate and 0.25 a
    major shift by convention.
    """
    edges, expected = reference_bins(reference_profile_feature)
    counts = bin_counts(edges, values)
    return psi_from_counts(expected, counts, epsilon)


def ks_test(reference: Mapping[str, Any] | Sequence[float] | np.ndarray, values: np.ndarray) -> KSResult:
    """Two-sample KS test of `values` against a reference sample.

    `reference` is a feature profile (its ``sample`` is used) or the sample itself. Raises
    ValueError when the profile has no sample (older profiles) or either side is empty.
    """
    if isinstance(reference, Mapping):
        if "sample" not in reference:
            raise ValueError("the reference profile has no sample; KS needs one (profiles written since drift checks)")
        sample = np.asarray(reference["sample"], dtype=np.float64)
    else:
        sample = np.asarray(reference, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    sample = sample[~np.isnan(sample)]
    if not sample.size or not values.size:
        raise ValueError("KS needs at least one value on each side")
    from scipy import stats  # here, not at import: scipy.stats costs ~1.4 s in every run worker's start-up

    result = stats.ks_2samp(sample, values)
    return KSResult(float(result.statistic), float(result.pvalue), int(sample.size), int(values.size))


def _psi_level(value: float | None, thresholds: DriftThresholds) -> str:
    if value is None:
        return "not computed"
    if value >= thresholds.psi_major:
        return "major"
    if value >= thresholds.psi_moderate:
        return "moderate"
    return "stable"


@dataclass(frozen=True)
class CountTest:
    """Current counts against reference counts over the same categories."""

    psi: float
    chi2_statistic: float
    chi2_pvalue: float
    total_variation: float


def count_test(reference_counts: np.ndarray, counts: np.ndarray, *, two_sample: bool = False) -> CountTest:
    """PSI, chi-square and total variation distance of `counts` against the reference counts.

    ``two_sample=False``: goodness of fit to the reference proportions, taken as exact (a model's
    few classes over a large reference). Half a pseudo-count per category keeps the expected counts
    positive for categories the reference never saw (chi-square is undefined at zero expectation).
    ``two_sample=True``: the test of homogeneity of the two samples (a contingency table), for
    category features, whose many codes (up to a hash's buckets) are each estimated from a batch:
    taking those as exact would flag sampling noise as drift.
    """
    from scipy import stats

    ref = np.asarray(reference_counts, dtype=np.float64)
    now = np.asarray(counts, dtype=np.float64)
    rows = now.sum()
    if two_sample:
        chi2 = stats.chi2_contingency(np.vstack([ref, now]), correction=False)
    else:
        smoothed = (ref + 0.5) / (ref + 0.5).sum()
        chi2 = stats.chisquare(now, f_exp=smoothed * rows)
    tvd = float(0.5 * np.abs(now / rows - ref / ref.sum()).sum())
    return CountTest(psi_from_counts(ref, now), float(chi2.statistic), float(chi2.pvalue), tvd)


def _null_rule(size: int, null_now: float, null_ref: float, t: DriftThresholds) -> list[str]:
    """The null-fraction rule, shared by numeric and category features: a list with its reason, if it fired."""
    if size and abs(null_now - null_ref) >= t.null_fraction_delta:
        return [
            f"nulls: null fraction {null_now:.3f} vs reference {null_ref:.3f}, "
            f"|delta| {abs(null_now - null_ref):.3f} >= {t.null_fraction_delta}"
        ]
    return []


def _category_drift(name: str, reference: Mapping[str, Any], column: np.ndarray, t: DriftThresholds) -> FeatureDrift:
    """A category feature's code frequencies against the reference's: PSI and chi-square."""
    column = np.asarray(column, dtype=np.float64)
    present = category_codes(column)
    null_ref = float(reference.get("null_fraction", 0.0))
    null_now = float(1 - present.size / column.size) if column.size else 0.0
    rules: list[str] = _null_rule(column.size, null_now, null_ref, t)
    notes: list[str] = []
    reference_counts: Mapping[str, int] = reference.get("counts") or {}
    test = None
    if present.size < t.min_rows:
        notes.append(f"{present.size} present values < min_rows {t.min_rows}: distribution not judged")
    elif not sum(reference_counts.values()):
        notes.append("reference has no present values: distribution not judged")
    else:
        observed, observed_counts = np.unique(present, return_counts=True)
        now_by_code = dict(zip((str(c) for c in observed.tolist()), observed_counts.tolist(), strict=True))
        codes = sorted(set(reference_counts) | set(now_by_code), key=int)
        ref = np.array([reference_counts.get(c, 0) for c in codes], dtype=np.float64)
        now = np.array([now_by_code.get(c, 0) for c in codes], dtype=np.float64)
        test = count_test(ref, now, two_sample=True)
        labels = reference.get("labels") or {}
        if test.psi >= t.psi_major:
            rules.append(f"psi over categories: {test.psi:.4f} >= {t.psi_major}")
        if test.chi2_pvalue < t.pvalue and test.total_variation >= t.min_effect:
            moved = codes[int(np.argmax(np.abs(now / now.sum() - ref / ref.sum())))]
            rules.append(
                f"chi2: p-value {test.chi2_pvalue:.3g} < {t.pvalue} and total variation {test.total_variation:.4f} "
                f">= {t.min_effect} (most moved: {labels.get(moved, f'code {moved}')})"
            )
    return FeatureDrift(
        name=name,
        rows=int(present.size),
        psi=test.psi if test else None,
        psi_level=_psi_level(test.psi if test else None, t),
        ks_statistic=None,
        ks_pvalue=None,
        null_fraction_reference=null_ref,
        null_fraction=null_now,
        drifted=bool(rules),
        rules=tuple(rules),
        notes=tuple(notes),
        chi2_pvalue=test.chi2_pvalue if test else None,
        total_variation=test.total_variation if test else None,
    )


def _feature_drift(name: str, reference: Mapping[str, Any], column: np.ndarray, t: DriftThresholds) -> FeatureDrift:
    if reference.get("kind") == "category":
        return _category_drift(name, reference, column, t)
    column = np.asarray(column, dtype=np.float64)
    present = column[~np.isnan(column)]
    null_ref = float(reference.get("null_fraction", 0.0))
    null_now = float(1 - present.size / column.size) if column.size else 0.0
    rules: list[str] = _null_rule(column.size, null_now, null_ref, t)
    notes: list[str] = []
    psi_value = ks_stat = ks_p = None
    if present.size < t.min_rows:
        notes.append(f"{present.size} present values < min_rows {t.min_rows}: distribution not judged")
    elif "quantiles" not in reference:
        notes.append("reference has no present values: distribution not judged")
    else:
        try:
            psi_value = psi(reference, present)
        except ValueError as exc:  # an older profile whose quantiles cannot stand in for bins
            notes.append(f"PSI not computed: {exc}")
        if psi_value is not None and psi_value >= t.psi_major:
            rules.append(f"psi: {psi_value:.4f} >= {t.psi_major}")
        if "sample" in reference:
            ks = ks_test(reference, present)
            ks_stat, ks_p = ks.statistic, ks.pvalue
            if ks_p < t.pvalue and ks_stat >= t.min_effect:
                rules.append(f"ks: p-value {ks_p:.3g} < {t.pvalue} and statistic {ks_stat:.4f} >= {t.min_effect}")
        else:
            notes.append("reference has no sample: KS not computed")
    return FeatureDrift(
        name=name,
        rows=int(present.size),
        psi=psi_value,
        psi_level=_psi_level(psi_value, t),
        ks_statistic=ks_stat,
        ks_pvalue=ks_p,
        null_fraction_reference=null_ref,
        null_fraction=null_now,
        drifted=bool(rules),
        rules=tuple(rules),
        notes=tuple(notes),
    )


def _not_judged(name: str, column: np.ndarray, why: str) -> FeatureDrift:
    present = int(np.count_nonzero(~np.isnan(np.asarray(column, dtype=np.float64))))
    null_now = float(1 - present / column.size) if column.size else 0.0
    return FeatureDrift(name, present, None, "not computed", None, None, null_now, null_now, False, (), (why,))


def feature_drift(
    reference_profile: Mapping[str, Mapping[str, Any]],
    X: np.ndarray,
    names: Sequence[str],
    thresholds: DriftThresholds | None = None,
    *,
    at: float | None = None,
    not_judged: Mapping[str, str] | None = None,
) -> DriftReport:
    """Drift of each column of `X` (named by `names`) against ``reference_profile[name]``.

    `reference_profile` is the ``profile["features"]`` mapping of a version's meta.json. A feature
    missing from the reference raises KeyError: the schema changed, which is not drift. A feature in
    `not_judged` (name: why) is reported with that note and never drifts.
    """
    t = thresholds or DriftThresholds()
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(names):
        raise ValueError(f"X must have shape (rows, {len(names)}), got {X.shape}")
    missing = [n for n in names if n not in reference_profile]
    if missing:
        raise KeyError(f"features {missing} are not in the reference profile ({sorted(reference_profile)})")
    skipped = not_judged or {}
    features = tuple(
        _not_judged(name, X[:, i], skipped[name])
        if name in skipped
        else _feature_drift(name, reference_profile[name], X[:, i], t)
        for i, name in enumerate(names)
    )
    psis = [f.psi for f in features if f.psi is not None]
    return DriftReport(
        rows=int(X.shape[0]),
        features=features,
        drifted_features=tuple(f.name for f in features if f.drifted),
        psi_max=max(psis) if psis else None,
        thresholds=t,
        at=at,
    )


def prediction_drift(
    reference: Mapping[str, Any], predictions: np.ndarray, thresholds: DriftThresholds | None = None
) -> PredictionDrift:
    """Drift of predictions against a reference distribution.

    `reference` is a label profile or a prediction profile in the same format
    (`monitors.profiles.profile_labels`): ``{"counts": {class: n}}`` compares predicted class
    indices by chi-square (plus PSI over classes); a column profile (regression labels, or scores
    profiled with `monitors.profiles.summarize`) compares values by PSI and KS. Against *labels*
    a model's predictions differ by its own bias (e.g. favouring the majority class), so a
    reference profile of the model's own predictions is the sharper baseline when available.
    """
    t = thresholds or DriftThresholds()
    predictions = np.asarray(predictions, dtype=np.float64)
    predictions = predictions[~np.isnan(predictions)]
    if "counts" in reference:
        return _class_drift(reference["counts"], predictions, t)
    if "quantiles" not in reference:
        raise ValueError("the reference has neither class counts nor a value profile")
    rows = int(predictions.size)
    if rows < t.min_rows:
        note = f"{rows} predictions < min_rows {t.min_rows}: not judged"
        return PredictionDrift(kind="values", rows=rows, psi=None, drifted=False, rules=(), notes=(note,))
    rules: list[str] = []
    psi_value = psi(reference, predictions)
    if psi_value >= t.psi_major:
        rules.append(f"prediction psi: {psi_value:.4f} >= {t.psi_major}")
    ks_stat = ks_p = None
    notes: tuple[str, ...] = ()
    if "sample" in reference:
        ks = ks_test(reference, predictions)
        ks_stat, ks_p = ks.statistic, ks.pvalue
        if ks_p < t.pvalue and ks_stat >= t.min_effect:
            rules.append(
                f"prediction ks: p-value {ks_p:.3g} < {t.pvalue} and statistic {ks_stat:.4f} >= {t.min_effect}"
            )
    else:
        notes = ("reference has no sample: KS not computed",)
    return PredictionDrift(
        kind="values",
        rows=rows,
        psi=psi_value,
        drifted=bool(rules),
        rules=tuple(rules),
        ks_statistic=ks_stat,
        ks_pvalue=ks_p,
        notes=notes,
    )


def _class_drift(reference_counts: Mapping[str, int], predictions: np.ndarray, t: DriftThresholds) -> PredictionDrift:
    predicted = predictions.astype(int)
    rows = int(predicted.size)
    observed_classes = {str(c) for c in np.unique(predicted)}
    classes = sorted(set(reference_counts) | observed_classes, key=lambda c: (len(c), c))
    ref = np.array([float(reference_counts.get(c, 0)) for c in classes])
    now = np.array([float(np.sum(predicted == int(c))) for c in classes])
    if ref.sum() <= 0:
        raise ValueError("the reference class counts are empty")
    ref_p = ref / ref.sum()
    proportions = dict(zip(classes, (now / rows if rows else now).tolist(), strict=True))
    reference_proportions = dict(zip(classes, ref_p.tolist(), strict=True))
    if rows < t.min_rows:
        note = f"{rows} predictions < min_rows {t.min_rows}: not judged"
        return PredictionDrift(
            kind="classes",
            rows=rows,
            psi=None,
            drifted=False,
            rules=(),
            reference_proportions=reference_proportions,
            proportions=proportions,
            notes=(note,),
        )
    test = count_test(ref, now)
    tvd, psi_value = test.total_variation, test.psi
    rules: list[str] = []
    if psi_value >= t.psi_major:
        rules.append(f"prediction psi over classes: {psi_value:.4f} >= {t.psi_major}")
    if test.chi2_pvalue < t.pvalue and tvd >= t.min_effect:
        rules.append(
            f"prediction chi2: p-value {test.chi2_pvalue:.3g} < {t.pvalue} and total variation {tvd:.4f} "
            f">= {t.min_effect}"
        )
    return PredictionDrift(
        kind="classes",
        rows=rows,
        psi=psi_value,
        drifted=bool(rules),
        rules=tuple(rules),
        chi2_statistic=test.chi2_statistic,
        chi2_pvalue=test.chi2_pvalue,
        total_variation=tvd,
        reference_proportions=reference_proportions,
        proportions=proportions,
    )
