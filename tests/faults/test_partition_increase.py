"""An operator adds partitions to a live stream's events topic (Kafka's CreatePartitions, to scale it out).

Rows produced to the new partitions must be learned from their first offset, recorded by the versions, and
scored by the scorer's group, from the beginning: a partition the sensor did not see, or one a consumer met
at 'latest', would lose its first rows without a word. Tansu has no CreatePartitions ("Kafka broker does not
support the 'CreatePartitionsRequest' Kafka protocol"), so these run in the Apache Kafka session
(`--broker kafka`) and skip on a broker that refuses it.
"""

from __future__ import annotations

import time

import dagster as dg
import pytest

from dagster_project.kafka import clients
from dagster_project.kafka.io import topic_partitions
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.learning.retraining import recent_window
from dagster_project.resources import KafkaResource
from tests.conftest import synthetic_spec
from tests.dagster_project.serving.support import produce_rows, running_service, synthetic_rows, train_version, wait_for
from tests.helpers import defs_for, high_waters, kafka_sensor_tick, produce_synthetic, read_topic


def add_partitions(settings: KafkaSettings, topic: str, total: int, broker_kind: str) -> None:
    """Grow `topic` to `total` partitions as an operator does (`kafka-topics.sh --alter --partitions`), and
    wait until the metadata lists them all."""
    from kafka.admin import NewPartitions
    from kafka.errors import IncompatibleBrokerVersion

    admin = clients.admin(settings)
    try:
        admin.create_partitions({topic: NewPartitions(total_count=total)})
    except IncompatibleBrokerVersion as exc:  # Tansu
        pytest.skip(f"the {broker_kind} broker cannot add partitions: {exc}")
    finally:
        admin.close()
    deadline = time.monotonic() + 10
    while len(topic_partitions(settings, topic)) < total:
        assert time.monotonic() < deadline, f"{topic} does not list {total} partitions 10 s after CreatePartitions"
        time.sleep(0.1)


def skip_on_tansu(broker_kind: str) -> None:
    if broker_kind == "tansu":  # checked first: the rest of the test is spent before the broker would refuse
        pytest.skip("Tansu has no CreatePartitions: runs in the Apache Kafka session (--broker kafka)")


def _learn_until_caught_up(defs, spec, instance, kafka, registry) -> list[dict[int, tuple[int, int]]]:
    """Run every batch the Kafka sensor plans, as the daemon would launch it, until it plans none."""
    planned = []
    job = defs.resolve_job_def(f"{spec.name}_training")
    for _ in range(10):
        tick = kafka_sensor_tick(defs, spec, instance, kafka, registry)
        if isinstance(tick, dg.SkipReason):
            assert "caught up" in tick.skip_message or "waiting" in tick.skip_message, tick.skip_message
            return planned
        (request,) = tick.run_requests
        config = next(iter(request.run_config["ops"].values()))["config"]
        planned.append({int(r["partition"]): (r["start"], r["end"]) for r in config["ranges"]})
        tags = {"dagster/run_key": request.run_key, **request.tags}
        assert job.execute_in_process(run_config=request.run_config, instance=instance, tags=tags).success
    raise AssertionError(f"the sensor still plans batches after {planned}")


@pytest.mark.timeout(240)
def test_partitions_added_to_a_live_stream_are_learned_from_their_first_offset(
    kafka_bootstrap, kafka_settings, broker_kind, spec, registry, instance
):
    skip_on_tansu(broker_kind)
    kafka = KafkaResource(bootstrap=kafka_bootstrap)
    defs = defs_for(spec, kafka_bootstrap, registry)
    produce_synthetic(kafka_settings, spec, 300)
    _learn_until_caught_up(defs, spec, instance, kafka, registry)
    assert set(registry.head(spec.name).learned) == {0, 1}

    add_partitions(kafka_settings, spec.events_topic, 4, broker_kind)
    produce_synthetic(kafka_settings, spec, 500, start=300)
    ends = high_waters(kafka_settings, spec.events_topic)
    assert set(ends) == {0, 1, 2, 3} and ends[2] > 0 and ends[3] > 0, ends  # the keys spread over the new ones

    planned = _learn_until_caught_up(defs, spec, instance, kafka, registry)

    assert planned and {p: planned[0].get(p, (None,))[0] for p in (2, 3)} == {2: 0, 3: 0}, planned  # from 0
    head = registry.head(spec.name)
    assert head.learned == ends  # every partition recorded, to its end
    assert head.meta["rows_learned_total"] == 800  # each row learned once: none lost, none twice
    assert sum(ends.values()) == 800
    # A retrain's window spans the new partitions from their start, beside the old ones' batches.
    window = recent_window(registry.versions(spec.name), rows=10**6)
    assert window == {p: (0, end) for p, end in ends.items()}


@pytest.mark.timeout(240)
@pytest.mark.usefixtures("scorer_client")
def test_the_scorer_scores_partitions_added_to_a_live_stream_from_their_first_event(
    kafka_settings, broker_kind, registry
):
    """The scorer's group is caught up when partitions are added and events land on them at once, before its
    metadata lists them: a consumer that met them at 'latest' would never score those events."""
    skip_on_tansu(broker_kind)
    spec = synthetic_spec(label={"classes": ["neg", "pos"]})
    train_version(registry, spec)
    before, after = synthetic_rows(300), synthetic_rows(500, start=300)
    produce_rows(kafka_settings, spec, before)
    with running_service(spec, kafka_settings, registry) as service:
        wait_for(lambda: service.scorer.scored >= len(before), 30, "the first 300 predictions")
        add_partitions(kafka_settings, spec.events_topic, 4, broker_kind)
        produce_rows(kafka_settings, spec, after)
        wait_for(lambda: service.scorer.scored >= len(before) + len(after), 30, "predictions of all 800 events")

    events = read_topic(kafka_settings, spec.events_topic)
    on_new = {e["id"] for e in events if e["_partition"] >= 2}
    assert len(on_new) > 100, "the keys spread over the new partitions"
    predicted = [p["id"] for p in read_topic(kafka_settings, spec.predictions_topic)]
    assert sorted(predicted) == sorted(e["id"] for e in events)  # every event scored once, the new ones too
    assert on_new <= set(predicted)
