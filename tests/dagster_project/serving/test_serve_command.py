"""`streamfit serve` as a real process: kill -9 mid-stream, restart, nothing lost; SIGTERM stops cleanly."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from dagster_project.cli import main
from dagster_project.kafka.io import committed_group_offsets, probe_partitions
from dagster_project.kafka.settings import BOOTSTRAP_ENV, KafkaSettings
from dagster_project.registry.store import FilesystemRegistry
from dagster_project.serving import scorer_group
from dagster_project.spec import StreamSpec
from tests.dagster_project.serving.support import (
    Client,
    Producer,
    read_topic,
    topic_size,
    train_version,
    wait_for,
)
from tests.helpers import StreamfitProcess

MAX_POLL_RECORDS = 50


# Every test runs once per consumer client (kafka-python, confluent).
pytestmark = pytest.mark.usefixtures("scorer_client")


class ServeProcess(StreamfitProcess):
    """`streamfit serve <stream>` with the test's STREAMFIT_HOME/STREAMFIT_STREAMS and the test broker."""

    def __init__(self, spec: StreamSpec, bootstrap: str, *options: str) -> None:
        args = ["serve", spec.name, "--port", "0", "--max-poll-records", str(MAX_POLL_RECORDS), *options]
        super().__init__(args, env=os.environ | {BOOTSTRAP_ENV: bootstrap})
        line = self.wait_for("; HTTP on ")
        self.url = line.rsplit("HTTP on ", 1)[1]


def test_kill_9_and_restart_loses_nothing_and_repeats_at_most_one_batch(
    spec: StreamSpec, specs_dir: Path, kafka_settings: KafkaSettings, registry: FilesystemRegistry
) -> None:
    train_version(registry, spec)
    producer = Producer(kafka_settings, spec, rate=800, chunk=40)
    producer.start()
    first = second = None
    try:
        first = ServeProcess(spec, kafka_settings.bootstrap, "--delivery", "at-least-once")
        first.wait_for(f"champion read from {registry.root.resolve()}")  # which registry: named at start
        wait_for(lambda: topic_size(kafka_settings, spec.predictions_topic) >= 800, 30, "the first scorer to score")
        first.kill()  # SIGKILL mid-stream: no commit, no leave-group, a batch possibly half produced
        at_kill = topic_size(kafka_settings, spec.predictions_topic)

        second = ServeProcess(spec, kafka_settings.bootstrap, "--delivery", "at-least-once")
        wait_for(lambda: topic_size(kafka_settings, spec.predictions_topic) >= at_kill + 400, 40, "the restart")
        sent = producer.stop()
        predicted = wait_for(
            lambda: (
                (ids := [p["id"] for p in read_topic(kafka_settings, spec.predictions_topic)])
                and set(sent) <= set(ids)
                and ids
            ),
            40,
            "a prediction for every event",
            interval_s=0.5,
        )
        status, health, _ = Client(second.url).request("GET", "/healthz")
        assert (status, health["model_version"]) == (200, "v1")

        second.proc.send_signal(signal.SIGTERM)  # clean stop: finish the batch, commit, leave the group
        assert second.proc.wait(timeout=20) == 0
        second.wait_for("scorer stopped")
    finally:
        producer.halt.set()
        for process in (first, second):
            if process is not None:
                process.kill()

    duplicates = Counter(predicted) - Counter(set(predicted))
    assert set(predicted) == set(sent)
    assert sum(duplicates.values()) <= MAX_POLL_RECORDS, duplicates
    ends = {s.partition: s.high_water for s in probe_partitions(kafka_settings, spec.events_topic, {})}
    assert committed_group_offsets(kafka_settings, scorer_group(spec), spec.events_topic) == ends
    print(f"\ncrash test: {len(sent)} events, {len(predicted)} predictions, {sum(duplicates.values())} duplicates")


def test_serve_unknown_stream_is_a_clean_error(specs_dir: Path, kafka_bootstrap: str) -> None:
    result = CliRunner().invoke(main, ["serve", "no_such_stream", "--bootstrap", kafka_bootstrap])
    assert result.exit_code == 1
    assert "Error: unknown stream 'no_such_stream'" in result.output
