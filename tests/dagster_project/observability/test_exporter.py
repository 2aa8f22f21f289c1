"""A real Prometheus server scrapes the training exporter, and queries return what the registry holds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from dagster_project.kafka.brokers.tansu import free_port
from dagster_project.kafka.io import probe_partitions
from dagster_project.learning.adaptive_sgd import step_of
from dagster_project.observability.exporter import serve_exporter
from tests.helpers import produce_synthetic, run_batch


@pytest.fixture
def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("STREAMFIT_REQUIRE_PROMETHEUS"):
            pytest.fail("prometheus is not installed: apt-get install -y prometheus")
        pytest.skip("prometheus is not installed (apt-get install -y prometheus); CI requires it")
    return binary


def _query(port: int, promql: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)["data"]["result"]


def _wait_for(port: int, promql: str, timeout_s: float = 60.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result = _query(port, promql)
            if result:
                return result
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"prometheus returned nothing for {promql} within {timeout_s}s")


@pytest.mark.one_broker  # Prometheus is the subject
def test_prometheus_scrapes_training_metrics(
    prometheus_binary, kafka_settings, spec, registry, stream_defs, instance, tmp_path
):
    produce_synthetic(kafka_settings, spec, 600)
    states = probe_partitions(kafka_settings, spec.events_topic, {})
    assert run_batch(stream_defs, spec, {s.partition: (0, s.high_water // 2) for s in states}, instance).success
    assert run_batch(
        stream_defs, spec, {s.partition: (s.high_water // 2, s.high_water) for s in states}, instance
    ).success
    produce_synthetic(kafka_settings, spec, 70, start=600)  # waiting, not yet learned

    exporter_port = free_port()
    server, _ = serve_exporter(registry, [spec], kafka_settings, exporter_port, addr="127.0.0.1")
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: streamfit\n    static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]\n"
    )
    prometheus = subprocess.Popen(
        [
            prometheus_binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "prometheus.log", "wb"),
    )
    try:
        selector = f'stream="{spec.name}"'
        rows = _wait_for(prom_port, f'streamfit_rows_total{{{selector},fate="trained"}}')
        assert float(rows[0]["value"][1]) == 600
        assert float(_wait_for(prom_port, f"streamfit_batches_total{{{selector}}}")[0]["value"][1]) == 2
        champion = _wait_for(prom_port, f'streamfit_model_version{{{selector},alias="champion"}}')
        assert float(champion[0]["value"][1]) == 1  # no promotion tail in this spec: v2 is not gated
        served = _wait_for(prom_port, f'streamfit_served_prequential_metric{{{selector},metric="accuracy"}}')
        assert 0.8 < float(served[0]["value"][1]) <= 1.0  # v1, served while v2's batch arrived
        head = _wait_for(prom_port, f'streamfit_model_version{{{selector},alias="head"}}')
        assert float(head[0]["value"][1]) == 2
        lag = _wait_for(prom_port, f"sum(streamfit_lag_rows{{{selector}}})")
        assert float(lag[0]["value"][1]) == 70
        accuracy = _wait_for(prom_port, f'streamfit_prequential_metric{{{selector},metric="accuracy"}}')
        assert 0.8 < float(accuracy[0]["value"][1]) <= 1.0
        assert float(_wait_for(prom_port, f"streamfit_train_seconds_count{{{selector}}}")[0]["value"][1]) == 2
        # The default learner's step: the head's serving copy, as its meta.json and its estimator say.
        passes = float(_wait_for(prom_port, f"streamfit_adaptive_serving_passes{{{selector}}}")[0]["value"][1])
        head_version = registry.head(spec.name)
        assert passes == head_version.meta["adaptive_sgd"]["serving_passes"]
        assert passes == step_of(registry.load_estimator(spec.name, head_version.name))["serving_passes"]
        psi = float(_wait_for(prom_port, f"streamfit_drift_psi_max{{{selector}}}")[0]["value"][1])
        assert 0 <= psi < 0.25  # same distribution: no drift
        halts = _wait_for(prom_port, f'streamfit_quality_failures_total{{{selector},action="halt"}}')
        assert float(halts[0]["value"][1]) == 0
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=10)
        server.shutdown()
