"""Derived features when serving: the scorer feeds the model exactly what training computed."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest

from dagster_project.features.checkpoint import state_after
from dagster_project.ingest.events import EventParser
from dagster_project.kafka.io import read_range
from dagster_project.onnx.export import OnnxModel
from dagster_project.serving.features import ServingFeatures
from dagster_project.serving.limits import RequestError
from tests.dagster_project.features.support import (
    learn_around_a_quarantine,
    learn_in_batches,
    produce_sensors,
    sensors_spec,
    training_inputs,
)
from tests.dagster_project.serving.support import Client, read_topic, running_service, wait_for
from tests.helpers import defs_for, high_waters


@pytest.fixture
def trained(request, kafka_settings, kafka_bootstrap, registry, instance):
    model = getattr(request, "param", None)  # a test may name another model (indirect parametrization)
    spec = sensors_spec(**({"model": model} if model else {}))
    produce_sensors(kafka_settings, spec)
    learn_in_batches(defs_for(spec, kafka_bootstrap, registry), spec, kafka_settings, registry, instance)
    return spec


def predict_when_ready(client: Client, rows: list[dict], timeout_s: float = 30.0) -> tuple[int, dict]:
    """`/predict` once the derived-feature state follows the served version: a fresh scorer or a swap
    answers 503 (Retry-After) while that version's state is loaded and caught up."""
    deadline = time.monotonic() + timeout_s
    while True:
        code, body = client.predict(rows)
        if code != 503 or "derived features not ready" not in body["error"] or time.monotonic() > deadline:
            return code, body
        time.sleep(0.05)


def polls(settings, spec, size: int):
    """The topic as a consumer sees it: chunks of `size` records, partitions interleaved."""
    ends = high_waters(settings, spec.events_topic)
    per = {p: list(read_range(settings, spec.events_topic, {p: (0, e)})) for p, e in ends.items()}
    merged = [r for pair in zip(*per.values(), strict=False) for r in pair]
    merged += [r for records in per.values() for r in records[min(len(x) for x in per.values()) :]]
    for i in range(0, len(merged), size):
        yield merged[i : i + size]


def serve(features: ServingFeatures, spec, version: str, chunk) -> dict[tuple[int, int], np.ndarray]:
    values = [r.value for r in chunk]
    parsed = EventParser(spec).parse_many(values)
    out = features.derive(version, [r.partition for r in chunk], [r.offset for r in chunk], values, parsed)
    return {(chunk[i].partition, chunk[i].offset): out.X[k] for k, i in enumerate(out.index.tolist())}


