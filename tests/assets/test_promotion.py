"""The champion gate inside training runs: decided in the run that trains the candidate, on the
batch's tail that neither the candidate nor the champion has learned; the tail is learned by the
next batch, so every row is learned exactly once."""

from __future__ import annotations

import numpy as np
import pytest

from dagster_project.kafka.offsets import NoBatch
from dagster_project.learning.estimators import build_model, partial_fit
from dagster_project.onnx.export import export_onnx
from dagster_project.registry.promotion import tail_split
from dagster_project.registry.store import expected_offsets
from dagster_project.resources import KafkaResource
from dagster_project.spec import PromotionSpec
from tests.conftest import synthetic_spec
from tests.dagster_project.serving.support import synthetic_rows
from tests.helpers import high_waters, kafka_sensor_tick, produce_synthetic, run_batch

TAIL = {"tail_rows": 100, "tail_fraction": 0.2, "min_rows": 50}


@pytest.fixture
def spec():
    return synthetic_spec(promotion=TAIL, batch={"rows": 200, "max_rows": 600, "max_wait_s": 0.2})


def _next(settings, registry, spec, rows_per_partition: int):
    """The next batch from the head's learned offsets: up to `rows_per_partition` rows of each partition."""
    _, expected, _ = expected_offsets(registry, spec.name)
    ends = high_waters(settings, spec.events_topic)
    starts = {p: expected.get(p, 0) for p in ends}
    return {p: (starts[p], min(ends[p], starts[p] + rows_per_partition)) for p in ends if ends[p] > starts[p]}


def test_the_tail_is_shared_by_rows_and_skipped_when_too_small():
    assert tail_split({0: (0, 300), 1: (100, 400)}, 250, 0.2, 50) == {0: 240, 1: 340}  # 120 of 600
    assert tail_split({0: (0, 900), 1: (0, 100)}, 250, 0.2, 50) == {0: 720, 1: 80}  # 200 (20 %), by rows
    assert tail_split({0: (0, 201), 1: (0, 2)}, 250, 0.2, 5) == {0: 161, 1: 2}  # 40 rows: remainders
    # 20 % of 200 is 40 < min_rows: raised to 50, else batches of 200 could never promote anything
    assert tail_split({0: (0, 100), 1: (0, 100)}, 250, 0.2, 50) == {0: 75, 1: 75}
    assert tail_split({0: (0, 60), 1: (0, 39)}, 250, 0.2, 50) == {0: 60, 1: 39}  # 99 < 2 x 50: none
    assert tail_split({0: (0, 100)}, 250, 0.0, 50) == {0: 100}  # tail_fraction 0: off
    assert tail_split({0: (0, 300)}, 40, 0.2, 50) == {0: 300}  # tail_rows below min_rows: off
    assert tail_split({0: (0, 1000)}, 0, 0.2, 50) == {0: 1000}  # tail_rows 0: off


