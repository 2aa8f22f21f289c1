"""End to end on a real broker: a stream with category features trains a version in a real Dagster
run (bad category values dead-lettered, unseen values counted in its meta), and a scorer serves it
from Kafka and HTTP with the same encoding the run learned with."""

from __future__ import annotations

import time

import numpy as np
import orjson

from dagster_project.dev.datasets import census_events
from dagster_project.dev.producer import produce
from dagster_project.ingest.events import EventParser, make_event
from dagster_project.onnx.export import sklearn_scores
from dagster_project.registry.mlflow_store import MAX_VERSION_TAG_CHARS
from tests.conftest import census_spec
from tests.dagster_project.serving.support import Client, onnx_of, read_topic, running_service, wait_for
from tests.helpers import defs_for, high_waters, run_batch

BAD = [
    ("bad-type", {"workclass": 3}),
    ("bad-list", {"zip": ["94110"]}),
]


def test_a_category_stream_trains_a_version_and_the_scorer_serves_it(
    kafka_bootstrap, kafka_settings, registry, instance
) -> None:
    spec = census_spec()
    events = list(census_events(rows=1200, unseen_share=0.02))
    good = [(e.event_id, e.features, e.label) for e in events]
    bad = [(eid, events[0].features | change, 0) for eid, change in BAD]
    pairs = [(eid.encode(), make_event(eid, features, label, time.time())) for eid, features, label in good + bad]
    produce(kafka_settings, spec, pairs)
    ranges = {p: (0, end) for p, end in high_waters(kafka_settings, spec.events_topic).items()}

    result = run_batch(defs_for(spec, kafka_bootstrap, registry), spec, ranges, instance)

    assert result.success
    (version,) = registry.versions(spec.name)
    meta = version.meta
    assert meta["rows"]["valid"] == len(good) and meta["rows"]["dlq"] == len(BAD)
    never_worked = sum(e.features["workclass"] == "Never-worked" for e in events)
    assert never_worked > 10
    assert meta["categories"]["unseen_rows"] == {"workclass": never_worked, "education": 0}
    assert {e["value"] for e in meta["categories"]["unseen_examples"]} == {"Never-worked"}
    assert registry.profile(spec.name, version.name)["features"]["workclass"]["kind"] == "category"
    assert meta["parity"]["passed"] and meta["parity"]["max_abs_diff"] < 1e-5
    quality = [e for e in result.get_asset_check_evaluations() if e.check_name == "data_quality"]
    assert quality and quality[0].passed
    dead = sorted(d["reason"] for d in read_topic(kafka_settings, spec.dlq_topic) if d["component"] == "trainer")
    assert dead == [
        "feature 'workclass' is a category with str values: send a string, got int 3",
        "feature 'zip' is a hashed category: send a string or an integer, got list ['94110']",
    ]

    # The scorer: new unlabelled events from Kafka (some unseen), and the same rows over HTTP.
    served_events = list(census_events(rows=300, seed=99, unseen_share=0.1))
    fresh = [(f"s-{e.event_id}", e.features) for e in served_events]
    produce(kafka_settings, spec, ((eid.encode(), make_event(eid, f, None, time.time())) for eid, f in fresh))
    unseen = sum(f["workclass"] == "Never-worked" for _, f in fresh)
    with running_service(spec, kafka_settings, registry) as service:
        wait_for(lambda: service.scorer.scored >= len(good) + len(fresh), 60, "every event scored")
        status, body = Client(service.url).predict([f for _, f in fresh])
        assert status == 200, body
        metrics = service.metrics
        assert metrics.value("streamfit_unseen_categories_total", feature="workclass", source="http") == unseen
        assert metrics.value("streamfit_unseen_categories_total", feature="workclass", source="kafka") >= unseen

    predictions = {p["id"]: p for p in read_topic(kafka_settings, spec.predictions_topic)}
    parsed = EventParser(spec).parse_many([make_event(eid, f) for eid, f in fresh])
    estimator = registry.load_estimator(spec.name, version.name)
    expected = sklearn_scores(estimator, parsed.X)  # scikit-learn on the rows as training encodes them
    kafka_scores = np.array([predictions[eid]["probabilities"] for eid, _ in fresh])
    http_scores = np.array([p["probabilities"] for p in body["predictions"]])
    np.testing.assert_allclose(kafka_scores, expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(http_scores, expected, atol=1e-5, rtol=1e-5)
    labels = [p["prediction"] for p in body["predictions"]]
    assert labels == [spec.label.classes[i] for i in onnx_of(registry, spec, version.name).predict(parsed.X).labels]


def test_a_long_unseen_category_value_keeps_the_version_s_metadata_small(
    kafka_bootstrap, kafka_settings, registry, instance
) -> None:
    """Unseen values were kept whole as the version's examples: five of 150 KB (one every 100 events)
    made a 750 KB meta.json, and one of 100 KB passed the 95,000 characters the MLflow registry lets a
    version's metadata have (it refuses the registration: "nothing was registered")."""
    spec = census_spec()
    pairs = []
    for i, e in enumerate(census_events(rows=1200, unseen_share=0.0)):
        features = e.features | ({"workclass": f"W{i}" + "x" * 150_000} if i % 100 == 7 else {})
        pairs.append((e.event_id.encode(), make_event(e.event_id, features, e.label, time.time())))
    produce(kafka_settings, spec, pairs)
    ranges = {p: (0, end) for p, end in high_waters(kafka_settings, spec.events_topic).items()}

    assert run_batch(defs_for(spec, kafka_bootstrap, registry), spec, ranges, instance).success

    (version,) = registry.versions(spec.name)
    examples = version.meta["categories"]["unseen_examples"]
    assert len(examples) == 5 and version.meta["categories"]["unseen_rows"]["workclass"] >= 10
    for example in examples:  # the value's start, and how long it was
        length = len(f"W{example['value'][1:].split('x')[0]}") + 150_000
        assert example["value"].endswith(f"xxx... ({length:,} characters)") and len(example["value"]) < 250
    summary = orjson.dumps({k: v for k, v in version.meta.items() if k != "profile"})
    assert len(summary) < MAX_VERSION_TAG_CHARS
