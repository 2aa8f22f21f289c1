"""`streamfit offsets reset` against the real broker: the pending reset it writes, and who wrote it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import dagster as dg
import pytest
import yaml
from kafka import TopicPartition

from dagster_project.cli.common import OPERATOR_ENV
from dagster_project.kafka import clients
from dagster_project.kafka.brokers.tansu import EmbeddedBroker
from dagster_project.kafka.offsets import decode_ranges
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.registry.store import FilesystemRegistry
from dagster_project.resources import KafkaResource
from dagster_project.spec import StreamSpec
from tests.helpers import high_waters, kafka_sensor_tick, produce_synthetic, run_batch


def test_offsets_reset_writes_a_pending_reset(
    cli, spec: StreamSpec, kafka_settings: KafkaSettings, registry: FilesystemRegistry
) -> None:
    produce_synthetic(kafka_settings, spec, 30)
    ends = high_waters(kafka_settings, spec.events_topic)
    args = ("offsets", "reset", spec.name, "--bootstrap", kafka_settings.bootstrap, "--to")

    for position, target, force in (("latest", ends, ("--force",)), ("earliest", dict.fromkeys(ends, 0), ())):
        result = cli(*args, position, *force)  # back to earliest undoes the skip: no --force needed
        assert result.exit_code == 0, result.output
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


def test_offsets_reset_records_the_operator(
    cli, spec: StreamSpec, kafka_settings: KafkaSettings, registry: FilesystemRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(OPERATOR_ENV, "dana")
    produce_synthetic(kafka_settings, spec, 10)
    result = cli("offsets", "reset", spec.name, "--to", "latest", "--force", "--bootstrap", kafka_settings.bootstrap)
    assert result.exit_code == 0, result.output
    assert registry.pending_offset_reset(spec.name)["by"] == "dana"


def test_a_reset_of_a_stream_without_an_offset_gap_is_refused_unless_forced(
    cli, spec: StreamSpec, kafka_settings: KafkaSettings, registry: FilesystemRegistry, stream_defs, instance
) -> None:
    """A reset is for data loss. On a healthy stream `--to earliest` learned its rows a second time
    with no word said; now it names what it would do and asks for --force."""
    produce_synthetic(kafka_settings, spec, 300)
    ends = high_waters(kafka_settings, spec.events_topic)
    assert run_batch(stream_defs, spec, {p: (0, e) for p, e in ends.items()}, instance).success
    produce_synthetic(kafka_settings, spec, 100, start=300)
    args = ("offsets", "reset", spec.name, "--bootstrap", kafka_settings.bootstrap)

    earliest = cli(*args, "--to", "earliest")
    latest = cli(*args, "--to", "latest")

    assert earliest.exit_code == latest.exit_code == 1
    assert f"{spec.name} has no offset gap: v1 learned up to" in earliest.output
    assert "would learn 300 rows v1 already learned again. Pass --force" in earliest.output
    assert "would skip 100 rows nobody learned. Pass --force" in latest.output
    assert registry.pending_offset_reset(spec.name) is None

    forced = cli(*args, "--to", "latest", "--force")
    assert forced.exit_code == 0, forced.output
    # Judged against what v1 learned, not the pending reset it replaces (300 rows, not 400).
    again = cli(*args, "--to", "earliest")
    assert again.exit_code == 1 and "v1 learned up to" in again.output
    assert "(replacing the pending reset to" in again.output and "would learn 300 rows v1 already" in again.output
    forced = cli(*args, "--to", "earliest", "--force")
    assert forced.exit_code == 0, forced.output
    assert registry.pending_offset_reset(spec.name)["offsets"] == dict.fromkeys(map(str, ends), 0)


def test_a_reset_of_a_stream_nothing_learned_yet_is_refused_unless_forced(
    cli, spec: StreamSpec, kafka_settings: KafkaSettings, registry: FilesystemRegistry, stream_defs, instance
) -> None:
    """Before its first version, `--to latest` moved a stream past every row waiting on the broker
    without --force and without a word of how many: 300 rows nobody learned were silently skipped."""
    produce_synthetic(kafka_settings, spec, 300)
    ends = high_waters(kafka_settings, spec.events_topic)
    args = ("offsets", "reset", spec.name, "--bootstrap", kafka_settings.bootstrap, "--to", "latest")

    refused = cli(*args)

    assert refused.exit_code == 1, refused.output
    assert f"{spec.name} has no offset gap: no version has learned from it yet" in refused.output
    assert "would skip 300 rows nobody learned. Pass --force" in refused.output
    assert registry.pending_offset_reset(spec.name) is None
    tick = kafka_sensor_tick(stream_defs, spec, instance, KafkaResource(bootstrap=kafka_settings.bootstrap), registry)
    (request,) = tick.run_requests
    assert decode_ranges(request.tags["streamfit/ranges"]) == {p: (0, e) for p, e in ends.items()}  # every row
    dry = cli(*args, "--force", "--dry-run")  # what it would pass over, before anything is given up
    assert dry.exit_code == 0, dry.output
    assert f"the next batch would start at {ends} (dry run: nothing written)" in dry.output
    assert "moves the start forward past 300 row(s), which go unlearned" in dry.output
    assert registry.pending_offset_reset(spec.name) is None
    forced = cli(*args, "--force")
    assert forced.exit_code == 0, forced.output
    assert "moves the start forward past 300 row(s), which go unlearned" in forced.output
    assert registry.pending_offset_reset(spec.name)["offsets"] == {str(p): e for p, e in ends.items()}


def test_a_reset_that_moves_nothing_says_so_and_records_nothing(
    cli, spec: StreamSpec, kafka_settings: KafkaSettings, registry: FilesystemRegistry, stream_defs, instance
) -> None:
    """On a stream caught up with the broker, `--to latest` printed "next batch starts at ...; the next
    version records this reset": it wrote a reset that moved nothing, and the next version recorded
    an operator reset that never happened."""
    produce_synthetic(kafka_settings, spec, 300)
    ends = high_waters(kafka_settings, spec.events_topic)
    assert run_batch(stream_defs, spec, {p: (0, e) for p, e in ends.items()}, instance).success

    result = cli("offsets", "reset", spec.name, "--bootstrap", kafka_settings.bootstrap, "--to", "latest")

    assert result.exit_code == 0, result.output
    assert f"{spec.name}: nothing to reset: the next batch already starts at {ends}; nothing was written" in (
        result.output
    )
    assert "records this reset" not in result.output
    assert registry.pending_offset_reset(spec.name) is None
    shown = cli("offsets", "show", spec.name, "--bootstrap", kafka_settings.bootstrap)
    assert shown.exit_code == 0 and "pending reset" not in shown.output


def test_offsets_show_against_a_broker_that_does_not_answer_is_one_line_naming_the_fix(
    cli, spec: StreamSpec, tmp_path: Path
) -> None:
    """A broker that accepts connections but answers nothing (stopped, wedged): `offsets show` sat
    silent for 30 s, then ended in kafka-python's traceback (KafkaTimeoutError from the group offsets
    lookup) instead of an error."""
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as broker:
        os.kill(broker.process.pid, signal.SIGSTOP)
        try:
            shown = cli("offsets", "show", spec.name, "--bootstrap", broker.bootstrap)
        finally:
            os.kill(broker.process.pid, signal.SIGCONT)

    assert shown.exit_code == 1, shown.output
    assert isinstance(shown.exception, SystemExit), shown.exception  # a clean exit, no traceback
    # It said at once (after 2 s, not 30) that it was waiting, and why, rather than hanging silently.
    assert f"the broker at {broker.bootstrap} accepted the connection but has not answered" in shown.stderr
    assert "waiting up to 30 s more" in shown.stderr
    assert f"Error: Kafka broker at {broker.bootstrap} accepted the connection but did not answer" in shown.output
    assert "Nothing was changed" in shown.output


def test_a_reset_after_retention_moves_only_the_partitions_with_a_gap_unless_forced(
    cli, spec: StreamSpec, kafka_settings: KafkaSettings, registry: FilesystemRegistry, stream_defs, instance
) -> None:
    """Retention deleted rows the model had not learned on one partition: `--to earliest` moved every
    partition back, so the healthy ones learned their rows a second time. Only the gap moves now."""
    produce_synthetic(kafka_settings, spec, 300)
    first = high_waters(kafka_settings, spec.events_topic)
    assert len(first) > 1 and all(first.values())
    assert run_batch(stream_defs, spec, {p: (0, e) for p, e in first.items()}, instance).success
    produce_synthetic(kafka_settings, spec, 300, start=300)
    ends = high_waters(kafka_settings, spec.events_topic)
    gapped, *healthy = sorted(ends)
    kept_from = first[gapped] + 10  # retention: the log of partition `gapped` now starts after v1 stopped
    delete_before(kafka_settings, spec.events_topic, gapped, kept_from)
    args = ("offsets", "reset", spec.name, "--bootstrap", kafka_settings.bootstrap, "--to", "earliest")

    result = cli(*args)

    assert result.exit_code == 0, result.output
    expected = {str(p): kept_from if p == gapped else first[p] for p in ends}
    assert registry.pending_offset_reset(spec.name)["offsets"] == expected
    assert f"partition(s) {', '.join(map(str, healthy))} have no gap and stay where v1 learned up to" in result.output
    forced = cli(*args, "--force")
    assert forced.exit_code == 0, forced.output
    assert registry.pending_offset_reset(spec.name)["offsets"] == {
        str(p): kept_from if p == gapped else 0 for p in ends
    }


def test_a_partition_never_learned_keeps_its_rows_when_another_partition_s_gap_is_reset(
    cli, spec: StreamSpec, kafka_settings: KafkaSettings, registry: FilesystemRegistry, stream_defs, instance
) -> None:
    """`--to latest` after a retention gap moved a partition the head never learned to its end too:
    its rows, all still on the broker, were skipped unlearned. It stays at its log's start now."""
    produce_synthetic(kafka_settings, spec, 300)
    first = high_waters(kafka_settings, spec.events_topic)
    gapped, *never = sorted(first)
    assert never and all(first.values())
    assert run_batch(stream_defs, spec, {gapped: (0, first[gapped])}, instance).success
    produce_synthetic(kafka_settings, spec, 300, start=300)
    ends = high_waters(kafka_settings, spec.events_topic)
    delete_before(kafka_settings, spec.events_topic, gapped, first[gapped] + 10)

    result = cli("offsets", "reset", spec.name, "--bootstrap", kafka_settings.bootstrap, "--to", "latest")

    assert result.exit_code == 0, result.output
    assert registry.pending_offset_reset(spec.name)["offsets"] == {
        str(gapped): ends[gapped]
    }  # the sensor plans the rest
    said = f"partition(s) {', '.join(map(str, never))} were never learned and start at their log's start"
    assert said in result.output
    tick = kafka_sensor_tick(stream_defs, spec, instance, KafkaResource(bootstrap=kafka_settings.bootstrap), registry)
    assert isinstance(tick, dg.SensorResult), tick
    (request,) = tick.run_requests
    assert decode_ranges(request.tags["streamfit/ranges"]) == {p: (0, ends[p]) for p in never}
    job = stream_defs.resolve_job_def(f"{spec.name}_training")
    assert job.execute_in_process(run_config=request.run_config, instance=instance, tags=request.tags).success
    assert registry.head(spec.name).learned == ends  # every row of the never-learned partitions, none skipped