@pytest.mark.one_broker  # the gate's decision, not the broker: exactly-once across tails runs on both
def test_a_candidate_within_the_margin_is_promoted_in_the_run_that_trains_it(
    kafka_settings, spec, registry, stream_defs, instance
):
    produce_synthetic(kafka_settings, spec, 1500)
    assert run_batch(stream_defs, spec, _next(kafka_settings, registry, spec, 250), instance).success
    v1 = registry.head(spec.name)
    assert registry.champion(spec.name) == "v1"  # the first version: nothing to compare with
    assert v1.learned == {0: 200, 1: 200}, "the batch's last 100 rows are its tail: not learned by v1"
    assert v1.meta["offsets"]["batch"] == {"0": [0, 250], "1": [0, 250]}

    result = run_batch(stream_defs, spec, _next(kafka_settings, registry, spec, 300), instance)

    assert registry.champion(spec.name) == "v2", "decided in the run that trained v2, not on the next batch"
    (decision,) = [d for d in registry.decisions(spec.name) if d["kind"] == "promotion_gate"]
    assert decision["candidate"] == "v2" and decision["champion"] == "v1" and decision["promote"]
    assert decision["rows"] == 100  # the tail of v2's batch: [450, 500) of each partition
    for side in ("candidate_metrics", "champion_metrics"):  # every metric of both models
        assert {"rows", "accuracy", "roc_auc", "log_loss"} <= set(decision[side]), decision[side]
    assert decision["candidate_value"] == decision["candidate_metrics"]["roc_auc"]
    # Both rank this easy stream almost perfectly: ahead or within the margin, promoted; the test is
    # recorded (champion A vs candidate B) but only a shortfall beyond the margin consults it.
    test = decision["test"]
    assert test["test"] == "DeLong" and test["rows"] == 100 and test["p_value"] is not None
    cand, champ = decision["candidate_value"], decision["champion_value"]
    said = (
        f", ahead by {cand - champ:.4f}"
        if cand > champ and f"{cand:.4f}" != f"{champ:.4f}"
        else " (within margin 0.01)"
    )
    assert decision["significance"] == 0.05 and decision["reason"].endswith(f"on 100 unseen rows{said}")
    step = decision["adaptive_sgd"]  # the default learner's step in the promoted candidate, with its reason
    assert step["serving_passes"] in (8, 2) and set(step["recent_loss"]) == {"8_passes", "2_passes"}
    assert registry.champion_history(spec.name)[-1]["evidence"]["adaptive_sgd"] == step
    v2 = registry.head(spec.name)
    assert v2.meta["offsets"]["batch"] == {"0": [200, 500], "1": [200, 500]}, "v2 learned v1's tail first"
    assert v2.learned == {0: 450, 1: 450}
    gate = result.asset_materializations_for_node(f"{spec.name}__champion")[0]
    assert gate.metadata["promoted"].value == 1 and gate.metadata["unseen_rows"].value == 100
    assert gate.metadata["p_value"].value == test["p_value"] and gate.metadata["test"].value == "DeLong"


DEFAULT_TAIL = PromotionSpec().model_dump(include={"tail_rows", "tail_fraction", "min_rows"})  # the product's


@pytest.mark.parametrize("spec", [synthetic_spec(promotion=DEFAULT_TAIL, batch={"rows": 200, "max_rows": 200})])
@pytest.mark.one_broker  # the gate's decision, not the broker: exactly-once across tails runs on both
def test_batches_of_200_rows_with_the_default_gate_promote_their_candidates(
    kafka_settings, spec, registry, stream_defs, instance
):
    """20 % of 200 rows is below the gate's 50 unseen rows: the tail is raised to 50, so small batches
    promote (before, every gate was deferred and v1 served for ever)."""
    produce_synthetic(kafka_settings, spec, 600)
    for _ in range(3):
        assert run_batch(stream_defs, spec, _next(kafka_settings, registry, spec, 100), instance).success
    gates = [d for d in registry.decisions(spec.name) if d["kind"] == "promotion_gate"]
    assert [d["rows"] for d in gates] == [50, 50], gates
    assert registry.champion(spec.name) == "v3", [d["reason"] for d in gates]