@pytest.mark.one_broker  # feature values, not the broker: the catch-up reads run on both
def test_serving_features_equal_training_from_any_version_and_after_a_hot_swap(trained, kafka_settings, registry):
    spec = trained
    expected = training_inputs(kafka_settings, registry, spec)
    features = ServingFeatures(spec, kafka_settings, registry)
    served: dict[tuple[int, int], np.ndarray] = {}
    chunks = list(polls(kafka_settings, spec, 113))
    for n, chunk in enumerate(chunks):  # v2's checkpoint, then a hot swap to v3 halfway through
        served |= serve(features, spec, "v2" if n < len(chunks) // 2 else "v3", chunk)
    assert served.keys() == expected.keys()  # the same events refused (no key, late)
    worst = max(np.abs(served[k] - expected[k]).max() for k in expected)
    assert worst < 1e-9
    assert features.caught_up > 0  # started behind v2's learned offsets: read from a checkpoint and caught up

    # Going back (a rebalance, an aborted transaction) restores from a checkpoint: the same values again.
    again = serve(features, spec, "v3", chunks[3])
    assert all(np.array_equal(again[k], expected[k]) for k in again)


def test_predict_after_a_hot_swap_sees_every_event_the_scorer_read(trained, kafka_settings, registry):
    """The swap starts from the new version's checkpoint (its learned offsets, before the tail the
    scorer already read): the state is brought up to the scorer's position at once, not at the next event."""
    spec = trained
    events = list(polls(kafka_settings, spec, 10_000))
    last = max(orjson.loads(r.value)["ts"] for chunk in events for r in chunk)
    rows = [{"temp": 30.0, "device": f"dev-{d}", "ts": last + 1.0} for d in range(12)]

    def live(first: str) -> np.ndarray:
        features = ServingFeatures(spec, kafka_settings, registry)
        for chunk in events:
            serve(features, spec, first, chunk)
        features.follow("v3")  # what the scorer does off the event loop when /predict sees the swap first
        return features.append_to("v3", rows, np.zeros((len(rows), 1), np.float32))

    swapped, followed = live("v2"), live("v3")
    np.testing.assert_array_equal(swapped, followed)
    checkpoint = state_after(registry, spec, registry.get(spec.name, "v3"))
    assert any(
        followed[i, 1:].tolist() != pytest.approx(checkpoint.peek({**r, "features": r})) for i, r in enumerate(rows)
    )


def test_a_swap_whose_catch_up_fails_is_not_served_as_the_new_version(trained, kafka_settings, registry, monkeypatch):
    """A swap's catch-up that failed (the broker, mid-read) left the state named after the new
    version but behind the scorer's position: `/predict` peeked at it without the events in
    between, and nothing switched again. Now the old version's state stays, and the next switch
    brings the new one up to the scorer's position."""
    import dagster_project.serving.features as serving_features

    spec = trained
    events = list(polls(kafka_settings, spec, 10_000))
    last = max(orjson.loads(r.value)["ts"] for chunk in events for r in chunk)
    rows = [{"temp": 30.0, "device": f"dev-{d}", "ts": last + 1.0} for d in range(12)]

    def live() -> ServingFeatures:
        features = ServingFeatures(spec, kafka_settings, registry)
        for chunk in events:
            serve(features, spec, "v2", chunk)
        return features

    reference = live()
    reference.follow("v3")
    expected = reference.append_to("v3", rows, np.zeros((len(rows), 1), np.float32))

    features = live()
    positions = dict(features.positions)

    def broker_gone(*args, **kwargs):
        raise RuntimeError("the broker went away")

    monkeypatch.setattr(serving_features, "read_range", broker_gone)
    with pytest.raises(RuntimeError, match="the broker went away"):
        features.follow("v3")
    assert (features.version, features.positions) == ("v2", positions)  # the state it followed, untouched
    monkeypatch.setattr(serving_features, "read_range", read_range)
    features.follow("v3")
    np.testing.assert_array_equal(features.append_to("v3", rows, np.zeros((len(rows), 1), np.float32)), expected)


@pytest.mark.one_broker  # feature values, not the broker: the catch-up reads run on both
def test_a_switch_thread_that_cannot_start_does_not_leave_predict_503_for_good(
    trained, kafka_settings, registry, monkeypatch
):
    """`/predict` marked the state busy before starting the switch's thread: a thread that could not
    start (none left) never cleared the mark, and every later request answered 503."""
    import threading

    spec = trained
    head = registry.head(spec.name).name
    features = ServingFeatures(spec, kafka_settings, registry)
    row = {"temp": 30.0, "device": "dev-3", "ts": 1_767_225_600.0 + 120.0}
    start = threading.Thread.start

    def cannot_start(thread):
        if thread.name.startswith("features-"):
            raise RuntimeError("can't start new thread")
        return start(thread)

    monkeypatch.setattr(threading.Thread, "start", cannot_start)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        features.append_to(head, [row], np.zeros((1, 1), np.float32))
    monkeypatch.setattr(threading.Thread, "start", start)
    deadline = time.monotonic() + 15
    while True:
        try:
            X = features.append_to(head, [row], np.zeros((1, 1), np.float32))
            break
        except RequestError as exc:
            assert exc.status == 503 and time.monotonic() < deadline, exc
            time.sleep(0.05)
    assert features.version == head and X.shape == (1, 5)


@pytest.mark.one_broker  # feature values, not the broker: the catch-up reads run on both
def test_predict_uses_the_live_state_without_changing_it(trained, kafka_settings, registry):
    spec = trained
    features = ServingFeatures(spec, kafka_settings, registry)
    head = registry.head(spec.name)
    features.follow(head.name)
    reference = state_after(registry, spec, head)
    row = {"temp": 30.0, "device": "dev-3", "ts": 1_767_225_600.0 + 120.0}
    X = features.append_to(head.name, [row, {**row, "device": "never-seen"}], np.zeros((2, 1), np.float32))
    assert X[0, 1:].tolist() == pytest.approx(reference.peek({**row, "features": row}))
    assert X[0, 4] > 0  # dev-3 has readings in the window
    assert X[1, 1:].tolist() == [0.0, 0.0, 0.0, 0.0]  # a key never seen: the empty-window values
    assert features.append_to(head.name, [row], np.zeros((1, 1), np.float32)).tolist() == X[:1].tolist()
    with pytest.raises(RequestError, match="no key"):
        features.append_to(head.name, [{"temp": 1.0, "ts": 1.0}], np.zeros((1, 1), np.float32))


@pytest.mark.one_broker  # feature values, not the broker: the catch-up reads run on both
def test_predict_refuses_what_the_stream_refuses_a_late_time_and_a_ts_that_is_not_a_number(
    trained, kafka_settings, registry
):
    """A backfill over HTTP got windows cut short by history already dropped (200, empty-window values);
    an ISO `ts` was taken although the same event on Kafka is dead-lettered."""
    spec = trained
    features = ServingFeatures(spec, kafka_settings, registry)
    head = registry.head(spec.name)
    features.follow(head.name)
    newest = max(p.newest for p in state_after(registry, spec, head).partitions.values())
    late = {"temp": 30.0, "device": "dev-3", "ts": newest - 3600}
    with pytest.raises(RequestError, match=r"late request: event time .* more than event_time.lateness") as late_error:
        features.append_to(head.name, [late], np.zeros((1, 1), np.float32))
    assert "Score it from the stream" in str(late_error.value) and "send the key" not in str(late_error.value)
    just_behind = {**late, "ts": newest - 0.5}  # a live request a little behind the Kafka loop: answered
    assert features.append_to(head.name, [just_behind], np.zeros((1, 1), np.float32)).shape == (1, 5)
    iso = {"temp": 30.0, "device": "dev-3", "ts": "2026-12-05T18:25:00Z"}
    with pytest.raises(RequestError, match=r"'ts' must be a number \(epoch seconds\), got '2026-12-05T18:25:00Z'"):
        features.append_to(head.name, [iso], np.zeros((1, 1), np.float32))
    with pytest.raises(RequestError) as missing:  # its message named ISO-8601, which the line above refuses
        features.append_to(head.name, [{"temp": 30.0, "device": "dev-3"}], np.zeros((1, 1), np.float32))
    assert "no event time: 'ts' is None; it must be a number (epoch seconds)" in str(missing.value)
    assert "ISO" not in str(missing.value)
    current = {**late, "ts": newest}
    assert features.append_to(head.name, [current], np.zeros((1, 1), np.float32)).shape == (1, 5)


@pytest.mark.usefixtures("scorer_client")
@pytest.mark.parametrize(
    "trained",
    [None, {"estimator": "hist_gradient_boosting_classifier", "window_rows": 1000}],
    indirect=True,
    ids=["sgd", "windowed_trees"],  # refit on a window read back with its features
)
@pytest.mark.one_broker  # feature values, not the broker: the catch-up reads run on both
def test_the_scorer_predicts_from_the_features_training_computed(trained, kafka_settings, registry):
    spec = trained
    expected = training_inputs(kafka_settings, registry, spec)
    champion = registry.champion(spec.name)
    events = read_topic(kafka_settings, spec.events_topic)
    with running_service(spec, kafka_settings, registry) as service:
        wait_for(lambda: service.scorer.scored >= len(expected), 60, f"{len(expected)} predictions")
        code, body = Client(service.url).predict([{"temp": 31.0, "device": "dev-1", "ts": 1_767_226_000.0}])
        assert code == 200 and body["model_version"] == champion
    by_id = {p["id"]: p for p in read_topic(kafka_settings, spec.predictions_topic)}
    model = OnnxModel(registry.load_onnx(spec.name, champion))
    keys = sorted(expected)
    ids = {(e["_partition"], e["_offset"]): e["id"] for e in events}
    want = model.predict(np.asarray([expected[k] for k in keys], dtype=np.float32))
    assert len(by_id) == len(keys)
    for k, scores in zip(keys, want.scores, strict=True):
        assert by_id[ids[k]]["probabilities"] == pytest.approx(scores.tolist(), abs=1e-6)
    assert orjson.dumps(sorted(by_id)) == orjson.dumps(sorted(ids[k] for k in keys))


@pytest.mark.one_broker  # feature values, not the broker: the catch-up reads run on both
def test_evictions_while_serving_are_counted(trained, kafka_settings, registry):
    from dagster_project.serving.metrics import ScorerMetrics

    spec = trained.model_copy(update={"feature_state": trained.feature_state.model_copy(update={"max_keys": 2})})
    metrics = ScorerMetrics(spec.name)
    features = ServingFeatures(spec, kafka_settings, registry, metrics)
    for chunk in polls(kafka_settings, spec, 200):
        serve(features, spec, "v1", chunk)
    assert features.evicted > 0
    assert (
        metrics.registry.get_sample_value("streamfit_feature_keys_evicted_total", {"stream": spec.name})
        == features.evicted
    )
    assert metrics.registry.get_sample_value("streamfit_feature_keys", {"stream": spec.name}) == features.state.keys()


@pytest.mark.one_broker  # feature values, not the broker: the catch-up reads run on both
def test_serving_across_a_quarantined_batch_feeds_what_training_and_the_quarantine_hold(
    kafka_settings, kafka_bootstrap, registry, instance
):
    """The scorer sees the quarantined events as it sees any: the state training carried over them
    (the skip's) makes the next batch's values the scorer's, and the stored batch holds them too."""
    from dagster_project.quality.quarantine import QuarantineStore

    spec, _ = learn_around_a_quarantine(kafka_settings, kafka_bootstrap, registry, instance)
    (entry,) = QuarantineStore().list(spec.name)
    stored = QuarantineStore().get(spec.name, entry.id).batch
    expected = training_inputs(kafka_settings, registry, spec)
    expected |= {
        (int(p), int(o)): stored.X[i] for i, (p, o) in enumerate(zip(stored.partitions, stored.offsets, strict=True))
    }

    features = ServingFeatures(spec, kafka_settings, registry)
    served: dict = {}
    for chunk in polls(kafka_settings, spec, 97):
        served |= serve(features, spec, "v1", chunk)
    assert expected.keys() <= served.keys() and len(stored.ids) > 100
    assert max(np.abs(served[k] - expected[k]).max() for k in expected) < 1e-9


def test_predict_refuses_a_stream_whose_event_time_field_is_also_a_feature(kafka_settings, registry) -> None:
    """A flat /predict row read the feature `ts` as the event time too: windows came out wrong, with 200."""
    from tests.conftest import synthetic_spec

    derived = [{"name": "x1_mean", "of": "x1", "by": "device", "agg": "mean", "window": "60s"}]
    features = [{"name": "ts"}, *({"name": f"x{i}"} for i in range(1, 5))]
    spec = synthetic_spec(features=features, derived=derived, event_time={"field": "ts", "lateness": "5s"})
    row = {"ts": 0.5, "x1": 1.0, "x2": 0.0, "x3": 0.0, "x4": 0.0, "device": "d1"}
    with pytest.raises(RequestError, match="event_time.field 'ts' is also a feature's name") as refused:
        ServingFeatures(spec, kafka_settings, registry).append_to("v1", [row], np.zeros((1, 5), np.float32))
    assert refused.value.status == 422 and "score its events on Kafka" in str(refused.value)


def test_a_key_longer_than_an_id_may_be_is_refused_on_kafka_and_on_predict(trained, kafka_settings, registry):
    """A 500 KB device on `/predict` was answered 200, and on Kafka the scorer took it into its state."""
    from dagster_project.dev.producer import produce
    from dagster_project.ingest.events import make_event

    spec = trained
    device = "d" + "K" * 500_000
    ts = 1_767_225_600.0 + 120.0
    assert produce(kafka_settings, spec, [(b"big", make_event("big-key", {"temp": 20.0}, 0, ts, device=device))]) == 1
    features = ServingFeatures(spec, kafka_settings, registry)
    reasons: dict[tuple[int, int], str] = {}
    for chunk in polls(kafka_settings, spec, 500):
        values = [r.value for r in chunk]
        out = features.derive(
            "v3", [r.partition for r in chunk], [r.offset for r in chunk], values, EventParser(spec).parse_many(values)
        )
        reasons |= {(chunk[i].partition, chunk[i].offset): reason for i, reason in out.failures}
    (reason,) = [r for r in reasons.values() if r.startswith("key 'device' is 500,001 characters long")]
    assert "over the 1,024 a key may have" in reason and len(reason) < 400
    assert all(len(str(key)) <= 1024 for part in features.state.partitions.values() for key in part.tables["device"])
    with pytest.raises(
        RequestError, match=r"row 0: key 'device' is 500,001 characters long, over the 1,024"
    ) as refused:
        features.append_to("v3", [{"temp": 30.0, "device": device, "ts": ts}], np.zeros((1, 1), np.float32))
    assert refused.value.status == 422 and len(str(refused.value)) < 600


@pytest.mark.one_broker  # feature values, not the broker: the catch-up reads run on both
def test_predict_refuses_a_time_further_ahead_of_its_arrival_than_max_ahead(trained, kafka_settings, registry):
    """A `ts` three years ahead got 200 and a prediction on `/predict`, while the same event on Kafka is
    dead-lettered for event_time.max_ahead: a request is judged from its arrival, an event from its record."""
    import time

    spec = trained
    ahead = time.time() + 3 * 365 * 86400.0
    with running_service(spec, kafka_settings, registry) as service:
        client = Client(service.url)
        code, body = predict_when_ready(client, [{"temp": 31.0, "device": "dev-1", "ts": ahead}])
        assert code == 422, body
        assert "row 0: event time" in body["error"] and "ahead of the request's arrival" in body["error"]
        assert "more than event_time.max_ahead 300 s" in body["error"]
        code, body = client.predict([{"temp": 31.0, "device": "dev-1", "ts": time.time() + 60}])
        assert code == 200, body  # within max_ahead of its arrival: answered


@pytest.mark.one_broker  # feature values, not the broker: the catch-up reads run on both
def test_a_champion_whose_feature_state_is_damaged_is_refused_and_the_last_good_one_serves(
    trained, kafka_settings, registry
):
    """The feature state is part of the checkpoint: a promoted version whose features.json fails its
    checksum was swapped in, and then every /predict answered 500 and every Kafka batch failed."""
    spec = trained
    path = registry.root / spec.name / "v2" / "features.json"
    intact = path.read_bytes()
    path.write_bytes(intact[: len(intact) // 2])  # a truncated copy, as a bad restore leaves it
    row = {"temp": 30.0, "device": "dev-3", "ts": time.time()}
    with running_service(spec, kafka_settings, registry, watch_interval_s=0.05) as service:
        client = Client(service.url)
        assert predict_when_ready(client, [row])[1]["model_version"] == "v3"
        registry.set_champion(spec.name, "v2", reason="test: a rollback to a damaged version")
        wait_for(lambda: service.watcher.refused == "v2", 10, "the scorer to refuse v2")
        status, body = client.predict([row])
        assert (status, body["model_version"]) == (200, "v3")
        health = client.request("GET", "/healthz")[1]
        assert (health["model_version"], health["champion"], health["fallback"]) == ("v3", "v2", True)
        assert "features.json does not match its sha256" in health["degraded"]
        assert service.metrics.value("streamfit_model_load_failures_total", version="v2") == 1

        path.write_bytes(intact)  # repaired: served within a tick
        wait_for(lambda: service.watcher.current.version == "v2", 10, "the scorer to serve the repaired v2")
        assert predict_when_ready(client, [row])[1]["model_version"] == "v2"
    assert registry.unservable(spec.name, "v2") is None
    path.write_bytes(intact[:10])
    assert "features.json" in registry.unservable(spec.name, "v2")  # promote and rollback pass it over


@pytest.mark.parametrize("first", ["predict", "kafka"])
def test_a_catch_up_after_a_swap_never_stalls_the_probes_and_predict_says_why_it_waits(
    trained, kafka_settings, registry, monkeypatch, first
):
    """After a swap, the feature state was caught up on uvicorn's event loop (`/predict` noticed the
    swap first: a quiet stream) or `/predict` waited there for the Kafka loop's catch-up (events
    arriving): `/livez`, `/readyz` and every request stalled for the whole catch-up (3.9 s for a
    61,000-event backlog, 16,000 events a second), long enough for a liveness probe to restart a
    healthy scorer. Now the probes answer at once, `/predict` answers 503 with Retry-After and the
    reason meanwhile, then the new version."""
    import threading

    import dagster_project.serving.features as serving_features
    from dagster_project.dev.producer import produce
    from dagster_project.ingest.events import make_event

    spec = trained
    total = sum(high_waters(kafka_settings, spec.events_topic).values())
    row = {"temp": 30.0, "device": "dev-3", "ts": time.time()}
    stall_s = 4.0
    with running_service(spec, kafka_settings, registry, watch_interval_s=0.05) as service:
        client = Client(service.url)
        wait_for(lambda: sum(service.scorer.features.positions.values()) >= total, 60, "the topic scored")
        assert predict_when_ready(client, [row])[1]["model_version"] == "v3"
        read = serving_features.read_range
        reading = threading.Event()

        def slow_read(*args, **kwargs):  # a long backlog, made long in time rather than in events
            reading.set()
            time.sleep(stall_s)
            yield from read(*args, **kwargs)

        monkeypatch.setattr(serving_features, "read_range", slow_read)
        caught_up = service.scorer.features.caught_up
        probes: list[tuple[str, int, float]] = []
        stop = threading.Event()

        def probe() -> None:
            prober = Client(service.url)
            while not stop.is_set():
                for path in ("/livez", "/readyz"):
                    started = time.monotonic()
                    code = prober.request("GET", path)[0]
                    probes.append((path, code, time.monotonic() - started))
                time.sleep(0.05)

        registry.set_champion(spec.name, "v1", reason="test: a rollback whose state must catch up")
        wait_for(lambda: service.watcher.current.version == "v1", 10, "the scorer to serve v1")
        if first == "kafka":  # an event arrives: the Kafka loop switches and catches up, holding the state
            assert produce(
                kafka_settings,
                spec,
                [(b"dev-3", make_event("after-swap", {"temp": 20.0}, 0, row["ts"], device="dev-3"))],
            )
            assert reading.wait(30), "the Kafka loop did not start catching up"
        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        started = time.monotonic()
        status, body, response = client.request("POST", "/predict", orjson.dumps({"rows": [row]}))
        waited = time.monotonic() - started
        health = client.request("GET", "/healthz")[1]
        time.sleep(stall_s / 2)  # probing while the catch-up sleeps
        stop.set()
        prober.join(10)
        worst = max(probes, key=lambda p: p[2])
        assert len(probes) >= 8 and worst[2] < stall_s / 4, f"slowest probe {worst}"
        assert (status, response.getheader("Retry-After")) == (503, "1"), body
        assert "derived features not ready: switching to v1's feature state and catching it up" in body["error"]
        assert waited < stall_s / 4
        assert health["ready"] and health["derived_features"]["catching_up"].startswith("switching to v1's feature")
        assert {(path, code) for path, code, _ in probes} == {("/livez", 200), ("/readyz", 200)}
        status, body = predict_when_ready(client, [row])
        assert (status, body["model_version"]) == (200, "v1"), body
        assert service.scorer.features.caught_up > caught_up  # v1's checkpoint, brought up to the scorer's position
        health = client.request("GET", "/healthz")[1]
        assert health["derived_features"] == {"following": "v1", "catching_up": None}