def test_a_log_that_ends_before_the_model_moves_every_partition(
    cli, spec: StreamSpec, kafka_settings: KafkaSettings, registry: FilesystemRegistry
) -> None:
    """A partition whose log ends before where the model stopped lost its data (the broker, or the
    topic recreated): the other partitions' offsets may name other records too, so all move."""
    produce_synthetic(kafka_settings, spec, 300)
    ends = high_waters(kafka_settings, spec.events_topic)
    gapped = min(ends)
    learned = {str(p): (e + 5000 if p == gapped else e) for p, e in ends.items()}
    registry.register(spec.name, None, b"onnx", {"fake": "estimator"}, {"offsets": {"learned": learned}})

    result = cli("offsets", "reset", spec.name, "--bootstrap", kafka_settings.bootstrap, "--to", "earliest")

    assert result.exit_code == 0, result.output
    assert registry.pending_offset_reset(spec.name)["offsets"] == dict.fromkeys(map(str, ends), 0)
    assert "have no gap" not in result.output


def test_offsets_show_notes_a_topic_whose_partitions_differ_from_the_spec(
    cli, spec: StreamSpec, kafka_settings: KafkaSettings, registry: FilesystemRegistry, specs_dir: Path
) -> None:
    """`partitions:` raised in the spec after the topic existed changed nothing, and nothing said so."""
    produce_synthetic(kafka_settings, spec, 10)  # the topic, with the spec's partitions
    raised = spec.model_copy(update={"partitions": spec.partitions + 2})
    (specs_dir / f"{spec.name}.yaml").write_text(yaml.safe_dump(raised.model_dump(mode="json")))

    shown = cli("offsets", "show", spec.name, "--bootstrap", kafka_settings.bootstrap)

    assert shown.exit_code == 0, shown.output
    assert f"NOTE: {spec.events_topic} has {spec.partitions} partition(s) but the stream spec says" in shown.output
    assert "never changes an existing topic's partitions" in shown.output and "kafka-topics.sh --alter" in shown.output


