"""Gather the drift sensor's evidence from durable state: the registry's versions and decisions.

Everything here reads files the training runs already wrote (each version's batch profile and
prequential metrics, the gate's champion checks), so a sensor tick stays cheap and never touches
Kafka or raw data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dagster_project.names import version_number
from dagster_project.registry.promotion import HIGHER_IS_BETTER
from dagster_project.registry.significance import PairedTest, combine
from dagster_project.registry.store import ModelRegistry, Version, last_promotion
from dagster_project.spec import StreamSpec
from monitors.actions import ACTION_KIND, action_history, epoch, last_action
from monitors.cut_policy import SeriesPoint, series_change
from monitors.decisions import ChampionComparison, DecisionConfig, LastAction
from monitors.detectors import ChangeResult, detect_batch_change, detect_series_change
from monitors.drift import DriftReport, DriftThresholds, feature_drift

__all__ = ["ACTION_KIND", "Evidence", "describe", "detector_series", "gather", "last_action"]


@dataclass(frozen=True)
class Evidence:
    drift_reports: list[DriftReport]
    changes: list[ChangeResult]
    comparison: ChampionComparison | None
    last_action: LastAction | None
    config: DecisionConfig
    champion: str | None
    head: str | None
    change_version: str | None = None  # the batch where the prequential change was detected


def scored_versions(versions: list[Version], task: str, since: float, seed: str | None = None) -> list[Version]:
    """The batches the prequential detector reads: versions trained on a batch (not retrains) since the
    last action, plus `seed` (the cut batch's version after a first cut's retrain, `ActionHistory`)."""
    metric = "accuracy" if task == "classification" else "mae"
    return [
        v
        for v in versions
        if (epoch(v.meta["created_at"]) > since or v.name == seed)
        and not v.meta.get("retrain")
        and metric in v.meta.get("metrics", {})
    ]


def detector_series(versions: list[Version], task: str, since: float, seed: str | None = None) -> list[SeriesPoint]:
    """`scored_versions` as the detector's series: (error rate or MAE, rows, version number, time)."""
    points = []
    for v in scored_versions(versions, task, since, seed):
        metrics = v.meta["metrics"]
        error = 1 - metrics["accuracy"] if task == "classification" else metrics["mae"]
        points.append((error, metrics["rows"], v.number, epoch(v.meta["created_at"])))
    return points


# Which derived features were still filling in each version's batch, by (registry, stream, version,
# created_at): a version never changes, and while the champion's windows were filling a tick asks it
# of every later version up to the first warm one. With 1-day windows and 1-minute batches that is
# 1,440 profiles read each tick for as long as v1 stays champion (a download each on MLflow).
_FILLING: dict[tuple[str, str, str, str], tuple[str, ...]] = {}
_FILLING_CAP = 200_000  # names are a few bytes; a process watching many long streams starts over


class _Profiles:
    """Each version's data profile, read at most once per tick, and which features were filling
    in its batch, remembered across ticks (`_FILLING`)."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry
        self._where = repr(registry)
        self._read: dict[str, dict[str, Any]] = {}

    def __call__(self, version: Version) -> dict[str, Any]:
        """A version's data profile: in its meta (filesystem) or read from the registry (MLflow keeps it apart)."""
        if version.name not in self._read:
            if "profile" in version.meta:
                self._read[version.name] = version.meta["profile"] or {}
            else:
                self._read[version.name] = self._registry.profile(version.stream, version.name)
        return self._read[version.name]

    def features(self, version: Version) -> dict[str, Any]:
        """A version's per-feature profile."""
        return self(version).get("features", {})

    def filling(self, version: Version) -> dict[str, str]:
        """Derived features whose windows were still filling in `version`'s batch (`features.warmup`),
        with why: a profile of them says how the stream started, not what it is."""
        key = (self._where, version.stream, version.name, str(version.meta.get("created_at")))
        names = _FILLING.get(key)
        if names is None:
            names = tuple(self(version).get("filling", []))
            if len(_FILLING) >= _FILLING_CAP:
                _FILLING.clear()
            _FILLING[key] = names
        return {name: f"its windows were still filling in {version.name}'s batch: not judged" for name in names}