def _saboteur(spec):
    """A model trained on inverted labels and made a hundred times as sure: it ranks the synthetic
    stream backwards, and one more batch of the true concept (eight passes) does not set it right."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 5))
    y = (X @ np.array([1.5, -2.0, 1.0, 0.0, 0.5]) <= 0).astype(int)
    model = partial_fit(build_model(spec), X, y, np.array([0, 1]), spec.model.passes_per_batch)
    estimator = model.named_steps["estimator"]
    estimator.coef_, estimator.intercept_ = estimator.coef_ * 100, estimator.intercept_ * 100
    return model


@pytest.mark.one_broker  # the gate's decision, not the broker: exactly-once across tails runs on both
def test_a_really_better_candidate_is_promoted_with_the_tests_p_value(
    kafka_settings, spec, registry, stream_defs, instance
):
    produce_synthetic(kafka_settings, spec, 1500)
    assert run_batch(stream_defs, spec, _next(kafka_settings, registry, spec, 250), instance).success
    v1 = registry.head(spec.name)
    # A bad champion (v2, served by hand) while the head (v3) is v1's good model again.
    bad = _saboteur(spec)
    registry.register(spec.name, "v1", export_onnx(bad, 5), bad, {**v1.meta, "metrics": {}})
    registry.set_champion(spec.name, "v2", reason="manual: a bad model for the test")
    good = registry.load_estimator(spec.name, "v1")
    registry.register(spec.name, "v2", export_onnx(good, 5), good, {**v1.meta, "metrics": {}})

    result = run_batch(stream_defs, spec, _next(kafka_settings, registry, spec, 300), instance)

    assert registry.champion(spec.name) == "v4"
    (decision,) = [d for d in registry.decisions(spec.name) if d["kind"] == "promotion_gate"]
    # The test asks whether the champion (A) is better than the candidate (B): it is far from it.
    assert decision["promote"] and decision["champion"] == "v2" and decision["test"]["p_value"] > 1 - 1e-6
    assert decision["test"]["difference"] < -0.5
    assert decision["reason"].startswith("v4 promoted: roc_auc ")
    ahead = decision["candidate_value"] - decision["champion_value"]  # far ahead: "within margin" read as behind
    assert decision["reason"].endswith(f"on 100 unseen rows, ahead by {ahead:.4f}")
    gate = result.asset_materializations_for_node(f"{spec.name}__champion")[0]
    assert gate.metadata["promoted"].value == 1 and gate.metadata["p_value"].value > 1 - 1e-6
    assert registry.champion_history(spec.name)[-1]["reason"] == decision["reason"]


@pytest.mark.one_broker  # the gate's decision, not the broker: exactly-once across tails runs on both
def test_a_really_worse_candidate_stays_a_candidate_with_the_tests_p_value(
    kafka_settings, spec, registry, stream_defs, instance
):
    produce_synthetic(kafka_settings, spec, 1000)
    assert run_batch(stream_defs, spec, _next(kafka_settings, registry, spec, 250), instance).success
    v1 = registry.head(spec.name)
    bad = _saboteur(spec)  # registered as the head at v1's offsets
    registry.register(spec.name, "v1", export_onnx(bad, 5), bad, {**v1.meta, "metrics": {}})

    assert run_batch(stream_defs, spec, _next(kafka_settings, registry, spec, 250), instance).success

    assert registry.champion(spec.name) == "v1"
    (decision,) = [d for d in registry.decisions(spec.name) if d["kind"] == "promotion_gate"]
    assert not decision["promote"] and decision["candidate"] == "v3"  # the saboteur's child
    assert decision["champion_value"] - decision["candidate_value"] > 0.5
    p = decision["test"]["p_value"]  # champion (A) significantly better than the candidate (B)
    assert decision["test"]["test"] == "DeLong" and p < 1e-6 and decision["test"]["difference"] > 0.5
    assert decision["reason"].startswith("kept v1 (v3 stays a candidate): v3 roc_auc ")
    assert decision["reason"].endswith(f"> margin 0.01 and significant (DeLong p={p:.1e} < 0.05)")


def _produce_three_classes(settings, spec, rows: int) -> None:
    """Rows of a three-class concept (the class whose feature is largest, a tenth of labels noise)."""
    from dagster_project.dev.producer import produce
    from dagster_project.ingest.events import make_event

    rng = np.random.default_rng(3)
    X = rng.normal(size=(rows, 5))
    y = np.where(rng.random(rows) < 0.1, rng.integers(0, 3, rows), np.argmax(X[:, :3], axis=1))
    pairs = (
        (f"e{i}".encode(), make_event(f"e{i}", {f"x{j}": float(X[i, j]) for j in range(5)}, int(y[i]), 0.0))
        for i in range(rows)
    )
    produce(settings, spec, pairs)


@pytest.mark.one_broker  # the gate's decision, not the broker: exactly-once across tails runs on both
def test_a_multiclass_stream_gated_on_roc_auc_gets_the_macro_delong_test(
    kafka_settings, kafka_bootstrap, registry, instance
):
    """`promotion.metric: roc_auc` on three classes: the gate and the champion check (the rollback's
    evidence) compare macro one-vs-rest AUCs with a real paired test, not the margin alone."""
    from dagster_project.registry.significance import MACRO_DELONG
    from tests.helpers import defs_for

    spec = synthetic_spec(
        label={"classes": [0, 1, 2]},
        promotion={**TAIL, "metric": "roc_auc"},
        batch={"rows": 200, "max_rows": 600, "max_wait_s": 0.2},
    )
    defs = defs_for(spec, kafka_bootstrap, registry)
    _produce_three_classes(kafka_settings, spec, 1500)
    for _ in range(3):  # v1 champion; v2 gated against v1; v3 gated against v2, v2 checked against v1
        assert run_batch(defs, spec, _next(kafka_settings, registry, spec, 250), instance).success

    gates = [d for d in registry.decisions(spec.name) if d["kind"] == "promotion_gate"]
    assert [d["candidate"] for d in gates] == ["v2", "v3"]
    for decision in gates:
        assert decision["candidate_value"] == decision["candidate_metrics"]["roc_auc"] > 0.7
        assert decision["test"]["test"] == MACRO_DELONG and decision["test"]["rows"] == 100
        assert decision["test"]["p_value"] is not None and sum(decision["test"]["detail"]["class_rows"]) == 100
    # The run that gated v3 first checked the newly promoted v2 against v1 on its whole batch: a
    # rollback's evidence, which the drift sensor combines over batches (`monitors.evidence`).
    (check,) = [d for d in registry.decisions(spec.name) if d["kind"] == "champion_check"]
    assert (check["champion"], check["predecessor"], check["metric"]) == ("v2", "v1", "roc_auc")
    assert check["champion_value"] == check["champion_metrics"]["roc_auc"] > 0.7
    assert check["test"]["test"] == MACRO_DELONG and check["test"]["p_value"] is not None


def test_every_row_is_learned_exactly_once_across_tails(kafka_settings, kafka_bootstrap, spec, registry, instance):
    """The Kafka sensor plans each batch from the head's learned offsets: the tail of batch k is
    learned by version k+1, and after the stream is drained every produced row was learned once."""
    from tests.helpers import defs_for

    produced = produce_synthetic(kafka_settings, spec, 1700)
    defs = defs_for(spec, kafka_bootstrap, registry)
    job = defs.resolve_job_def(f"{spec.name}_training")
    kafka = KafkaResource(bootstrap=kafka_bootstrap)
    import time

    for _ in range(20):
        result = kafka_sensor_tick(defs, spec, instance, kafka, registry)
        if not getattr(result, "run_requests", None):
            assert "caught up" in str(getattr(result, "skip_message", result)) or isinstance(result, NoBatch)
            break
        (request,) = result.run_requests
        assert job.execute_in_process(run_config=request.run_config, instance=instance, tags=request.tags).success
        time.sleep(0.25)  # batch.max_wait_s: the last tail waits that long before it is planned
    else:
        pytest.fail("the stream was not drained in 20 batches")

    versions = registry.versions(spec.name)
    assert len(versions) >= 4
    ends = high_waters(kafka_settings, spec.events_topic)
    for p in ends:
        learned = [
            (v.meta["offsets"]["batch"][str(p)][0], v.learned[p])
            for v in versions
            if str(p) in v.meta["offsets"]["batch"]
        ]
        covered = [o for s, e in learned for o in range(s, e)]
        assert covered == list(range(ends[p])), f"partition {p}: every offset learned once, in order"
    for before, after in zip(versions, versions[1:], strict=False):
        for p, (_, end) in ((int(p), r) for p, r in before.meta["offsets"]["batch"].items()):
            if end > before.learned[p]:  # the tail of `before` is learned by `after`
                start, _ = after.meta["offsets"]["batch"][str(p)]
                assert start == before.learned[p] and after.learned[p] >= end
    assert versions[-1].meta["rows_learned_total"] == produced
    assert sum(v.meta["rows"]["read"] for v in versions) == produced, "the exporter's row counts stay exactly-once"
    gates = {d["candidate"]: d for d in registry.decisions(spec.name) if d["kind"] == "promotion_gate"}
    tailed = [v.name for v in versions[1:] if v.meta["rows"]["tail"] >= spec.promotion.min_rows]
    assert tailed and all(name in gates for name in tailed), "each version with a tail was gated in its own run"


def test_a_batch_with_a_tail_is_not_learned_twice_when_its_run_is_re_executed(
    kafka_settings, spec, registry, stream_defs, instance
):
    produce_synthetic(kafka_settings, spec, 1000)
    first = _next(kafka_settings, registry, spec, 250)
    assert run_batch(stream_defs, spec, first, instance).success
    second = _next(kafka_settings, registry, spec, 250)
    assert run_batch(stream_defs, spec, second, instance).success
    head = registry.head(spec.name)

    again = run_batch(stream_defs, spec, second, instance)  # its end lies past the head's learned offsets

    assert again.success and registry.head(spec.name) == head, "the learned part is behind the head: skipped"
    check = again.get_asset_check_evaluations()[0]
    assert "already learned" in check.description


def test_the_champion_check_scores_a_bounded_even_sample_of_a_large_batch():
    from types import SimpleNamespace

    import numpy as np

    from assets.promotion import _all_rows

    n = 120_000
    X = np.arange(n, dtype=np.float32).reshape(-1, 1)
    labelled = np.ones(n, dtype=bool)
    labelled[::3] = False  # unlabelled rows are never scored
    tail = SimpleNamespace(X=X[:10] + n, y=np.ones(10), labelled=np.ones(10, dtype=bool), rows=10)
    batch = SimpleNamespace(X=X, y=np.zeros(n), labelled=labelled, rows=n, tail=tail)
    Xs, ys = _all_rows(batch, max_rows=1_000)
    assert len(Xs) == len(ys) == 1_000
    assert Xs[0, 0] == 1 and Xs[-1, 0] == n + 9, "the sample spans the batch and its tail"
    assert np.all(np.diff(Xs[:, 0]) > 0) and not np.any(Xs[:, 0][Xs[:, 0] < n] % 3 == 0)
    assert np.array_equal(_all_rows(batch, max_rows=1_000)[0], Xs), "a retry checks the same rows"
    small, _ = _all_rows(batch, max_rows=10**6)
    assert len(small) == int(labelled.sum()) + 10


def _produce_xor(settings, spec, rows: int, seed: int = 11) -> int:
    """A non-linear concept (the sign of x0 * x1): no linear model beats chance, trees learn it."""
    from dagster_project.dev.producer import produce
    from dagster_project.ingest.events import make_event

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 5))
    labels = ((X[:, 0] > 0) ^ (X[:, 1] > 0)).astype(int)
    events = (
        (f"e{i}".encode(), make_event(f"e{i}", {f"x{j}": float(X[i, j]) for j in range(5)}, int(labels[i]), 0.0))
        for i in range(rows)
    )
    return produce(settings, spec, events)


FAMILIES = synthetic_spec(
    promotion={**TAIL, "metric": "accuracy"},
    batch={"rows": 200, "max_rows": 600, "max_wait_s": 0.2},
    model={
        "candidates": [
            {"estimator": "sgd_classifier", "name": "sgd"},
            {"estimator": "hist_gradient_boosting_classifier", "name": "hgb", "window_rows": 2000},
        ]
    },
)


@pytest.mark.parametrize("spec", [FAMILIES], ids=["families"])
@pytest.mark.one_broker  # the gate's decision, not the broker: exactly-once across tails runs on both
def test_families_compete_through_the_gate_on_unseen_rows_and_every_number_is_recorded(
    kafka_settings, spec, registry, stream_defs, instance
):
    from dagster_project.onnx.export import OnnxModel

    produced = _produce_xor(kafka_settings, spec, 1800)
    for _ in range(3):
        assert run_batch(stream_defs, spec, _next(kafka_settings, registry, spec, 300), instance).success

    v1, v2, v3 = registry.versions(spec.name)
    # On v1's tail, which no family has learned, the windowed family leads by far on this concept:
    # the first version already exports it (sgd, the first family, led before any evidence).
    choice = v1.meta["families"]["choice"]
    assert choice["previous"] == "sgd" and choice["leader"] == v1.meta["families"]["leader"] == "hgb"
    assert set(choice["values"]) == {"sgd", "hgb"} and choice["values"]["hgb"] > choice["values"]["sgd"] + 0.2
    assert choice["rows"] == 100 and choice["test"]["p_value"] < 0.05 and "hgb leads" in choice["reason"]
    gates = [d for d in registry.decisions(spec.name) if d["kind"] == "promotion_gate"]
    assert [g["candidate"] for g in gates] == ["v2", "v3"] and all(g["promote"] for g in gates)
    for gate in gates:  # every gate records every family's numbers on the same unseen rows
        assert gate["leader"] == "hgb" and set(gate["families"]["values"]) == {"sgd", "hgb"}
        assert gate["families"]["rows"] == gate["rows"] == 100
        assert gate["families"]["values"]["hgb"] == gate["candidate_value"]  # the version is its leader
    assert registry.champion(spec.name) == "v3"
    assert registry.champion_history(spec.name)[-1]["evidence"]["families"]["leader"] == "hgb"
    # Serving follows the champion whatever its family: the served ONNX graph is the boosted trees'.
    served = registry.load_onnx(spec.name, registry.champion(spec.name))
    assert b"TreeEnsemble" in served
    tail = np.random.default_rng(0).normal(size=(200, 5))
    expected = ((tail[:, 0] > 0) ^ (tail[:, 1] > 0)).astype(int)
    assert (OnnxModel(served).predict(tail).labels == expected).mean() > 0.8
    # The family that lost keeps learning: it can win later.
    members = registry.load_estimator(spec.name, "v3").members
    assert members["sgd"].named_steps["scaler"].n_samples_seen_ == v3.meta["rows_learned_total"]
    assert v3.meta["families"]["members"]["hgb"]["window"]["fitted_on"]["rows"] == v3.meta["rows_learned_total"]
    assert v3.meta["rows_learned_total"] == sum(v3.learned.values()) <= produced
    assert {"family_sgd_accuracy", "family_hgb_accuracy"} <= set(v3.meta["metrics"])


WAITING = synthetic_spec(
    label={"classes": [0, 1, 2]},
    promotion={**TAIL, "metric": "accuracy"},
    batch={"rows": 200, "max_rows": 600, "max_wait_s": 0.2},
    model={
        "candidates": [
            {"estimator": "hist_gradient_boosting_classifier", "name": "hgb", "window_rows": 2000},
            {"estimator": "sgd_classifier", "name": "sgd"},
        ]
    },
)


@pytest.mark.parametrize("spec", [WAITING], ids=["class_late"])
@pytest.mark.one_broker  # the gate's decision, not the broker: exactly-once across tails runs on both
def test_a_windowed_family_waits_for_a_class_the_first_batch_lacked_while_an_incremental_one_serves(
    kafka_settings, spec, registry, stream_defs, instance
):
    """Class 2 first appears after the first batch: the windowed family (the first declared) cannot fit
    a classifier of three classes yet, so the run failed and the stream halted. Now SGD leads and
    serves; the windowed family fits once a batch brings class 2."""
    from dagster_project.dev.producer import produce
    from dagster_project.ingest.events import make_event

    rng = np.random.default_rng(5)
    X = rng.normal(size=(2400, 5))
    labels = ((X[:, 0] > 0) ^ (X[:, 1] > 0)).astype(int)
    labels[1600:][X[1600:, 2] > 0.5] = 2  # class 2 only in the last third
    events = (
        (f"e{i}".encode(), make_event(f"e{i}", {f"x{j}": float(X[i, j]) for j in range(5)}, int(labels[i]), 0.0))
        for i in range(len(X))
    )
    produce(kafka_settings, spec, events)
    for _ in range(4):
        assert run_batch(stream_defs, spec, _next(kafka_settings, registry, spec, 400), instance).success

    first, *_, last = registry.versions(spec.name)
    waiting = first.meta["families"]["members"]["hgb"]["window"]
    assert first.meta["families"]["leader"] == "sgd" and waiting["reason"].startswith("waiting: the window")
    assert registry.load_onnx(spec.name, first.name)  # the version serves SGD meanwhile
    fitted = last.meta["families"]["members"]["hgb"]["window"]
    assert fitted["fitted_on"] is not None and fitted["refits"] >= 1, fitted


@pytest.mark.one_broker  # the gate's decision, not the broker: exactly-once across tails runs on both
def test_a_version_whose_tail_holds_one_class_is_promoted_untested(
    kafka_settings, spec, registry, stream_defs, instance
):
    """A rare positive class leaves the tail with negatives only, where ROC AUC is undefined: every
    gate deferred ("not computable on this batch") and v1 served for ever while later versions learned."""
    from dagster_project.dev.producer import produce
    from dagster_project.ingest.events import make_event

    rows = synthetic_rows(900)
    for start in (0, 300, 600):  # each batch's positives come first: its tail (the newest rows) holds none
        chunk = rows[start : start + 300]
        produce(
            kafka_settings,
            spec,
            ((eid.encode(), make_event(eid, features, int(i < 20), 0.0)) for i, (eid, features, _) in enumerate(chunk)),
        )
        assert run_batch(stream_defs, spec, _next(kafka_settings, registry, spec, 1000), instance).success

    gates = [d for d in registry.decisions(spec.name) if d["kind"] == "promotion_gate"]
    assert [g["candidate"] for g in gates] == ["v2", "v3"] and all(g["promote"] for g in gates), gates
    assert all("promoted untested: roc_auc is not computable on its" in g["reason"] for g in gates), gates
    assert registry.champion(spec.name) == "v3"


@pytest.mark.parametrize("spec", [synthetic_spec(promotion=TAIL)], ids=["tails"])
@pytest.mark.one_broker  # the gate's decision, not the broker: exactly-once across tails runs on both
def test_a_version_whose_tail_is_too_sparse_to_judge_is_promoted_untested(
    kafka_settings, spec, registry, stream_defs, instance
):
    """Nine events in ten unlabelled: a 60-row tail holds ~6 labelled rows, never promotion.min_rows.
    Every gate deferred and the first version served for ever; the head (which learned strictly
    more) is promoted by the gate's non-inferiority default, saying why."""
    from dagster_project.dev.producer import produce
    from dagster_project.ingest.events import make_event

    rows = synthetic_rows(900)
    events = (
        (eid.encode(), make_event(eid, features, label if i % 10 == 0 else None, 0.0))
        for i, (eid, features, label) in enumerate(rows)
    )
    produce(kafka_settings, spec, events)
    for _ in range(3):
        assert run_batch(stream_defs, spec, _next(kafka_settings, registry, spec, 150), instance).success

    gates = [d for d in registry.decisions(spec.name) if d["kind"] == "promotion_gate"]
    assert [g["candidate"] for g in gates] == ["v2", "v3"] and all(g["promote"] for g in gates)
    assert all("promoted untested: only" in g["reason"] and g["rows"] < 50 for g in gates), gates
    assert registry.champion(spec.name) == "v3"

    # Only the champion's own child: after a rollback the head's line is not the champion's, and an
    # untested promotion would undo the rollback on the next batch.
    assert registry.rollback(spec.name, reason="operator") == "v2"
    produce(kafka_settings, spec, ((f"x{i}".encode(), make_event(f"x{i}", rows[i][1], None, 0.0)) for i in range(300)))
    assert run_batch(stream_defs, spec, _next(kafka_settings, registry, spec, 150), instance).success
    last = [d for d in registry.decisions(spec.name) if d["kind"] == "promotion_gate"][-1]
    assert last["candidate"] == "v4" and not last["promote"] and "deferred" in last["reason"]
    assert registry.champion(spec.name) == "v2"


