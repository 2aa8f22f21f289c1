"""The drift sensor's evidence (monitors/evidence.py), gathered from small registries written by hand:
data drift against the champion's profile, prequential and live concept changes, the champion's
comparison with its predecessor, and the last action that resets all of it."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import numpy as np
import pytest

from dagster_project.labels.store import LiveStore
from dagster_project.registry.significance import mcnemar_counts
from dagster_project.registry.store import FilesystemRegistry, Version
from dagster_project.spec import StreamSpec
from monitors.decisions import DecisionConfig
from monitors.evidence import ACTION_KIND, describe, gather, last_action
from monitors.profiles import profile_features
from tests.conftest import synthetic_spec

ROWS = 500


@pytest.fixture
def spec() -> StreamSpec:
    return synthetic_spec(partitions=1, drift={"cooldown_s": 60, "hysteresis": 2})


def _rows(seed: int, shift: float = 0.0) -> np.ndarray:
    X = np.random.default_rng(seed).normal(size=(ROWS, 5))
    X[:, 1] += shift
    return X


def _add(
    registry: FilesystemRegistry,
    spec: StreamSpec,
    seed: int,
    shift: float = 0.0,
    metrics: dict | None = None,
    **extra,
) -> Version:
    """Register the next version with the profile of its batch and its prequential metrics."""
    head = registry.head(spec.name)
    meta = {
        "profile": {"features": profile_features(_rows(seed, shift), spec.feature_names)},
        "metrics": metrics if metrics is not None else {"accuracy": 0.9, "rows": ROWS},
        "offsets": {"learned": {}},
        **extra,
    }
    version = registry.register(spec.name, head.name if head else None, b"onnx", None, meta)
    if registry.champion(spec.name) is None:
        registry.set_champion(spec.name, version.name, reason="first version")
    return version


def _action(registry: FilesystemRegistry, spec: StreamSpec, action: str, **record) -> None:
    registry.record_decision(spec.name, {"kind": ACTION_KIND, "action": action, **record})
    time.sleep(0.01)  # versions registered afterwards are newer than the action (ms timestamps)


def test_an_empty_stream_has_no_evidence(registry, spec) -> None:
    evidence = gather(registry, spec)

    assert (evidence.champion, evidence.head, evidence.last_action, evidence.comparison) == (None, None, None, None)
    assert evidence.drift_reports == [] and evidence.changes == [] and evidence.change_version is None
    assert evidence.config == DecisionConfig.from_spec(spec.drift)
    assert describe(evidence) == {
        "champion": None,
        "head": None,
        "drifted_batches": 0,
        "psi_max": None,
        "changes": [],
        "comparison": None,
    }


def test_last_action_is_the_newest_drift_action(registry, spec) -> None:
    assert last_action(registry, spec.name) is None
    registry.record_decision(spec.name, {"kind": "promotion_gate", "candidate": "v2"})
    _action(registry, spec, "retrain", from_version="v3", to_version="v4")
    _action(registry, spec, "rollback", from_version="v4", to_version="v3")
    registry.record_decision(spec.name, {"kind": "champion_check", "champion": "v3"})

    action = last_action(registry, spec.name)

    assert (action.action, action.from_version, action.to_version) == ("rollback", "v4", "v3")
    recorded = [d for d in registry.decisions(spec.name) if d["kind"] == ACTION_KIND][-1]["at"]
    assert action.at == pytest.approx(datetime.fromisoformat(recorded).timestamp())
    assert abs(action.at - time.time()) < 60


def test_data_drift_of_batches_after_the_champion(registry, spec) -> None:
    _add(registry, spec, seed=0)  # v1, the champion: the reference profile
    _add(registry, spec, seed=1)  # v2: same distribution
    _add(registry, spec, seed=2, shift=2.0)  # v3: x1 shifted
    _add(registry, spec, seed=3, shift=2.0)  # v4

    evidence = gather(registry, spec)

    assert evidence.champion == "v1" and evidence.head == "v4"
    assert [r.drifted for r in evidence.drift_reports] == [False, True, True]  # v1 is the reference, not a report
    assert all(r.drifted_features == ("x1",) for r in evidence.drift_reports[1:])
    assert evidence.change_version == "v3", "the retrain window starts where the drifted run began"
    summary = describe(evidence)
    assert summary["champion"] == "v1" and summary["head"] == "v4" and summary["drifted_batches"] == 2
    assert summary["psi_max"] >= spec.drift.psi_major
    json.dumps(summary)  # it goes into run config and tags


def test_a_broken_drifted_run_restarts_the_change_version(registry, spec) -> None:
    _add(registry, spec, seed=0)
    _add(registry, spec, seed=1, shift=2.0)  # v2 drifted
    _add(registry, spec, seed=2)  # v3 not: the run is broken
    _add(registry, spec, seed=3, shift=2.0)  # v4 drifted again

    evidence = gather(registry, spec)

    assert [r.drifted for r in evidence.drift_reports] == [True, False, True]
    assert evidence.change_version == "v4"


def test_only_batches_newer_than_the_champion_and_the_recent_ones_are_compared(registry, spec) -> None:
    for seed in range(6):
        _add(registry, spec, seed=seed, shift=2.0 if seed == 1 else 0.0)
    registry.set_champion(spec.name, "v3", reason="promoted")

    evidence = gather(registry, spec)
    assert len(evidence.drift_reports) == 3  # v4..v6; the drifted v2 is behind the champion
    assert not any(r.drifted for r in evidence.drift_reports)
    assert len(gather(registry, spec, recent=2).drift_reports) == 2


def test_evidence_from_before_the_last_action_is_left_out(registry, spec) -> None:
    _add(registry, spec, seed=0)
    _add(registry, spec, seed=1, shift=2.0)
    _add(registry, spec, seed=2, shift=2.0)
    _action(registry, spec, "retrain", from_version="v3", to_version="v4")
    _add(registry, spec, seed=3, metrics={}, retrain={"mode": "fresh"})  # v4, the retrain itself
    _add(registry, spec, seed=4, shift=2.0)  # v5

    evidence = gather(registry, spec)

    assert evidence.last_action.action == "retrain"
    assert len(evidence.drift_reports) == 2 and evidence.drift_reports[-1].drifted  # v4 and v5 only
    assert evidence.change_version == "v5"


def _accuracy_series(registry, spec, accuracies: list[float]) -> None:
    for i, accuracy in enumerate(accuracies):
        _add(registry, spec, seed=i, metrics={"accuracy": accuracy, "rows": ROWS})


def test_a_jump_in_the_prequential_error_is_a_concept_change(registry, spec) -> None:
    _accuracy_series(registry, spec, [0.92] * 8 + [0.5] * 3)

    evidence = gather(registry, spec)

    (change,) = evidence.changes
    assert change.metric == "error_rate" and change.detector == spec.drift.detector
    assert change.index == 8 and change.n == 11  # the first batch of the new concept
    assert change.mean_before == pytest.approx(0.08) and change.value_at == pytest.approx(0.5)
    v9 = registry.get(spec.name, "v9")
    assert change.at == pytest.approx(datetime.fromisoformat(v9.meta["created_at"]).timestamp())
    assert describe(evidence)["changes"] == [change.describe()]


def test_a_stable_error_and_retrain_versions_are_no_concept_change(registry, spec) -> None:
    _accuracy_series(registry, spec, [0.92] * 11)
    _add(registry, spec, seed=99, metrics={"accuracy": 0.1, "rows": ROWS}, retrain={"mode": "fresh"})

    assert gather(registry, spec).changes == []


def test_a_pure_concept_change_names_the_batch_it_was_detected_in(registry, spec) -> None:
    _accuracy_series(registry, spec, [0.92] * 8 + [0.5] * 3)  # features keep their distribution

    evidence = gather(registry, spec)

    assert not any(r.drifted for r in evidence.drift_reports)
    (change,) = evidence.changes
    assert evidence.change_version == f"v{change.index + 1}"  # v9: retrain from the new concept on
    assert change.start_index == change.index == 8


def test_the_change_point_is_where_the_error_rose_not_where_it_was_detected(registry, spec) -> None:
    # A gradual start: ADWIN needs a few batches at a small rise before it is sure.
    _accuracy_series(registry, spec, [0.92] * 8 + [0.86, 0.86, 0.86, 0.86, 0.86, 0.86])

    (change,) = gather(registry, spec).changes

    assert change.index > 8 and change.start_index == 8
    assert gather(registry, spec).change_version == "v9"


def test_a_regression_streams_mae_series(registry) -> None:
    spec = synthetic_spec(
        partitions=1,
        task="regression",
        label={},
        model={"estimator": "sgd_regressor"},
        drift={"detector": "page_hinkley", "detector_params": {"min_instances": 5, "threshold": 1.0, "delta": 0.05}},
    )
    for i, mae in enumerate([1.0] * 8 + [3.0] * 3):
        _add(registry, spec, seed=i, metrics={"mae": mae, "rows": ROWS})

    (change,) = gather(registry, spec).changes

    assert change.metric == "mae" and change.index == 8 and change.value_at == 3.0


def _live(registry, spec, versions: dict[str, tuple[int, int]]) -> None:
    """One checkpoint line of the label joiner: per version (rows joined, correct predictions)."""
    record = {
        "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "versions": {v: {"rows": rows, "correct": correct} for v, (rows, correct) in versions.items()},
    }
    LiveStore(registry.root, spec.name).append(record)


def test_the_live_labelled_error_of_the_served_champion(registry, spec) -> None:
    _add(registry, spec, seed=0)
    _add(registry, spec, seed=1)  # v2: not served, its live error does not count
    for _ in range(8):
        _live(registry, spec, {"v1": (500, 460), "v2": (500, 100)})
    for _ in range(3):
        _live(registry, spec, {"v1": (500, 250)})

    evidence = gather(registry, spec)

    (change,) = evidence.changes
    assert change.metric == "live_error_rate" and change.index == 8
    assert change.mean_before == pytest.approx(0.08) and change.value_at == pytest.approx(0.5)


def test_live_checkpoints_from_before_the_last_action_are_left_out(registry, spec) -> None:
    _add(registry, spec, seed=0)
    for _ in range(8):
        _live(registry, spec, {"v1": (500, 460)})
    for _ in range(3):
        _live(registry, spec, {"v1": (500, 250)})
    time.sleep(0.01)
    _action(registry, spec, "retrain", from_version="v1", to_version="v2")
    _live(registry, spec, {"v1": (500, 250)})

    assert gather(registry, spec).changes == []


def test_the_champions_comparison_with_its_predecessor(registry, spec) -> None:
    _add(registry, spec, seed=0)
    _add(registry, spec, seed=1)
    registry.set_champion(spec.name, "v2", reason="won the gate")
    tested = [mcnemar_counts(15, 5, 100).to_dict(), mcnemar_counts(100, 10, 300).to_dict()]
    checks = [
        {"champion": "v2", "predecessor": "v1", "champion_value": 0.8, "predecessor_value": 0.9, "rows": 100},
        {"champion": "v2", "predecessor": "v1", "champion_value": 0.6, "predecessor_value": 0.9, "rows": 300},
        {"champion": "v2", "predecessor": "v1", "champion_value": None, "predecessor_value": 0.9, "rows": 900},
        {"champion": "v2", "predecessor": "v0", "champion_value": 0.1, "predecessor_value": 0.9, "rows": 900},
    ]
    for check, test in zip(checks, tested + [None, None], strict=True):
        registry.record_decision(spec.name, {"kind": "champion_check", "metric": "accuracy", "test": test, **check})

    evidence = gather(registry, spec)

    comparison = evidence.comparison
    assert (comparison.champion, comparison.predecessor, comparison.metric) == ("v2", "v1", "accuracy")
    assert comparison.test == mcnemar_counts(115, 15, 400), "the two batches' discordant pairs, summed"
    assert comparison.rows == 400  # the unscored check and the other pair do not count
    assert comparison.champion_value == pytest.approx((0.8 * 100 + 0.6 * 300) / 400)
    assert comparison.predecessor_value == pytest.approx(0.9)
    assert comparison.higher_is_better is True
    promoted = registry.champion_history(spec.name)[-1]["at"]
    assert comparison.promoted_at == pytest.approx(datetime.fromisoformat(promoted).timestamp())
    assert describe(evidence)["comparison"] == {
        "metric": "accuracy",
        "champion": pytest.approx(0.65),
        "predecessor": pytest.approx(0.9),
        "rows": 400,
        "test": "McNemar mid-p",
        "p_value": comparison.test.p_value,
    }


def test_a_check_recorded_without_a_paired_test_leaves_the_comparison_untested(registry, spec) -> None:
    _add(registry, spec, seed=0)
    _add(registry, spec, seed=1)
    registry.set_champion(spec.name, "v2", reason="won the gate")
    check = {"champion": "v2", "predecessor": "v1", "champion_value": 0.6, "predecessor_value": 0.9, "rows": 300}
    registry.record_decision(spec.name, {"kind": "champion_check", "metric": "accuracy", **check})
    test = mcnemar_counts(100, 10, 300).to_dict()
    registry.record_decision(spec.name, {"kind": "champion_check", "metric": "accuracy", "test": test, **check})
    # Combining only the tested batch would test fewer rows than the comparison states.
    assert gather(registry, spec).comparison.test is None


def test_no_comparison_without_a_predecessor_or_checks(registry, spec) -> None:
    _add(registry, spec, seed=0)
    assert gather(registry, spec).comparison is None  # the first champion has no predecessor
    _add(registry, spec, seed=1)
    registry.set_champion(spec.name, "v2", reason="won the gate")
    assert gather(registry, spec).comparison is None  # promoted, but not checked on a batch yet


def test_a_lower_is_better_metric_is_compared_that_way(registry, spec) -> None:
    _add(registry, spec, seed=0)
    _add(registry, spec, seed=1)
    registry.set_champion(spec.name, "v2", reason="won the gate")
    registry.record_decision(
        spec.name,
        {
            "kind": "champion_check",
            "champion": "v2",
            "predecessor": "v1",
            "metric": "log_loss",
            "champion_value": 0.7,
            "predecessor_value": 0.3,
            "rows": 250,
        },
    )

    comparison = gather(registry, spec).comparison

    assert comparison.metric == "log_loss" and comparison.higher_is_better is False and comparison.rows == 250


def test_after_a_first_cut_retrain_the_cooldown_runs_from_the_action_before_and_the_series_from_the_cut(
    registry, spec
) -> None:
    _add(registry, spec, seed=0)  # v1
    _action(registry, spec, "retrain", from_version="v1", to_version="v2")
    _add(registry, spec, seed=1, metrics={}, retrain={"mode": "fresh"})  # v2, the retrain
    cut = _add(registry, spec, seed=2, metrics={"accuracy": 0.9, "rows": ROWS})  # v3, the cut batch
    _action(registry, spec, "retrain", from_version="v3", to_version="v4", after_cut=True, cut_version=cut.name)
    _add(registry, spec, seed=3, metrics={}, retrain={"mode": "fresh"})  # v4, the cut's retrain
    _add(registry, spec, seed=4, metrics={"accuracy": 0.3, "rows": ROWS})  # v5: the retrained model errs again

    evidence = gather(registry, spec)

    assert evidence.last_action.to_version == "v2", "a first cut's retrain does not restart the cooldown"
    assert evidence.changes and evidence.change_version == "v5", "the rise over the cut batch's level"
    assert len(evidence.drift_reports) == 2, "v4 and v5: evidence counts from the cut's retrain (rule 4)"


def test_a_derived_feature_whose_windows_were_filling_in_the_reference_is_not_judged(registry) -> None:
    """A 1-hour mean profiled in a stream's first minutes is mostly its empty-window default: a
    probe's stream retrained on `psi 4.84` two minutes in. The version says it was filling."""
    derived = [{"name": "x0_mean_1h", "of": "x0", "by": "device", "agg": "mean", "window": "1h"}]
    spec = synthetic_spec(partitions=1, derived=derived, event_time={"field": "ts"})

    def add(filled: float, filling: bool) -> None:
        X = np.c_[_rows(len(registry.versions(spec.name))), np.full(ROWS, 0.0)]
        X[: int(filled * ROWS), -1] = np.random.default_rng(0).normal(3.0, 1.0, int(filled * ROWS))
        profile = {
            "features": profile_features(X, spec.input_names),
            **({"filling": ["x0_mean_1h"]} if filling else {}),
        }
        meta = {"profile": profile, "metrics": {"accuracy": 0.9, "rows": ROWS}, "offsets": {"learned": {}}}
        head = registry.head(spec.name)
        version = registry.register(spec.name, head.name if head else None, b"onnx", None, meta)
        if registry.champion(spec.name) is None:
            registry.set_champion(spec.name, version.name, reason="first version")

    add(filled=0.05, filling=True)  # v1, the champion: nearly every window empty
    add(filled=1.0, filling=False)  # v2: every window holds an hour

    (report,) = gather(registry, spec).drift_reports
    assert not report.drifted, report.reasons()
    assert "still filling in v1's batch" in report.feature("x0_mean_1h").notes[0]

    add(filled=1.0, filling=False)  # v3: judged against v2's profile, the first whose windows had filled
    add(filled=0.05, filling=False)  # v4: windows empty again with no warm-up to explain it (a real change)
    reports = gather(registry, spec).drift_reports
    assert [r.drifted_features for r in reports] == [(), (), ("x0_mean_1h",)]
    assert "judged against v2's" in reports[0].feature("x0_mean_1h").notes[0]
    assert reports[1].feature("x0_mean_1h").psi is not None


