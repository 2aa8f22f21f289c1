"""The fanned-out `micro_batch` asset (assets/group_reads.py) on a real broker and a real Dagster instance."""

from __future__ import annotations

import dagster as dg
import orjson

from dagster_project.ingest.events import make_event
from dagster_project.kafka import clients
from dagster_project.kafka.io import probe_partitions
from dagster_project.spec import StreamSpec
from tests.conftest import synthetic_spec
from tests.helpers import defs_for, produce_synthetic, read_topic, run_batch


def fanned(**quality) -> StreamSpec:
    """A 4-partition stream read and learned by 2 partition-group steps."""
    return synthetic_spec(
        partitions=4, model={"scale_out": {"workers": 2, "min_rows_per_worker": 100}}, quality=quality or {}
    )


def _send(settings, topic: str, partition: int, values: list[bytes]) -> None:
    producer = clients.producer(settings)
    for value in values:
        producer.send(topic, value=value, partition=partition)
    producer.flush()
    producer.close()


def _all(settings, spec: StreamSpec) -> dict[int, tuple[int, int]]:
    return {s.partition: (0, s.high_water) for s in probe_partitions(settings, spec.events_topic, {})}


def _steps(result, event: str = "STEP_SUCCESS") -> list[str]:
    return sorted(e.step_key for e in result.all_events if e.event_type_value == event)


def _micro_batch(result, spec: StreamSpec) -> dict:
    (materialization,) = result.asset_materializations_for_node(f"{spec.name}__micro_batch")
    return materialization.metadata


def test_each_group_step_reads_only_its_own_partitions(kafka_settings, registry, instance, kafka_bootstrap):
    spec = fanned()
    defs = defs_for(spec, kafka_bootstrap, registry)
    produce_synthetic(kafka_settings, spec, 1200)
    ranges = _all(kafka_settings, spec)

    result = run_batch(defs, spec, ranges, instance)

    read = f"{spec.name}__micro_batch.{spec.name}__read_group"
    assert {f"{read}[g0]", f"{read}[g1]"} <= set(_steps(result))
    metadata = _micro_batch(result, spec)
    groups = metadata["read_groups"].value
    assert [g["partitions"] for g in groups] == [[0, 2], [1, 3]]
    for g in groups:  # each group's rows come from its partitions only, first to last offset of each
        assert g["offsets"] == {str(p): [0, ranges[p][1] - 1] for p in g["partitions"]}
        assert g["rows"] == sum(ranges[p][1] for p in g["partitions"])
    assert metadata["rows"].value == 1200
    (version,) = registry.versions(spec.name)
    assert version.meta["offsets"]["batch"] == {str(p): [s, e] for p, (s, e) in ranges.items()}

    again = run_batch(defs, spec, ranges, instance)  # the same ranges again: learned already, a green no-op
    (check,) = [e for e in again.get_asset_check_evaluations() if e.check_name == "data_quality"]
    assert check.passed and "was already learned (v1)" in check.description
    assert [v.name for v in registry.versions(spec.name)] == ["v1"]


def test_a_malformed_message_is_dead_lettered_once_though_its_group_step_failed_and_was_retried(
    kafka_settings, registry, instance, kafka_bootstrap, monkeypatch
):
    spec = fanned()
    defs = defs_for(spec, kafka_bootstrap, registry)
    produce_synthetic(kafka_settings, spec, 800)
    _send(kafka_settings, spec.events_topic, 1, [b"{not json"])  # partition 1: group g1's
    ranges = _all(kafka_settings, spec)

    # g1 fails after its read and dead letter on every attempt: the run fails, nothing is learned.
    monkeypatch.setenv("STREAMFIT_FAULT", "read_group_g1")
    failed = run_batch(defs, spec, ranges, instance, raise_on_error=False)
    assert not failed.success
    assert registry.versions(spec.name) == []
    # Then only its first attempt fails (a step retry), and the re-executed run succeeds.
    monkeypatch.setenv("STREAMFIT_FAULT", "read_group_g1@0")
    result = run_batch(defs, spec, ranges, instance)

    assert f"{spec.name}__micro_batch.{spec.name}__read_group[g1]" in _steps(result, "STEP_RESTARTED")
    (letter,) = read_topic(kafka_settings, spec.dlq_topic)  # once, across 2 runs and 4 attempts of g1
    assert (letter["partition"], letter["offset"], letter["component"]) == (1, ranges[1][1] - 1, "trainer")
    assert "not valid JSON" in letter["reason"]
    metadata = _micro_batch(result, spec)
    assert metadata["dlq"].value == 1 and [g["dlq"] for g in metadata["read_groups"].value] == [0, 1]
    (version,) = registry.versions(spec.name)  # learned once, with the batch's full ranges
    assert version.learned == {p: end for p, (_, end) in ranges.items()}
    assert version.meta["rows_learned_total"] == 800


def test_a_batch_level_rule_is_decided_on_the_merged_batch(kafka_settings, registry, instance, kafka_bootstrap):
    spec = fanned(policy="halt")
    defs = defs_for(spec, kafka_bootstrap, registry)
    produce_synthetic(kafka_settings, spec, 800)
    twin = make_event("twin", {f"x{i}": 0.1 for i in range(5)}, 1, 0.0)
    # Partitions 0 and 1 are read by different groups: each group's ids are unique, the batch's are not.
    _send(kafka_settings, spec.events_topic, 0, [twin])
    _send(kafka_settings, spec.events_topic, 1, [twin])
    ranges = _all(kafka_settings, spec)

    result = run_batch(defs, spec, ranges, instance, raise_on_error=False)

    (check,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "data_quality"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert "id" in orjson.dumps(check.metadata["failures"].value).decode()
    assert registry.versions(spec.name) == []
    halt = registry.halt(spec.name)
    assert halt["ranges"] == {str(p): list(r) for p, r in ranges.items()}
    assert not any("__model" in s for s in _steps(result))  # nothing trained