def _sample_matrix(profiles: _Profiles, version: Version, names: list[str]) -> np.ndarray | None:
    """The batch's per-feature reservoir samples as columns (drift statistics work on samples)."""
    features = profiles.features(version)
    samples = [features.get(n, {}).get("sample") for n in names]
    if any(s is None for s in samples):
        return None
    size = min(len(s) for s in samples)
    if size == 0:
        return None
    return np.column_stack([np.asarray(s[:size], dtype=np.float64) for s in samples])


def _reference(
    profiles: _Profiles, champion: Version, later: list[Version]
) -> tuple[dict[str, Any], dict[str, tuple[float, str]]]:
    """The champion's profile, with each derived feature whose windows were filling in its batch
    taken from the first later version whose had filled; and, for those features, the version up to
    which nothing is judged and why (every version, while none has filled yet).

    The champion of a stationary stream is often still v1, whose batch began with every window
    empty: judged by it, derived features were never checked until a promotion."""
    reference = dict(profiles.features(champion))
    warm_from: dict[str, tuple[float, str]] = {}
    for name, why in profiles.filling(champion).items():
        warm = next((v for v in later if name not in profiles.filling(v)), None)
        if warm is None:
            warm_from[name] = (float("inf"), why)
        else:
            reference[name] = profiles.features(warm)[name]
            warm_from[name] = (
                warm.number,
                f"{why}; judged against {warm.name}'s, the first whose had filled, after it",
            )
    return reference, warm_from


def gather(registry: ModelRegistry, spec: StreamSpec, recent: int = 10) -> Evidence:
    """Evidence since the last action: data drift of recent batches against the champion's
    reference profile, a change detector over the prequential error series, and the champion's
    comparison with its predecessor on the same batches."""
    name = spec.name
    versions = registry.versions(name)
    champion = registry.champion(name)
    history = action_history(registry.decisions(name))
    action = history.anchor  # the cooldown's anchor: a first cut's retrain leaves it where it was
    since = history.since  # evidence counts from the latest action of any kind (rule 4)
    fresh = [v for v in versions if epoch(v.meta["created_at"]) > since]
    config = DecisionConfig.from_spec(spec.drift, spec.promotion.significance)
    thresholds = DriftThresholds.from_spec(spec.drift)

    reports: list[DriftReport] = []
    drifted_run: list[str] = []  # versions of the current unbroken run of drifted batches
    if champion:
        champion_number = version_number(champion)
        later = [v for v in versions if v.number > champion_number]
        profiles = _Profiles(registry)
        reference, warm_from = _reference(profiles, registry.get(name, champion), later)
        for version in [v for v in fresh if v.number > champion_number][-recent:]:
            X = _sample_matrix(profiles, version, spec.input_names)
            if X is not None and reference:
                at = epoch(version.meta["created_at"])
                skipped = {
                    **profiles.filling(version),
                    **{d: why for d, (number, why) in warm_from.items() if version.number <= number},
                }
                report = feature_drift(reference, X, spec.input_names, thresholds, at=at, not_judged=skipped)
                reports.append(report)
                drifted_run = [*drifted_run, version.name] if report.drifted else []

    changes: list[ChangeResult] = []
    change_version = None
    scored = scored_versions(versions, spec.task, since, history.seed_version)
    series = detector_series(versions, spec.task, since, history.seed_version)
    params = dict(spec.drift.detector_params)
    found = series_change(series, spec.task, spec.drift.detector, params, history.answered, f"{name}/batches")
    if found is not None:
        changes.append(found)
    if changes:  # the error-rate detector's change point: a pure concept change moves no feature
        change_version = scored[changes[0].start_index if changes[0].start_index is not None else changes[0].index].name

    changes.extend(_live_changes(registry, spec, champion, since, params))
    if drifted_run and (change_version is None or version_number(drifted_run[0]) < version_number(change_version)):
        change_version = drifted_run[0]  # whichever saw the change first
    comparison = _comparison(registry, name, champion)
    head = versions[-1].name if versions else None
    return Evidence(reports, changes, comparison, action, config, champion, head, change_version)