def test_a_reset_for_a_gap_keeps_where_a_pending_skip_moved_a_healthy_partition(
    cli, spec: StreamSpec, kafka_settings: KafkaSettings, registry: FilesystemRegistry, stream_defs, instance
) -> None:
    """A healthy partition stayed where the head stopped, undoing a pending skip there: the skipped
    (poison) rows were learned after all. It stays where the next batch would start it now."""
    produce_synthetic(kafka_settings, spec, 300)
    first = high_waters(kafka_settings, spec.events_topic)
    assert run_batch(stream_defs, spec, {p: (0, e) for p, e in first.items()}, instance).success
    produce_synthetic(kafka_settings, spec, 300, start=300)
    gapped, healthy = sorted(first)
    skipped_to = first[healthy] + 20
    registry.set_pending_offsets(spec.name, {healthy: skipped_to}, reason="skipped after a halt: poison", by="ops")
    delete_before(kafka_settings, spec.events_topic, gapped, first[gapped] + 10)

    result = cli("offsets", "reset", spec.name, "--bootstrap", kafka_settings.bootstrap, "--to", "earliest")

    assert result.exit_code == 0, result.output
    pending = registry.pending_offset_reset(spec.name)
    assert pending["offsets"] == {str(gapped): first[gapped] + 10, str(healthy): skipped_to}
    assert "it replaces the pending reset to" in result.output