@pytest.mark.one_broker  # the gate's decision, not the broker: exactly-once across tails runs on both
def test_a_champion_a_person_chose_holds_against_another_line_within_the_margin(
    kafka_settings, spec, registry, stream_defs, instance, specs_dir
):
    """A rollback by hand lasted one batch: the rolled-back line's next version was promoted as
    "within margin" of the version the person chose. It must now beat it by more than the margin;
    an automatic choice still gives way within the margin."""
    from click.testing import CliRunner

    from dagster_project.cli import main

    produce_synthetic(kafka_settings, spec, 2400)
    for _ in range(3):
        assert run_batch(stream_defs, spec, _next(kafka_settings, registry, spec, 250), instance).success
    assert registry.champion(spec.name) == "v3"  # this easy stream: every version within the margin

    rolled = CliRunner().invoke(main, ["models", "rollback", spec.name, "--reason", "v3 misbehaves"])
    assert rolled.exit_code == 0, rolled.output
    assert registry.champion(spec.name) == "v2"
    before = len(registry.decisions(spec.name))
    assert run_batch(stream_defs, spec, _next(kafka_settings, registry, spec, 250), instance).success

    last = [d for d in registry.decisions(spec.name) if d["kind"] == "promotion_gate"][-1]
    assert last["candidate"] == "v4" and not last["promote"] and registry.champion(spec.name) == "v2"
    assert last["reason"].startswith("kept v2, chosen by ")
    assert "v4 did not grow from it since and must beat it" in last["reason"]
    # nor is it checked against the version it replaced: the drift monitor would roll back to v3
    assert not [d for d in registry.decisions(spec.name)[before:] if d["kind"] == "champion_check"]
    assert f"`streamfit models promote {spec.name} <version>` chooses again" in last["reason"]

    promoted = CliRunner().invoke(main, ["models", "promote", spec.name, "v4", "--reason", "fixed"])
    assert promoted.exit_code == 0, promoted.output
    assert run_batch(stream_defs, spec, _next(kafka_settings, registry, spec, 250), instance).success
    assert registry.champion(spec.name) == "v5", "grown from the chosen v4 since the choice: promoted"