def _live_changes(
    registry: ModelRegistry, spec: StreamSpec, champion: str | None, since: float, params: dict[str, Any]
) -> list[ChangeResult]:
    """Concept drift on the served champion's live labelled error (from the label joiner)."""
    from dagster_project.labels import read_records

    if not champion:
        return []
    records = [
        r for r in read_records(registry.root, spec.name, since=since) if r["versions"].get(champion, {}).get("rows")
    ]
    if not records:
        return []
    rows = [r["versions"][champion]["rows"] for r in records]
    times = [epoch(r["at"]) for r in records]
    if spec.task == "classification":
        rates = [1 - r["versions"][champion]["correct"] / n for r, n in zip(records, rows, strict=True)]
        found = detect_batch_change(
            rates,
            rows,
            spec.drift.detector,
            metric="live_error_rate",
            times=times,
            resume=f"{spec.name}/live",
            **params,
        )
    else:
        maes = [r["versions"][champion]["abs_err"] / n for r, n in zip(records, rows, strict=True)]
        found = detect_series_change(
            maes, spec.drift.detector, metric="live_mae", times=times, resume=f"{spec.name}/live", **params
        )
    return [found] if found else []


def _comparison(registry: ModelRegistry, stream: str, champion: str | None) -> ChampionComparison | None:
    """Row-weighted champion vs predecessor over every batch checked since the promotion."""
    if not champion:
        return None
    promoted = last_promotion(registry.champion_history(stream), champion)
    if promoted is None or not promoted.get("previous"):
        return None
    checks = [
        d
        for d in registry.decisions(stream)
        if d.get("kind") == "champion_check"
        and d["champion"] == champion
        and d["predecessor"] == promoted["previous"]
        and d.get("champion_value") is not None
        and d.get("predecessor_value") is not None
    ]
    if not checks:
        return None
    rows = sum(c["rows"] for c in checks)
    weighted = lambda key: sum(c[key] * c["rows"] for c in checks) / rows  # noqa: E731
    metric = checks[-1]["metric"]
    # Checks recorded before paired tests existed have none; combining the rest could hide them.
    tests = [PairedTest.from_dict(c["test"]) for c in checks if c.get("test")]
    test = combine(tests) if len(tests) == len(checks) else None
    return ChampionComparison(
        champion=champion,
        predecessor=promoted["previous"],
        metric=metric,
        champion_value=weighted("champion_value"),
        predecessor_value=weighted("predecessor_value"),
        rows=rows,
        promoted_at=epoch(promoted["at"]),
        higher_is_better=HIGHER_IS_BETTER[metric],
        test=test,
        looks=len(checks),
    )


def describe(evidence: Evidence) -> dict[str, Any]:
    """A compact, JSON-safe summary for run tags and logs."""
    return {
        "champion": evidence.champion,
        "head": evidence.head,
        "drifted_batches": sum(1 for r in evidence.drift_reports if r.drifted),
        "psi_max": max((r.psi_max or 0.0 for r in evidence.drift_reports), default=None),
        "changes": [c.describe() for c in evidence.changes],
        "comparison": None
        if evidence.comparison is None
        else {
            "metric": evidence.comparison.metric,
            "champion": evidence.comparison.champion_value,
            "predecessor": evidence.comparison.predecessor_value,
            "rows": evidence.comparison.rows,
            "test": evidence.comparison.test.test if evidence.comparison.test else None,
            "p_value": evidence.comparison.test.p_value if evidence.comparison.test else None,
        },
    }
