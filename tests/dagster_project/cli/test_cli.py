"""The `streamfit` command line, run through click against the real broker, and `streamfit broker` as a process."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from dagster_project.cli import main
from dagster_project.ingest.events import EventParser, InvalidEvent, make_event
from dagster_project.kafka.brokers.tansu import free_port
from dagster_project.kafka.io import ensure_topics, probe_partitions, read_range, topic_partitions
from dagster_project.kafka.settings import BOOTSTRAP_ENV, KafkaSettings
from dagster_project.registry.store import FilesystemRegistry
from dagster_project.spec import StreamSpec
from tests.helpers import StreamfitProcess, produce_synthetic


@pytest.fixture
def cli(specs_dir: Path, streamfit_home: Path, monkeypatch: pytest.MonkeyPatch):
    """Invoke `streamfit ...` in-process with the test's streams and home, and no ambient broker."""
    monkeypatch.delenv(BOOTSTRAP_ENV, raising=False)
    runner = CliRunner()
    return lambda *args: runner.invoke(main, [str(a) for a in args])


def write_jsonl(path: Path, spec: StreamSpec, rows: int) -> list[bytes]:
    lines = [
        make_event(f"ev-{i}", {name: float(i % 7) for name in spec.feature_names}, label=i % 2, ts=float(i))
        for i in range(rows)
    ]
    lines.insert(3, b"{this line is not json")  # sent as it is; the batch reader dead-letters it
    path.write_bytes(b"\n".join(lines[:6]) + b"\n\n" + b"\n".join(lines[6:]) + b"\n")  # a blank line is skipped
    return lines


def high_waters(settings: KafkaSettings, topic: str) -> dict[int, int]:
    return {s.partition: s.high_water for s in probe_partitions(settings, topic, {})}


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


def test_produce_missing_file_is_a_clean_error(cli, spec: StreamSpec, kafka_bootstrap: str, tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    result = cli("produce", spec.name, "--source", missing, "--bootstrap", kafka_bootstrap)
    assert result.exit_code == 1
    assert f"Error: unknown source '{missing}'" in result.output
    assert "a path to a .jsonl file" in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_produce_without_a_broker_is_a_clean_error(cli, spec: StreamSpec) -> None:
    result = cli("produce", spec.name, "--limit", 1)
    assert result.exit_code == 1
    assert f"no Kafka broker configured: set {BOOTSTRAP_ENV}" in result.output
    assert isinstance(result.exception, SystemExit)


def test_produce_unknown_stream_is_a_clean_error(cli, kafka_bootstrap: str) -> None:
    result = cli("produce", "no_such_stream", "--limit", 1, "--bootstrap", kafka_bootstrap)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "unknown stream 'no_such_stream'; known streams:" in result.output


@pytest.mark.parametrize("position", ["latest", "earliest"])
def test_offsets_reset_writes_a_pending_reset(
    cli, spec: StreamSpec, kafka_settings: KafkaSettings, registry: FilesystemRegistry, position: str
) -> None:
    produce_synthetic(kafka_settings, spec, 30)
    ends = high_waters(kafka_settings, spec.events_topic)
    result = cli("offsets", "reset", spec.name, "--to", position, "--bootstrap", kafka_settings.bootstrap)
    assert result.exit_code == 0, result.output

    target = ends if position == "latest" else dict.fromkeys(ends, 0)
    assert f"next batch starts at {target}" in result.stdout
    pending = registry.pending_offset_reset(spec.name)
    assert pending["offsets"] == {str(p): o for p, o in target.items()}
    assert pending["reason"] == f"operator reset (--to {position})"
    assert pending["by"]


def test_offsets_reset_of_a_stream_without_topic(cli, spec: StreamSpec, kafka_bootstrap: str, registry) -> None:
    result = cli("offsets", "reset", spec.name, "--to", "latest", "--bootstrap", kafka_bootstrap)
    assert result.exit_code == 1
    assert f"topic {spec.events_topic} does not exist on the broker" in result.output
    assert registry.pending_offset_reset(spec.name) is None


def test_models_list(cli, spec: StreamSpec, registry: FilesystemRegistry) -> None:
    result = cli("models", "list", spec.name)
    assert (result.exit_code, result.output) == (0, "")

    meta = {"offsets": {"learned": {"0": 12, "1": 8}}, "metrics": {"roc_auc": 0.75}}
    registry.register(spec.name, None, b"onnx", {"any": "estimator"}, meta)
    registry.register(spec.name, "v1", b"onnx", {"any": "estimator"}, meta)
    registry.set_champion(spec.name, "v1", reason="test")
    lines = cli("models", "list", spec.name).output.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("*") and "v1" in lines[0] and "roc_auc" in lines[0]
    assert lines[1].startswith(" ") and "parent    v1" in lines[1]


class BrokerProcess(StreamfitProcess):
    """`streamfit broker` as a child process, its output lines collected by a reader thread."""

    def __init__(self, port: int) -> None:
        super().__init__(["broker", "--port", str(port)])

    def wait_for(self, prefix: str, timeout_s: float = 15.0) -> str:
        return super().wait_for(prefix, timeout_s, prefix=True)

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []

    def rest(self) -> list[str]:
        out = []
        while (line := self.lines.get(timeout=5)) is not None:
            out.append(line)
        return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_broker_command_serves_kafka_and_stops_cleanly(stop_signal: signal.Signals) -> None:
    port = free_port()
    broker = BrokerProcess(port)
    tansu: list[int] = []
    try:
        export = broker.wait_for("export ")
        assert export == f"export {BOOTSTRAP_ENV}=127.0.0.1:{port}"
        broker.wait_for("embedded broker running")
        tansu = broker.children()
        assert len(tansu) == 1

        settings = KafkaSettings.from_env(export.split("=", 1)[1])
        ensure_topics(settings, ["cli-check"], partitions=3)
        assert topic_partitions(settings, "cli-check") == [0, 1, 2]

        broker.proc.send_signal(stop_signal)
        assert broker.proc.wait(timeout=10) == 0
        rest = broker.rest()
        if stop_signal == signal.SIGINT:
            assert rest[-1] == "broker stopped", rest
        assert not alive(tansu[0]), "the Tansu process outlived `streamfit broker`"
    finally:
        if broker.proc.poll() is None:
            broker.proc.kill()
            broker.proc.wait()
        for pid in tansu:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


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
