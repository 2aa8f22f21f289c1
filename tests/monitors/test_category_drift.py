"""Drift of category features: frequency profiles, PSI and chi-square over vocabulary codes (and hash
buckets), judged in the same report as numeric features and gathered from versions' meta."""

from __future__ import annotations

import numpy as np
import pytest

from dagster_project.dev.datasets import census_events
from dagster_project.ingest.events import make_event
from dagster_project.ingest.micro_batch import MicroBatch, _parse
from dagster_project.kafka.io import RawRecord
from dagster_project.kafka.record_columns import RecordColumns
from dagster_project.registry.store import FilesystemRegistry
from dagster_project.registry.versioning import version_meta
from dagster_project.spec import StreamSpec
from monitors.drift import DriftThresholds, feature_drift
from monitors.evidence import gather
from tests.conftest import census_spec

ROWS = 1000


@pytest.fixture
def spec() -> StreamSpec:
    return census_spec(partitions=1, drift={"cooldown_s": 60, "hysteresis": 2})


def _batch(spec: StreamSpec, seed: int, shift_to_gov: float = 0.0, zips: range | None = None) -> MicroBatch:
    """Census rows; `shift_to_gov` of them turned into workclass Gov, `zips` narrows the zip codes."""
    rng = np.random.default_rng(seed)
    records = []
    for i, event in enumerate(census_events(rows=ROWS, seed=seed)):
        features = dict(event.features)
        if rng.random() < shift_to_gov:
            features["workclass"] = "Gov"
        if zips is not None:
            features["zip"] = int(rng.choice(zips))
        records.append(RawRecord(0, i, 0, None, make_event(event.event_id, features, event.label)))
    return _parse(None, spec, {0: (0, ROWS)}, RecordColumns.of(records), False, None)


def _profile(spec: StreamSpec, batch: MicroBatch) -> dict:
    meta = version_meta(spec, batch, {}, batch.rows, batch.rows, {}, {}, {}, "run")
    return meta["profile"]["features"]


def test_a_version_profiles_category_features_by_frequency(spec: StreamSpec) -> None:
    batch = _batch(spec, seed=1)
    workclass = _profile(spec, batch)["workclass"]
    assert workclass["kind"] == "category"
    assert workclass["labels"] == {"0": "Private", "1": "Self-emp", "2": "Gov", "3": "Without-pay", "4": "<unseen>"}
    assert sum(workclass["counts"].values()) == ROWS and workclass["null_fraction"] == 0.0
    education = _profile(spec, batch)["education"]
    assert 0.0 < education["null_fraction"] < 0.05  # nulls are a code, not a category
    assert "labels" not in _profile(spec, batch)["zip"]  # hashed: counts per bucket


def test_a_category_shift_is_drift_and_the_same_distribution_is_not(spec: StreamSpec) -> None:
    reference = _profile(spec, _batch(spec, seed=1))
    thresholds = DriftThresholds.from_spec(spec.drift)

    same = feature_drift(reference, _batch(spec, seed=2).X, spec.feature_names, thresholds)
    assert not same.drifted, same.reasons()
    assert same.feature("workclass").psi < 0.05

    shifted = feature_drift(reference, _batch(spec, seed=3, shift_to_gov=0.5).X, spec.feature_names, thresholds)
    assert shifted.drifted_features == ("workclass",)
    drift = shifted.feature("workclass")
    assert drift.psi > spec.drift.psi_major and drift.chi2_pvalue < 1e-10 and drift.total_variation > 0.3
    assert drift.ks_statistic is None  # codes have no order
    assert any(r.startswith("workclass: chi2: p-value") and r.endswith("(most moved: Gov)") for r in shifted.reasons())
    assert shifted.psi_max == drift.psi


def test_hashed_features_drift_over_their_buckets(spec: StreamSpec) -> None:
    reference = _profile(spec, _batch(spec, seed=1))
    narrowed = feature_drift(reference, _batch(spec, seed=2, zips=range(10_000, 10_005)).X, spec.feature_names)
    assert narrowed.drifted_features == ("zip",)
    assert narrowed.feature("zip").rules[0].startswith("psi over categories:")


def test_the_drift_sensor_evidence_covers_category_features(registry: FilesystemRegistry, spec: StreamSpec) -> None:
    for seed, shift in ((1, 0.0), (2, 0.6), (3, 0.6)):
        batch = _batch(spec, seed=seed, shift_to_gov=shift)
        meta = version_meta(spec, batch, {}, batch.rows, batch.rows, {"accuracy": 0.8, "rows": ROWS}, {}, {}, "run")
        head = registry.head(spec.name)
        version = registry.register(spec.name, head.name if head else None, b"onnx", None, meta)
        if registry.champion(spec.name) is None:
            registry.set_champion(spec.name, version.name, reason="first version")

    evidence = gather(registry, spec)

    assert [r.drifted_features for r in evidence.drift_reports] == [("workclass",), ("workclass",)]
