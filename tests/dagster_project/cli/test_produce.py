"""`streamfit produce` against the real broker: a .jsonl file byte for byte, and its clean errors."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from dagster_project.check.backtest import backtest
from dagster_project.dev.datasets import sensor_events
from dagster_project.ingest.events import EventParser, InvalidEvent, make_event
from dagster_project.kafka.io import read_range, topic_partitions
from dagster_project.kafka.settings import BOOTSTRAP_ENV, KafkaSettings
from dagster_project.spec import StreamSpec
from tests.dagster_project.features.support import sensors_spec
from tests.helpers import high_waters, read_topic


def write_jsonl(path: Path, spec: StreamSpec, rows: int) -> list[bytes]:
    lines = [
        make_event(f"ev-{i}", {name: float(i % 7) for name in spec.feature_names}, label=i % 2, ts=float(i))
        for i in range(rows)
    ]
    lines.insert(3, b"{this line is not json")  # sent as it is; the batch reader dead-letters it
    path.write_bytes(b"\n".join(lines[:6]) + b"\n\n" + b"\n".join(lines[6:]) + b"\n")  # a blank line is skipped
    return lines


def test_produce_from_a_jsonl_file(cli, spec: StreamSpec, kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    lines = write_jsonl(source, spec, rows=40)
    result = cli("produce", spec.name, "--source", source, "--limit", 25, "--bootstrap", kafka_settings.bootstrap)
    assert result.exit_code == 0, result.output
    assert f"produced 25 events to {spec.events_topic}" in result.stdout

    ends = high_waters(kafka_settings, spec.events_topic)
    assert sorted(ends) == list(range(spec.partitions))
    assert sum(ends.values()) == 25
    records = list(read_range(kafka_settings, spec.events_topic, {p: (0, e) for p, e in ends.items()}))
    assert sorted(r.value for r in records) == sorted(lines[:25])  # byte for byte, the first 25 lines
    keys = {r.value: r.key for r in records}
    assert keys[b"{this line is not json"] is None
    assert keys[lines[0]] == b"ev-0"
    for topic in (spec.labels_topic, spec.dlq_topic, spec.predictions_topic):
        assert topic_partitions(kafka_settings, topic) == list(range(spec.partitions))


@pytest.mark.parametrize("spec", [sensors_spec(partitions=3)])
def test_a_derived_feature_streams_file_keeps_each_key_on_one_partition(
    cli, spec: StreamSpec, kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """The per-device rolling features are computed per partition: a device whose readings were spread
    over partitions would have each partition see part of its history, with no error anywhere. And
    `streamfit check --sample` places the same file where the broker did."""
    source = tmp_path / "sensors.jsonl"
    lines = [make_event(e.event_id, e.features, e.label, e.ts, **e.fields) for e in sensor_events(rows=600, devices=12)]
    source.write_bytes(b"\n".join(lines) + b"\n")
    result = cli("produce", spec.name, "--source", source, "--bootstrap", kafka_settings.bootstrap)
    assert result.exit_code == 0, result.output

    records = read_topic(kafka_settings, spec.events_topic)
    assert len(records) == 600
    partitions_of: dict[str, set[int]] = {}
    for record in records:
        assert record["_key"] == record["device"].encode()
        partitions_of.setdefault(record["device"], set()).add(record["_partition"])
    assert len(partitions_of) == 12 and all(len(p) == 1 for p in partitions_of.values())
    assert len(set.union(*partitions_of.values())) > 1  # and the devices are spread over the partitions
    assert backtest(spec, lines).partitions == high_waters(kafka_settings, spec.events_topic)


def test_produce_missing_file_says_so_and_creates_nothing(
    cli, spec: StreamSpec, kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """A typo in --source fails before any topic exists: an empty topic made the sensor say caught up."""
    missing = tmp_path / "nope.jsonl"
    result = cli("produce", spec.name, "--source", missing, "--bootstrap", kafka_settings.bootstrap)
    assert result.exit_code == 1
    assert f"Error: file not found: {missing}" in result.output
    assert "unknown source" not in result.output
    assert "producing" not in result.output  # no progress bar
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    assert topic_partitions(kafka_settings, spec.events_topic) == []


def test_an_event_too_large_for_kafka_is_a_clean_error_naming_it(
    cli, spec: StreamSpec, kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """kafka-python raised MessageSizeTooLargeError out of `streamfit produce` as a traceback."""
    features = {name: 1.0 for name in spec.feature_names}
    big = orjson.dumps({"id": "big", "ts": 1.0, "features": features, "label": 1, "note": "x" * 2_000_000})
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join([make_event("a", features, label=0, ts=1.0), big, make_event("c", features)]))

    result = cli("produce", spec.name, "--source", source, "--bootstrap", kafka_settings.bootstrap)

    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), repr(result.exception)
    assert f"Error: event 2 is {len(big):,} bytes, more than a Kafka message may be" in result.output
    assert "the 1 before it were sent; shrink or split it, or leave it out of the source" in result.output
    assert sum(high_waters(kafka_settings, spec.events_topic).values()) == 1


def test_produce_a_stream_without_a_built_in_source_names_the_source_option(
    cli, spec: StreamSpec, kafka_settings: KafkaSettings
) -> None:
    """The sensor's hint for a custom stream's empty topic: without --source there is nothing to replay."""
    result = cli("produce", spec.name, "--bootstrap", kafka_settings.bootstrap)
    assert result.exit_code == 1
    assert f"Error: stream '{spec.name}' has no built-in source to replay" in result.output
    assert "pass --source events.jsonl" in result.output
    assert "producing" not in result.output
    assert isinstance(result.exception, SystemExit)
    assert topic_partitions(kafka_settings, spec.events_topic) == []


def test_produce_an_unknown_source_name_lists_the_built_in_ones(cli, spec: StreamSpec, kafka_bootstrap: str) -> None:
    result = cli("produce", spec.name, "--source", "phising", "--bootstrap", kafka_bootstrap)
    assert result.exit_code == 1
    assert "Error: unknown source 'phising': use one of ['census', 'phishing', 'sensors', 'synthetic']" in result.output


def test_produce_without_a_broker_is_a_clean_error(cli, spec: StreamSpec) -> None:
    result = cli("produce", spec.name, "--source", "synthetic", "--limit", 1)
    assert result.exit_code == 1
    assert f"no Kafka broker configured: set {BOOTSTRAP_ENV}" in result.output
    assert isinstance(result.exception, SystemExit)


def test_produce_unknown_stream_is_a_clean_error(cli, kafka_bootstrap: str) -> None:
    result = cli("produce", "no_such_stream", "--limit", 1, "--bootstrap", kafka_bootstrap)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "unknown stream 'no_such_stream'; known streams:" in result.output


def test_events_in_the_jsonl_file_parse(spec: StreamSpec, tmp_path: Path) -> None:
    """The file the produce test sends is valid events except the one deliberate bad line."""
    parser = EventParser(spec)
    lines = write_jsonl(tmp_path / "e.jsonl", spec, rows=10)
    bad = []
    for line in lines:
        try:
            parser.parse(line)
        except InvalidEvent:
            bad.append(line)
    assert bad == [b"{this line is not json"]
    assert orjson.loads(lines[0])["id"] == "ev-0"
