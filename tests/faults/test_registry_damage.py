"""Damaged registry files: every reader names the file and the fix; sensors and the exporter keep going."""

from __future__ import annotations

import dagster as dg
import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest

from dagster_project.cli import main
from dagster_project.observability.exporter import TrainingCollector
from dagster_project.resources import KafkaResource
from tests.helpers import high_waters, kafka_sensor_tick, produce_synthetic, run_batch


@pytest.fixture
def two_versions(kafka_settings, spec, registry, stream_defs, instance, specs_dir):
    produce_synthetic(kafka_settings, spec, 600)
    ends = high_waters(kafka_settings, spec.events_topic)
    half = {p: (0, e // 2) for p, e in ends.items()}
    assert run_batch(stream_defs, spec, half, instance).success
    assert run_batch(stream_defs, spec, {p: (e // 2, e) for p, e in ends.items()}, instance).success
    produce_synthetic(kafka_settings, spec, 300, start=600)  # a batch waiting for the sensor
    return registry.versions(spec.name)


def _scrape(registry, spec) -> str:
    collectors = CollectorRegistry()
    collectors.register(TrainingCollector(registry, [spec], None))
    return generate_latest(collectors).decode()


def test_a_truncated_head_meta_stops_the_stream_loudly_and_nothing_else(
    two_versions, kafka_bootstrap, spec, registry, stream_defs, instance, streamfit_home
):
    meta = registry.root / spec.name / "v2" / "meta.json"
    meta.write_bytes(meta.read_bytes()[:40])

    tick = kafka_sensor_tick(stream_defs, spec, instance, KafkaResource(bootstrap=kafka_bootstrap), registry)
    assert isinstance(tick, dg.SkipReason)
    assert "REGISTRY ERROR" in tick.skip_message and str(meta) in tick.skip_message
    assert "backup" in tick.skip_message and "move" in tick.skip_message  # the fix, not a decoding traceback

    listing = CliRunner().invoke(main, ["models", "list", spec.name])
    assert listing.exit_code == 0, listing.output
    assert "v1" in listing.output and "BROKEN" in listing.output and str(meta) in listing.output
    shown = CliRunner().invoke(main, ["offsets", "show", spec.name, "--bootstrap", kafka_bootstrap])
    assert shown.exit_code == 1 and str(meta) in shown.output and "Traceback" not in shown.output
    promoted = CliRunner().invoke(main, ["models", "promote", spec.name, "v1"])
    assert promoted.exit_code == 0, promoted.output  # the operator can still act on the good versions

    assert f'streamfit_registry_broken_files{{stream="{spec.name}"}} 1.0' in _scrape(registry, spec)


def test_a_broken_older_version_is_flagged_and_training_goes_on(
    two_versions, kafka_bootstrap, spec, registry, stream_defs, instance, streamfit_home
):
    (registry.root / spec.name / "v1" / "meta.json").write_text("{not json")
    tick = kafka_sensor_tick(stream_defs, spec, instance, KafkaResource(bootstrap=kafka_bootstrap), registry)
    assert isinstance(tick, dg.SensorResult) and len(tick.run_requests) == 1
    assert [v.name for v in registry.versions(spec.name)] == ["v2"]
    listing = CliRunner().invoke(main, ["models", "list", spec.name])
    assert listing.exit_code == 0 and "BROKEN" in listing.output and "v2" in listing.output


def test_a_corrupt_champion_alias_names_the_repair_and_promote_repairs_it(two_versions, spec, registry):
    alias = registry.root / spec.name / "champion"
    alias.write_text('{"vers')
    listing = CliRunner().invoke(main, ["models", "list", spec.name])
    assert listing.exit_code == 0 and "streamfit models promote" in listing.output
    rollback = CliRunner().invoke(main, ["models", "rollback", spec.name])
    assert rollback.exit_code == 1 and str(alias) in rollback.output and "Traceback" not in rollback.output
    assert CliRunner().invoke(main, ["models", "promote", spec.name, "v2"]).exit_code == 0
    assert registry.champion(spec.name) == "v2"


def test_logs_tolerate_a_torn_last_line_and_name_a_damaged_one(two_versions, spec, registry):
    history = registry.root / spec.name / "champion_history.jsonl"
    before = registry.champion_history(spec.name)
    with open(history, "ab") as fh:
        fh.write(b'{"version": "v')  # a crash mid-append
    assert registry.champion_history(spec.name) == before
    history.write_bytes(b"garbage\n" + history.read_bytes())
    with pytest.raises(Exception, match="line 1"):
        registry.champion_history(spec.name)


@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_a_head_whose_estimator_is_damaged_fails_its_batch_naming_the_fix(
    two_versions, kafka_settings, spec, registry, stream_defs, instance, damage
):
    """It failed with a bare FileNotFoundError (or a checksum error) naming no fix, on every retry."""
    estimator = registry.root / spec.name / "v2" / "estimator.joblib"
    if damage == "missing":
        estimator.unlink()
    else:
        estimator.write_bytes(b"garbage")
    ends = high_waters(kafka_settings, spec.events_topic)
    learned = two_versions[-1].learned

    failed = run_batch(stream_defs, spec, {p: (learned[p], e) for p, e in ends.items()}, instance, raise_on_error=False)

    assert not failed.success
    error = str(next(e for e in failed.all_events if e.is_step_failure).event_specific_data.error)
    assert f"{spec.name}: cannot load v2's estimator to continue learning from it" in error
    assert "Restore v2's files from a backup, or move v2 out of the registry" in error
    assert [v.name for v in registry.versions(spec.name)] == ["v1", "v2"]
