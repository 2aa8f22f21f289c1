"""One poll batch through the shared parse/score/produce step, on both producers the scorer uses."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest

from dagster_project.ingest.events import make_event
from dagster_project.kafka import clients
from dagster_project.kafka.brokers.tansu import free_port
from dagster_project.kafka.fast_producer import ConfluentProducer
from dagster_project.kafka.io import ensure_topics
from dagster_project.kafka.settings import CONFLUENT, KAFKA_PYTHON, KafkaSettings
from dagster_project.registry.store import FilesystemRegistry
from dagster_project.serving.champion import ChampionWatcher
from dagster_project.serving.consumers import PollBatch
from dagster_project.serving.metrics import ScorerMetrics
from dagster_project.serving.scoring import BatchScorer, PredictionsNotAcknowledged
from dagster_project.spec import StreamSpec
from tests.conftest import synthetic_spec
from tests.dagster_project.serving.support import feature_matrix, onnx_of, read_topic, synthetic_rows, train_version


def _batch(spec: StreamSpec, rows, bad: list[bytes]) -> PollBatch:
    batch = PollBatch(spec.events_topic)
    values = [make_event(eid, f, None, 1_700_000_000.0) for eid, f, _ in rows] + bad
    for i, value in enumerate(values):
        batch.partitions.append(i % 2)
        batch.offsets.append(i // 2)
        batch.keys.append(f"k{i}".encode())
        batch.values.append(value)
        batch.timestamps.append(1_700_000_000_000)
    return batch


def _scorer(spec: StreamSpec, registry: FilesystemRegistry) -> BatchScorer:
    watcher = ChampionWatcher(registry, spec, ScorerMetrics(spec.name))
    watcher.check()
    return BatchScorer(spec, watcher, watcher.metrics, None, flush_timeout_s=10)


@pytest.mark.parametrize("client", [KAFKA_PYTHON, CONFLUENT])
def test_a_batch_is_scored_in_one_call_and_every_record_acknowledged(
    spec: StreamSpec, kafka_settings: KafkaSettings, registry: FilesystemRegistry, client: str
) -> None:
    spec = spec.model_copy(update={"name": f"scoring_{uuid.uuid4().hex[:6]}"})
    train_version(registry, spec)
    ensure_topics(kafka_settings, [spec.predictions_topic, spec.dlq_topic], 2)
    rows = synthetic_rows(30)
    producer = clients.fast_producer(replace(kafka_settings, client=client), acks="all")
    try:
        outcome = _scorer(spec, registry).process(producer, _batch(spec, rows, [b"{oops"]))
    finally:
        producer.close()

    assert (outcome.version, outcome.predicted, outcome.dlq) == ("v1", 30, 1)
    predictions = {p["id"]: p for p in read_topic(kafka_settings, spec.predictions_topic)}
    expected = onnx_of(registry, spec, "v1").predict(feature_matrix(spec, [f for _, f, _ in rows]))
    assert [predictions[eid]["probabilities"] for eid, _, _ in rows] == expected.scores.tolist()
    assert all(p["_key"] == p["id"].encode() for p in predictions.values())
    (letter,) = read_topic(kafka_settings, spec.dlq_topic)
    assert letter["reason"].startswith("not valid JSON") and (letter["partition"], letter["offset"]) == (0, 15)


def test_predictions_nobody_acknowledged_fail_the_batch(spec: StreamSpec, registry: FilesystemRegistry) -> None:
    """No broker: the batch must raise (the loop then rewinds and commits nothing), naming how many were lost."""
    train_version(registry, spec)
    settings = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}", client=CONFLUENT)
    producer = ConfluentProducer(settings.librdkafka_config() | {"message.timeout.ms": 1000})
    scorer = _scorer(spec, registry)
    scorer.flush_timeout_s = 3
    try:
        with pytest.raises(PredictionsNotAcknowledged, match="20 of 20 records of the batch were not acknowledged"):
            scorer.process(producer, _batch(spec, synthetic_rows(20), []))
    finally:
        producer.close(timeout=0)  # nothing listens: otherwise librdkafka reconnects until the object goes


def test_an_event_the_model_cannot_score_goes_to_the_dlq_not_a_made_up_prediction(
    kafka_settings: KafkaSettings, registry: FilesystemRegistry
) -> None:
    """A nullable feature's null reaches a linear model as NaN: its scores are NaN, and the class
    choice would have published the first class. It goes to the DLQ with the reason instead."""
    features = [{"name": "x0", "nullable": True}, *({"name": f"x{i}"} for i in range(1, 5))]
    spec = synthetic_spec(f"scoring_{uuid.uuid4().hex[:6]}", label={"classes": ["neg", "pos"]}, features=features)
    train_version(registry, spec)
    ensure_topics(kafka_settings, [spec.predictions_topic, spec.dlq_topic], 2)
    rows = synthetic_rows(6)
    null = make_event("null-x0", {**rows[0][1], "x0": None}, None, 1_700_000_000.0)
    producer = clients.fast_producer(kafka_settings, acks="all")
    try:
        outcome = _scorer(spec, registry).process(producer, _batch(spec, rows, [null]))
    finally:
        producer.close()

    assert (outcome.predicted, outcome.dlq) == (6, 1)
    assert sorted(p["id"] for p in read_topic(kafka_settings, spec.predictions_topic)) == sorted(e for e, _, _ in rows)
    (letter,) = read_topic(kafka_settings, spec.dlq_topic)
    assert letter["reason"].startswith("the model gives no finite prediction for null 'x0'")
    assert (letter["partition"], letter["offset"]) == (0, 3)