def delete_before(settings: KafkaSettings, topic: str, partition: int, offset: int) -> None:
    """Retention, by hand: the partition's log now starts at `offset` (skipped on a broker without DeleteRecords)."""
    admin = clients.admin(settings)
    try:
        admin.delete_records({TopicPartition(topic, partition): offset})
    except Exception as exc:  # noqa: BLE001 - a broker without DeleteRecords cannot lose offsets this way
        pytest.skip(f"broker cannot delete records: {exc!r}")
    finally:
        admin.close()


@pytest.mark.parametrize("when", ["before the write's check", "between the check and the write"])
def test_a_version_registered_while_a_reset_is_computed_makes_the_command_fail_and_the_reset_unapplied(
    cli,
    spec: StreamSpec,
    kafka_settings: KafkaSettings,
    registry: FilesystemRegistry,
    monkeypatch: pytest.MonkeyPatch,
    when: str,
) -> None:
    """The command read the head, then wrote the reset: a training run committing in between made
    it a reset against a stale head, which the next version applied, and the operator read "next
    batch starts at ..."."""
    produce_synthetic(kafka_settings, spec, 20)
    meta = {"offsets": {"learned": {"0": 5}}}
    registry.register(spec.name, None, b"onnx", {"any": "estimator"}, meta)  # v1: what the command reads
    hooked = "halt" if when == "before the write's check" else "_store_offset_reset"
    real = getattr(FilesystemRegistry, hooked)

    def racing(self, *args, **kwargs):
        if registry.head(spec.name).name == "v1":  # a training run commits v2 (once)
            registry.register(spec.name, "v1", b"onnx", {"any": "estimator"}, {"offsets": {"learned": {"0": 9}}})
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FilesystemRegistry, hooked, racing)
    result = cli("offsets", "reset", spec.name, "--to", "earliest", "--force", "--bootstrap", kafka_settings.bootstrap)
    assert result.exit_code == 1, result.output
    assert "was computed against head v1, but v2 is the head now" in result.output
    assert f"Run `streamfit offsets reset {spec.name} ...` again" in result.output
    assert "next batch starts at" not in result.output
    assert registry.pending_offset_reset(spec.name) is None  # the next version learns on from v2