def test_a_chosen_champion_s_line_is_what_grew_from_it_after_the_choice(tmp_path):
    """v1 <- v2 <- v3 <- v4 <- v5. A person chooses v3 after v4 was registered: v5 grew through v4,
    which the choice passed over, so it is not v3's line; had v3 been chosen before v4 existed (the
    head promoted by hand, its child then losing a gate), v5 would be."""
    import time

    from assets.promotion import _of_its_line
    from dagster_project.registry.store import FilesystemRegistry, _now
    from tests.dagster_project.registry.test_contract import register

    registry = FilesystemRegistry(tmp_path / "registry")
    stamps = {}
    parent = None
    for n in range(1, 6):
        parent = register(registry, "s", parent, {0: n}).name
        time.sleep(0.002)
        stamps[parent] = _now()  # a choice made just after this version was registered
        time.sleep(0.002)  # and before the next: both times are to the millisecond
    assert _of_its_line(registry, "s", "v4", "v3", stamps["v3"])
    assert _of_its_line(registry, "s", "v5", "v3", stamps["v3"])  # through v4, registered after the choice
    assert not _of_its_line(registry, "s", "v5", "v3", stamps["v4"])  # through v4, which the choice passed over
    assert not _of_its_line(registry, "s", "v5", "v2", stamps["v3"])  # a rollback to v2 rejected v3
    assert not _of_its_line(registry, "s", "v2", "v3", stamps["v1"])  # an ancestor is not its line


