"""A real Prometheus server scrapes the training exporter, and queries return what the registry holds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

import orjson
import pytest

from dagster_project.kafka import clients
from dagster_project.kafka.brokers.tansu import free_port
from dagster_project.kafka.io import probe_partitions
from dagster_project.learning.adaptive_sgd import step_of
from dagster_project.observability.exporter import serve_exporter
from tests.conftest import synthetic_spec
from tests.helpers import break_drift_sensor_of, defs_for, produce_synthetic, run_batch

ALERT_RULES = Path(__file__).resolve().parents[3] / "deploy" / "alerts.yml"


@pytest.fixture
def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("STREAMFIT_REQUIRE_PROMETHEUS"):
            pytest.fail("prometheus is not installed: apt-get install -y prometheus")
        pytest.skip("prometheus is not installed (apt-get install -y prometheus); CI requires it")
    return binary


def _start_prometheus(
    binary: str, tmp_path: Path, exporter_port: int, rules: Path | None = None
) -> tuple[int, subprocess.Popen]:
    """A real Prometheus scraping the exporter every second (and evaluating `rules` as often)."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        + (f"rule_files: ['{rules}']\n" if rules else "")
        + "scrape_configs:\n"
        + f"  - job_name: streamfit-exporter\n    static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]\n"
    )
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "prometheus.log", "wb"),
    )
    return port, process


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
    waiting_since = time.time()
    produce_synthetic(kafka_settings, spec, 70, start=600)  # waiting, not yet learned

    exporter_port = free_port()
    server, _ = serve_exporter(registry, [spec], kafka_settings, exporter_port, addr="127.0.0.1")
    prom_port, prometheus = _start_prometheus(prometheus_binary, tmp_path, exporter_port)
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
        # What the stall alert reads: the oldest row waiting, when the head was learned, the spec's wait.
        oldest_rows = _wait_for(prom_port, f"min(streamfit_oldest_waiting_timestamp_seconds{{{selector}}})")
        oldest = float(oldest_rows[0]["value"][1])
        assert waiting_since - 1 <= oldest <= time.time()
        learned_at = float(_wait_for(prom_port, f"streamfit_head_timestamp_seconds{{{selector}}}")[0]["value"][1])
        assert learned_at == datetime.fromisoformat(registry.head(spec.name).meta["created_at"]).timestamp()
        assert learned_at <= waiting_since
        max_wait = _wait_for(prom_port, f"streamfit_batch_max_wait_seconds{{{selector}}}")
        assert float(max_wait[0]["value"][1]) == spec.batch.max_wait_s
        assert float(_wait_for(prom_port, f"streamfit_halted{{{selector}}}")[0]["value"][1]) == 0
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


@pytest.mark.one_broker  # Prometheus is the subject
def test_a_halted_stream_raises_the_shipped_alert_naming_the_fix(
    prometheus_binary, kafka_bootstrap, kafka_settings, registry, instance, tmp_path
):
    """deploy/alerts.yml, evaluated by a real Prometheus on a stream halted by a real failed batch."""
    spec = synthetic_spec(
        partitions=1,
        features=[{"name": "x0", "min": -10, "max": 10}] + [{"name": f"x{i}"} for i in range(1, 5)],
        quality={"policy": "halt"},
    )
    produce_synthetic(kafka_settings, spec, 100)
    producer = clients.producer(kafka_settings)
    out_of_range = {"x0": 50.0, "x1": 0, "x2": 0, "x3": 0, "x4": 0}
    for i in range(3):
        producer.send(spec.events_topic, value=orjson.dumps({"id": f"bad-{i}", "features": out_of_range, "label": 1}))
    producer.flush()
    producer.close()
    (state,) = probe_partitions(kafka_settings, spec.events_topic, {})
    defs = defs_for(spec, kafka_bootstrap, registry)
    assert not run_batch(defs, spec, {0: (0, state.high_water)}, instance, raise_on_error=False).success
    assert registry.halt(spec.name) is not None

    exporter_port = free_port()
    server, _ = serve_exporter(registry, [spec], kafka_settings, exporter_port, addr="127.0.0.1")
    prom_port, prometheus = _start_prometheus(prometheus_binary, tmp_path, exporter_port, rules=ALERT_RULES)
    try:
        deadline = time.monotonic() + 60
        while not (alerts := _alerts(prom_port, "StreamfitTrainingHalted")) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert alerts, f"no StreamfitTrainingHalted alert within 60 s: {_alerts(prom_port)}"
        (alert,) = alerts
        assert alert["labels"]["stream"] == spec.name and alert["labels"]["severity"] == "critical"
        assert alert["state"] in {"pending", "firing"}  # pending for its first minute (`for: 1m`)
        assert f"streamfit batches skip {spec.name}" in alert["annotations"]["description"]
        assert alert["annotations"]["summary"] == f"{spec.name}: training is halted"
        # StreamfitNoScorer is pending too: this Prometheus scrapes no scorer, which is what it reports
        active = {a["labels"]["alertname"] for a in _alerts(prom_port)} - {"StreamfitNoScorer"}
        assert active == {"StreamfitTrainingHalted"}, active  # its 103 rows waited seconds: not stalled
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=10)
        server.shutdown()


