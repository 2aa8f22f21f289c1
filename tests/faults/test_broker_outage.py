"""The broker goes away and comes back with its data: training waits, says why, and resumes by itself."""

from __future__ import annotations

import dagster as dg
import pytest

from dagster_project.kafka.brokers.apache import ApacheKafkaCluster, ensure_kafka_jars
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.resources import KafkaResource
from tests.helpers import defs_for, high_waters, kafka_sensor_tick, produce_synthetic, run_batch

pytestmark = pytest.mark.apache_kafka  # runs in the Apache Kafka session (tests/conftest.py)


def _planned(tick) -> dict[int, tuple[int, int]]:
    (request,) = tick.run_requests
    config = next(iter(request.run_config["ops"].values()))["config"]
    return {int(r["partition"]): (r["start"], r["end"]) for r in config["ranges"]}


@pytest.mark.timeout(300)
def test_a_stopped_broker_pauses_training_and_its_restart_resumes_it(
    spec, registry, instance, specs_dir, streamfit_home, tmp_path
):
    ensure_kafka_jars()
    with ApacheKafkaCluster(nodes=1, data_dir=tmp_path / "data", log_dir=tmp_path) as cluster:
        settings = KafkaSettings.from_env(cluster.bootstrap)
        kafka = KafkaResource(bootstrap=cluster.bootstrap)
        defs = defs_for(spec, cluster.bootstrap, registry)
        produce_synthetic(settings, spec, 400)
        assert run_batch(
            defs, spec, _planned(kafka_sensor_tick(defs, spec, instance, kafka, registry)), instance
        ).success

        produce_synthetic(settings, spec, 400, start=400)
        cluster.stop_all_nodes()
        waiting = kafka_sensor_tick(defs, spec, instance, kafka, registry)
        assert isinstance(waiting, dg.SkipReason)
        assert "unreachable" in waiting.skip_message and "nothing planned" in waiting.skip_message
        assert len(registry.versions(spec.name)) == 1

        cluster.start_all_nodes()  # same data: nothing to decide, no operator action
        resumed = kafka_sensor_tick(defs, spec, instance, kafka, registry)
        assert isinstance(resumed, dg.SensorResult), resumed
        assert run_batch(defs, spec, _planned(resumed), instance).success
        head = registry.versions(spec.name)[-1]
        assert head.learned == high_waters(settings, spec.events_topic)
        assert head.meta["rows_learned_total"] == 800  # every row once
