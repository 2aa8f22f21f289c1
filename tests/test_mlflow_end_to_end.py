"""MLflow as the registry end to end: a real training run registers into a real MLflow server, and a
real scorer serves `models:/<stream>@champion` from it, through an MLflow outage and a corrupt artifact."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import orjson
import pytest

from dagster_project.dev.mlflow_server import MlflowServer
from dagster_project.kafka.io import committed_group_offsets, probe_partitions
from dagster_project.kafka.offsets import decode_ranges
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.registry.mlflow_store import MlflowRegistry
from dagster_project.resources import KafkaResource
from dagster_project.spec import StreamSpec
from tests.dagster_project.serving.support import (
    Client,
    Hammer,
    produce_rows,
    running_service,
    synthetic_rows,
    train_version,
    wait_for,
)
from tests.helpers import defs_for, kafka_sensor_tick, produce_synthetic, run_batch

# MLflow is the subject here: these run once, in the Tansu session (the registry's broker code is the filesystem one's).
pytestmark = pytest.mark.one_broker
SWAP_SLACK_S = 10.0


def test_a_training_run_registers_into_mlflow_and_a_scorer_serves_the_champion_from_it(
    kafka_settings: KafkaSettings,
    kafka_bootstrap: str,
    spec: StreamSpec,
    instance,
    streamfit_home: Path,
    mlflow_server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = MlflowRegistry(mlflow_server.uri, root=streamfit_home / "registry")
    defs = defs_for(spec, kafka_bootstrap, registry)
    produce_synthetic(kafka_settings, spec, 800)
    states = probe_partitions(kafka_settings, spec.events_topic, {})
    first = {s.partition: (0, s.high_water // 2) for s in states}
    second = {s.partition: (s.high_water // 2, s.high_water) for s in states}

    assert run_batch(defs, spec, first, instance).success
    result = run_batch(defs, spec, second, instance)
    assert result.success

    v1, v2 = registry.versions(spec.name)
    assert (v1.learned, v2.learned, v2.parent) == (
        {p: e for p, (_, e) in first.items()},
        {p: e for p, (_, e) in second.items()},
        "v1",
    )
    assert committed_group_offsets(kafka_settings, spec.trainer_group, spec.events_topic) == v2.learned

    # In MLflow itself: one registered model, a version per batch with the offsets as tags.
    client = registry.client
    by_name = {mv.tags["streamfit.version"]: mv for mv in client.search_model_versions(f"name = '{spec.name}'")}
    assert set(by_name) == {"v1", "v2"}
    mv2 = by_name["v2"]
    assert orjson.loads(mv2.tags["streamfit.learned"]) == {str(p): e for p, e in v2.learned.items()}
    assert orjson.loads(mv2.tags["streamfit.batch"]) == {str(p): [s, e] for p, (s, e) in second.items()}
    assert mv2.tags["streamfit.parent"] == "v1" and mv2.tags["streamfit.topic"] == spec.events_topic
    assert mv2.tags["streamfit.sha256.model.onnx"] == v2.meta["sha256"]["model.onnx"]
    run = client.get_run(mv2.run_id)
    assert run.data.metrics["prequential.accuracy"] == v2.meta["metrics"]["accuracy"]
    assert run.data.metrics["parity.passed"] == 1.0 and "timings.train_seconds" in run.data.metrics
    assert run.data.params["estimator"] == spec.model.estimator
    assert {a.path for a in client.list_artifacts(mv2.run_id)} >= {"estimator.joblib", "profile.json", "meta.json"}
    champion = registry.champion(spec.name)
    assert client.get_model_version_by_alias(spec.name, "champion").tags["streamfit.version"] == champion

    # MLflow's own loaders find the ONNX flavor and its signature behind the alias.
    import mlflow
    import mlflow.onnx

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    mlflow.set_tracking_uri(mlflow_server.uri)
    info = mlflow.models.get_model_info(f"models:/{spec.name}@champion")
    assert "onnx" in info.flavors and tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 5)
    assert mlflow.onnx.load_model(f"models:/{spec.name}@champion").graph.input[0].name

    # The Dagster asset links the version to its MLflow run.
    metadata = result.asset_materializations_for_node(f"{spec.name}__model_version")[0].metadata
    assert (
        metadata["run_url"].url
        == f"{mlflow_server.uri}/#/experiments/{mv2.tags['streamfit.experiment_id']}/runs/{mv2.run_id}"
    )
    assert metadata["model_version_url"].url.endswith(f"/#/models/{spec.name}/versions/{mv2.version}")

    # The Kafka sensor plans the next batch from the head in MLflow (its learned offsets, its name in the run key).
    produce_synthetic(kafka_settings, spec, 400, start=800)
    tick = kafka_sensor_tick(defs, spec, instance, KafkaResource(bootstrap=kafka_bootstrap), registry)
    assert isinstance(tick, dg.SensorResult), tick
    (request,) = tick.run_requests
    assert request.tags["streamfit/parent"] == "v2"
    planned = decode_ranges(request.tags["streamfit/ranges"])
    assert all(planned[p][0] == v2.learned[p] for p in planned)

    # A scorer follows the alias through MLflow.
    rows = synthetic_rows(200, start=5_000)
    produce_rows(kafka_settings, spec, rows)
    with running_service(spec, kafka_settings, registry) as service:
        http = Client(service.url)
        assert service.watcher.current.version == champion
        wait_for(lambda: service.scorer.scored >= len(rows), 30, "the events scored")
        other = "v2" if champion == "v1" else "v1"
        registry.set_champion(spec.name, other, reason="by hand, in MLflow")
        wait_for(lambda: service.watcher.current.version == other, SWAP_SLACK_S, f"the scorer to serve {other}")
        status, body = http.predict([Hammer.ROW])
        assert (status, body["model_version"]) == (200, other)
        status, health, _ = http.request("GET", "/healthz")
        assert (
            health["registry"] == {"location": f"MLflow at {registry.registry_uri}", "reachable": True, "error": None}
            and health["degraded"] is None
        )
        assert service.metrics.value("streamfit_registry_up") == 1


def test_the_scorer_keeps_its_model_through_an_mlflow_outage_and_refuses_a_corrupt_artifact(
    kafka_settings: KafkaSettings, spec: StreamSpec, streamfit_home: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # report an outage within a tick
    server = MlflowServer(tmp_path / "mlflow").start()
    try:
        registry = MlflowRegistry(server.uri, root=streamfit_home / "registry")
        train_version(registry, spec)  # v1
        train_version(registry, spec, drifted=True)  # v2, the champion
        with running_service(spec, kafka_settings, registry) as service:
            http, metrics = Client(service.url), service.metrics
            assert service.watcher.current.version == "v2"

            server.stop()  # MLflow goes away
            wait_for(lambda: service.watcher.status.registry_error, 30, "the watcher to notice the outage")
            status, health, _ = http.request("GET", "/healthz")
            assert status == 200 and health["model_version"] == "v2"
            assert not [r for r in health["reasons"] if "model" in r or "registry" in r], health["reasons"]
            assert health["registry"]["reachable"] is False and "RegistryUnavailable" in health["registry"]["error"]
            assert health["degraded"].startswith("registry unreachable or failing (RegistryUnavailable: MLflow at")
            assert health["degraded"].endswith("still serving v2)")
            assert http.predict([Hammer.ROW])[1]["model_version"] == "v2"
            assert metrics.value("streamfit_registry_up") == 0 and metrics.value("streamfit_registry_errors_total") >= 1
            assert metrics.value("streamfit_model_load_failures_total", version="v2") == 0  # nothing was refused

            server.start()  # back, same port, same database and artifacts
            wait_for(lambda: service.watcher.status.registry_error is None, 60, "the watcher to reach MLflow again")
            status, health, _ = http.request("GET", "/healthz")
            assert (
                health["registry"]
                == {"location": f"MLflow at {registry.registry_uri}", "reachable": True, "error": None}
                and health["degraded"] is None
            )
            assert metrics.value("streamfit_registry_up") == 1

            # A champion whose artifact MLflow returns corrupted is refused; the last good model serves on.
            v3 = train_version(registry, spec, seed=3, champion=False)
            model_uri = registry._entry(spec.name, "v3").tags["streamfit.model_artifacts"]
            stored = server.artifacts / model_uri.removeprefix("mlflow-artifacts:/") / "model.onnx"
            stored.write_bytes(stored.read_bytes()[:-7] + b"garbage")
            registry.set_champion(spec.name, v3.name, reason="promoted by hand")
            wait_for(lambda: service.watcher.refused == "v3", SWAP_SLACK_S, "the scorer to refuse v3")
            status, health, _ = http.request("GET", "/healthz")
            assert (health["model_version"], health["champion"], health["fallback"]) == ("v2", "v3", True)
            assert health["degraded"].startswith(f"champion v3 failed its checksum (models:/{spec.name}/3 (")
            assert metrics.value("streamfit_model_load_failures_total", version="v3") == 1
            assert metrics.value("streamfit_serving_fallback") == 1
            time.sleep(1.0)
            assert http.predict([Hammer.ROW])[1]["model_version"] == "v2"
    finally:
        server.stop()