def test_a_tick_does_not_read_again_which_features_every_later_version_was_filling(registry, monkeypatch) -> None:
    """While the champion's windows were filling, a tick looks through every later version for the
    first warm one: with 1-day windows and 1-minute batches, 1,440 profiles each tick (on MLflow a
    download each; 2.5 s a tick at 60 versions). A version never changes, so later ticks do not."""
    derived = [{"name": "x0_mean_1d", "of": "x0", "by": "device", "agg": "mean", "window": "1d"}]
    spec = synthetic_spec(partitions=1, derived=derived, event_time={"field": "ts"})
    for seed in range(30):
        head = registry.head(spec.name)
        profile = {"features": profile_features(np.c_[_rows(seed), _rows(seed)[:, 0]], spec.input_names)}
        meta = {"profile": {**profile, "filling": ["x0_mean_1d"]}, "metrics": {"accuracy": 0.9, "rows": ROWS}}
        version = registry.register(spec.name, head.name if head else None, b"onnx", None, {**meta, "offsets": {}})
        if registry.champion(spec.name) is None:
            registry.set_champion(spec.name, version.name, reason="first version")
    first = gather(FilesystemRegistry(registry.root), spec)

    read: list[str] = []
    original = FilesystemRegistry.profile
    monkeypatch.setattr(
        FilesystemRegistry,
        "profile",
        lambda self, stream, version: read.append(version) or original(self, stream, version),
    )
    again = gather(FilesystemRegistry(registry.root), spec)
    assert len(read) == 10, f"only the 10 recent batches' samples, not every later version's: {read}"
    assert [r.reasons() for r in again.drift_reports] == [r.reasons() for r in first.drift_reports]
    assert all("still filling" in r.feature("x0_mean_1d").notes[0] for r in again.drift_reports)