class _Registry:
    """Just what `decide_promotion` reads and writes, around a champion model."""

    def __init__(self, champion_model) -> None:
        self.model, self.champ, self.log = champion_model, "v1", []

    def champion(self, stream):
        return self.champ

    def load_estimator(self, stream, version):
        return self.model

    def set_champion(self, stream, version, reason, evidence=None):
        self.champ = version

    def record_decision(self, stream, decision):
        self.log.append(decision)

    def decisions(self, stream):
        return self.log


@pytest.mark.parametrize(
    ("settings", "concept"),
    [
        ({"task": "regression", "model": {"estimator": "sgd_regressor"}}, "linear"),  # roc_auc below
        (
            {
                "label": {"classes": [0, 1]},
                "model": {"estimator": "sgd_classifier", "params": {"loss": "hinge"}},
                "promotion": {"metric": "log_loss"},
            },
            "sign",
        ),
    ],
    ids=["roc_auc_on_regression", "log_loss_without_probabilities"],
)
def test_a_metric_the_models_can_never_give_still_defers(settings, concept) -> None:
    """Only a tail that lacks a class makes ROC AUC undefined for a reason promoting untested answers:
    a metric the stream can never compute promoted every version untested, however much worse."""
    from types import SimpleNamespace

    from assets.promotion import decide_promotion
    from dagster_project.spec import StreamSpec

    spec = StreamSpec(name="s", features=[{"name": "x"}], **settings)
    if spec.task == "regression":  # a spec refuses another task's metric now; the gate still defers on one
        spec = spec.model_copy(update={"promotion": spec.promotion.model_copy(update={"metric": "roc_auc"})})
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1250, 1))
    y = 3 * X[:, 0] if concept == "linear" else (X[:, 0] > 0).astype(int)
    opposite = -y if concept == "linear" else 1 - y
    classes = np.arange(2) if spec.task == "classification" else None
    good = partial_fit(build_model(spec), X[:1000], y[:1000], classes)
    worse = partial_fit(build_model(spec), X[:1000], opposite[:1000], classes)
    tail = SimpleNamespace(rows=250, labelled=np.ones(250, bool), X=X[1000:], y=y[1000:])

    result = decide_promotion(_Registry(good), spec, spec.promotion.metric, "v2", worse, tail, fresh_by_default=True)

    assert not result.promote and "decision deferred" in result.reason, result.reason