def _alerts(port: int, name: str | None = None) -> list[dict]:
    """Active (pending or firing) alerts, from Prometheus' own API."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=5) as response:
            found = json.load(response)["data"]["alerts"]
    except OSError:
        return []
    return [a for a in found if name is None or a["labels"]["alertname"] == name]


def test_an_offset_gap_is_exported_instead_of_a_made_up_lag(kafka_settings, spec, registry, stream_defs, instance):
    """The events topic deleted and recreated after v1 learned from it: the sensor stops at an OFFSET
    GAP, but the exporter showed lag 0 ("caught up") or the new topic's rows, so no alert could fire.
    Streams are probed together, and a healthy one beside it keeps its lag."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from dagster_project.kafka.io import ensure_topics
    from dagster_project.observability.exporter import exporter_registry

    produce_synthetic(kafka_settings, spec, 300)
    states = probe_partitions(kafka_settings, spec.events_topic, {})
    assert run_batch(stream_defs, spec, {s.partition: (0, s.high_water) for s in states}, instance).success
    admin = clients.admin(kafka_settings)
    try:
        admin.delete_topics([spec.events_topic])
    finally:
        admin.close()
    deadline = time.monotonic() + 30
    while spec.events_topic in clients.admin(kafka_settings).list_topics() and time.monotonic() < deadline:
        time.sleep(0.2)
    ensure_topics(kafka_settings, [spec.events_topic], spec.partitions)
    produce_synthetic(kafka_settings, spec, 20)  # the new topic's offsets restart below what v1 learned
    healthy = synthetic_spec()
    produce_synthetic(kafka_settings, healthy, 70)

    text = generate_latest(exporter_registry(registry, [spec, healthy], kafka_settings)).decode()
    samples = {
        (s.name, s.labels.get("stream"), s.labels.get("partition")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    assert samples[("streamfit_offset_gap", spec.name, None)] == 1
    assert not [k for k in samples if k[0] == "streamfit_lag_rows" and k[1] == spec.name]
    assert samples[("streamfit_offset_gap", healthy.name, None)] == 0
    assert sum(v for k, v in samples.items() if k[:2] == ("streamfit_lag_rows", healthy.name)) == 70


def test_a_spec_file_that_does_not_load_is_exported(registry, tmp_path) -> None:
    """Its stream trains nothing and exports nothing else: without this it would vanish from dashboards."""
    from prometheus_client import generate_latest

    from dagster_project.observability.exporter import exporter_registry
    from dagster_project.spec import BrokenSpec

    broken = [BrokenSpec(tmp_path / "clicks.yaml", "invalid stream spec ...: rowz")]
    text = generate_latest(exporter_registry(registry, [synthetic_spec()], None, broken)).decode()
    assert f'streamfit_spec_invalid{{file="{tmp_path / "clicks.yaml"}"}} 1.0' in text


def test_labels_waiting_for_a_label_joiner_that_never_ran_are_exported(kafka_settings, registry) -> None:
    """The stall alert watches the joiner's checkpoints, so with `streamfit labels join` never started
    (labels produced, predictions served) nothing fired: live accuracy was silently never measured.
    The labels past the joiner's last checkpoint are exported, every one of them before its first."""
    from dagster_project.kafka.io import ensure_topics
    from dagster_project.labels.store import last_record
    from dagster_project.observability.exporter import exporter_registry
    from tests.dagster_project.labels.test_joiner import running_joiner, send
    from tests.dagster_project.serving.support import wait_for
    from tests.helpers import label, sample

    spec = synthetic_spec(labels={"join_window_s": 60, "flush_interval_s": 0.3})
    ensure_topics(kafka_settings, [spec.predictions_topic, spec.labels_topic], spec.partitions)
    send(kafka_settings, spec.labels_topic, [label(f"e{i}", i % 2) for i in range(40)])
    exporter = exporter_registry(registry, [spec], kafka_settings)
    assert sample(exporter, "streamfit_labels_unjoined", stream=spec.name) == 40
    assert sample(exporter, "streamfit_labels_checkpoint_timestamp_seconds", stream=spec.name) is None

    with running_joiner(spec, kafka_settings, registry.root):
        wait_for(lambda: (last_record(registry.root, spec.name) or {}).get("pending", {}).get("labels") == 40, 30, "")
    send(kafka_settings, spec.labels_topic, [label(f"f{i}", i % 2) for i in range(7)])  # after its last checkpoint
    assert sample(exporter, "streamfit_labels_unjoined", stream=spec.name) == 7
    assert sample(exporter, "streamfit_labels_checkpoint_timestamp_seconds", stream=spec.name) is not None


def test_a_labels_topic_that_cannot_be_read_leaves_the_stream_s_lag_and_gap_alone(
    kafka_settings, registry, monkeypatch
) -> None:
    """A leaderless or slow labels topic made the whole stream `streamfit_kafka_up 0` with no lag or
    gap exported (so the halt, stall and gap alerts could not fire for it); only the count goes."""
    from dagster_project.kafka import io as kafka_io
    from dagster_project.observability.exporter import exporter_registry
    from tests.helpers import sample

    spec = synthetic_spec()
    produce_synthetic(kafka_settings, spec, 50)
    probe = kafka_io.probe_partitions

    def labels_leaderless(settings, topic, offsets, timeout_s=5.0):
        if topic == spec.labels_topic:
            raise kafka_io.PartitionsLeaderless(topic, {0: "has no leader"})
        return probe(settings, topic, offsets, timeout_s)

    monkeypatch.setattr(kafka_io, "probe_partitions", labels_leaderless)
    exporter = exporter_registry(registry, [spec], kafka_settings)
    assert sample(exporter, "streamfit_kafka_up", stream=spec.name) == 1
    assert sample(exporter, "streamfit_offset_gap", stream=spec.name) == 0
    lag = [sample(exporter, "streamfit_lag_rows", stream=spec.name, partition=str(p)) for p in range(spec.partitions)]
    assert sum(lag) == 50
    assert sample(exporter, "streamfit_labels_unjoined", stream=spec.name) is None


def test_passed_over_dead_letters_stay_counted_while_a_version_applies_their_reset(registry, monkeypatch) -> None:
    """A version registered between the scrape's listing of the versions and its read of the pending
    reset (the trainer applied it): the passed-over dead letters were in neither, so
    streamfit_rows_total{fate="dlq"} went down for a scrape, a counter reset that Prometheus's
    increase() reads as every dead letter ever (the dead-letter ratio alert's spike)."""
    from dagster_project.learning.pipeline import learn_export_register, learn_from_head
    from dagster_project.observability.exporter import exporter_registry
    from dagster_project.quality.passed_over import pass_over
    from tests.dagster_project.quality.test_policy import _junk_batch
    from tests.helpers import hand_batch, sample

    spec = synthetic_spec(partitions=1)
    first = hand_batch(spec, 100)
    learn_export_register(registry, spec, first, "run-0", lambda: learn_from_head(registry, spec, first))
    pass_over(registry, spec, _junk_batch(spec, 100, 30), "run-junk")
    exporter = exporter_registry(registry, [spec], None)
    assert sample(exporter, "streamfit_rows_total", stream=spec.name, fate="dlq") == 30
    pending = registry.pending_offset_reset
    later = hand_batch(spec, 50, start=130, seed=1)

    def applied_meanwhile(stream: str):
        monkeypatch.setattr(registry, "pending_offset_reset", pending)  # once: the trainer, between the reads
        learn_export_register(registry, spec, later, "run-1", lambda: learn_from_head(registry, spec, later))
        return pending(stream)

    monkeypatch.setattr(registry, "pending_offset_reset", applied_meanwhile)
    assert sample(exporter, "streamfit_rows_total", stream=spec.name, fate="dlq") == 30
    assert registry.versions(spec.name)[-1].meta["offset_reset_applied"]["dead_lettered"]["messages"] == 30
    assert sample(exporter, "streamfit_rows_total", stream=spec.name, fate="dlq") == 30


def test_a_stream_whose_definitions_do_not_build_is_exported_as_its_file_being_invalid(
    registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its spec loads, but the code location stops it as it stops a file that does not load: the
    exporter counted only the files that do not load, so the stream stopped training unannounced."""
    from prometheus_client import generate_latest

    from dagster_project.observability.exporter import exporter_registry, exporter_specs

    break_drift_sensor_of(monkeypatch, "census")
    streams = Path(__file__).resolve().parents[3] / "streams"
    specs, broken = exporter_specs(streams)
    assert [b.path for b in broken] == [streams / "census.yaml"]
    assert "stream 'census''s Dagster definitions do not build: RuntimeError" in broken[0].error
    assert "census" in [s.name for s in specs]  # its registry and lag metrics are still true
    text = generate_latest(exporter_registry(registry, specs, None, broken)).decode()
    assert f'streamfit_spec_invalid{{file="{streams / "census.yaml"}"}} 1.0' in text
    assert text.count("streamfit_spec_invalid{") == 1
