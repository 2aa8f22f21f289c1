"""Offsets belong to one cluster and one incarnation of a topic: anything else is a loud OFFSET GAP.

The probe that found this: restart the in-memory broker, produce more events than the model had
learned, and the sensor said `caught up` while the new topic's first rows were never learned.
"""

from __future__ import annotations

import dagster as dg
import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest

from dagster_project.cli import main
from dagster_project.dev.producer import produce
from dagster_project.kafka import clients
from dagster_project.kafka.brokers.tansu import EmbeddedBroker
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.names import RANGES_TAG, RELEARNS_TAG
from dagster_project.observability.exporter import exporter_registry
from dagster_project.resources import KafkaResource
from tests.conftest import synthetic_spec
from tests.helpers import defs_for, high_waters, kafka_sensor_tick, produce_synthetic, read_topic, run_batch


def _planned(tick) -> dict[int, tuple[int, int]]:
    (request,) = tick.run_requests
    config = next(iter(request.run_config["ops"].values()))["config"]
    return {int(r["partition"]): (r["start"], r["end"]) for r in config["ranges"]}


def _learn_everything(settings, spec, registry, instance, kafka):
    defs = defs_for(spec, settings.bootstrap, registry)
    ranges = _planned(kafka_sensor_tick(defs, spec, instance, kafka, registry))
    assert run_batch(defs, spec, ranges, instance).success
    return defs


def _fill_with_four_malformed(settings, spec) -> None:
    """200 events, 4 malformed, 196 events: the same keys each time, so the same partitions and
    offsets on each incarnation of the topic."""
    produce_synthetic(settings, spec, 200)
    produce(settings, spec, [(b"bad%d" % i, b"{not json") for i in range(4)])
    produce_synthetic(settings, spec, 196, start=200)


def _learn_next_planned(defs, spec, instance, kafka, registry) -> dg.RunRequest:
    """The Kafka sensor's next batch, run as the daemon would launch it (its key and tags)."""
    (request,) = kafka_sensor_tick(defs, spec, instance, kafka, registry).run_requests
    job = defs.resolve_job_def(f"{spec.name}_training")
    tags = {"dagster/run_key": request.run_key, **request.tags}
    assert job.execute_in_process(run_config=request.run_config, instance=instance, tags=tags).success
    return request


def _delete_events_topic(settings, spec) -> None:
    admin = clients.admin(settings)
    try:
        admin.delete_topics([spec.events_topic], timeout_ms=10_000)
    except Exception as exc:  # a broker without DeleteTopics cannot recreate a topic either
        pytest.skip(f"broker cannot delete topics: {exc!r}")
    finally:
        admin.close()


@pytest.mark.timeout(180)
def test_a_broker_restarted_empty_is_an_offset_gap_until_reset(
    spec, registry, instance, specs_dir, streamfit_home, tmp_path
):
    with EmbeddedBroker(log_path=tmp_path / "first.log") as first:
        settings = KafkaSettings.from_env(first.bootstrap)
        produce_synthetic(settings, spec, 400)
        _learn_everything(settings, spec, registry, instance, KafkaResource(bootstrap=first.bootstrap))
    (v1,) = registry.versions(spec.name)
    assert sum(v1.learned.values()) == 400 and v1.meta["offsets"]["identity"]["topic_id"]

    with EmbeddedBroker(log_path=tmp_path / "second.log") as second:  # the same cluster, restarted empty
        settings = KafkaSettings.from_env(second.bootstrap)
        kafka = KafkaResource(bootstrap=second.bootstrap)
        defs = defs_for(spec, second.bootstrap, registry)
        # Before any producer recreates the topic: not "does not exist yet (produce to it)"
        empty = kafka_sensor_tick(defs, spec, instance, kafka, registry)
        assert isinstance(empty, dg.SkipReason) and "OFFSET GAP" in empty.skip_message, empty
        assert f"has no topic {spec.events_topic}, but v1 learned from it" in empty.skip_message
        shown = CliRunner().invoke(main, ["offsets", "show", spec.name, "--bootstrap", second.bootstrap])
        assert shown.exit_code == 0 and f"has no topic {spec.events_topic}" in shown.output, shown.output
        scraped = generate_latest(exporter_registry(registry, [spec], settings)).decode()
        assert f'streamfit_offset_gap{{stream="{spec.name}"}} 1.0' in scraped  # an alert can fire
        produce_synthetic(settings, spec, 1000, start=400)  # more than v1 learned: offsets alone look fine

        tick = kafka_sensor_tick(defs, spec, instance, kafka, registry)
        assert isinstance(tick, dg.SkipReason)
        assert "OFFSET GAP" in tick.skip_message and "topic id" in tick.skip_message
        assert f"streamfit offsets reset {spec.name}" in tick.skip_message
        shown = CliRunner().invoke(main, ["offsets", "show", spec.name, "--bootstrap", second.bootstrap])
        assert shown.exit_code == 0 and "OFFSET GAP" in shown.output and "lag 0" not in shown.output

        reset = CliRunner().invoke(
            main, ["offsets", "reset", spec.name, "--to", "earliest", "--bootstrap", second.bootstrap]
        )
        assert reset.exit_code == 0, reset.output
        ranges = _planned(kafka_sensor_tick(defs, spec, instance, kafka, registry))
        assert {p: s for p, (s, _) in ranges.items()} == {p: 0 for p in ranges}  # the new topic from its start
        assert run_batch(defs, spec, ranges, instance).success
        v2 = registry.versions(spec.name)[-1]
        assert v2.meta["offset_reset_applied"] and v2.meta["offsets"]["identity"] != v1.meta["offsets"]["identity"]
        assert v2.learned == high_waters(settings, spec.events_topic)  # every row of the new topic learned


@pytest.mark.timeout(180)
def test_a_deleted_and_recreated_topic_is_an_offset_gap(
    kafka_settings, kafka_bootstrap, spec, registry, instance, specs_dir, streamfit_home
):
    kafka = KafkaResource(bootstrap=kafka_bootstrap)
    produce_synthetic(kafka_settings, spec, 300)
    defs = _learn_everything(kafka_settings, spec, registry, instance, kafka)
    _delete_events_topic(kafka_settings, spec)
    produce_synthetic(kafka_settings, spec, 600, start=300)

    tick = kafka_sensor_tick(defs, spec, instance, kafka, registry)
    assert isinstance(tick, dg.SkipReason) and "OFFSET GAP" in tick.skip_message, tick


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "spec", [synthetic_spec(batch={"rows": 200, "max_rows": 200, "max_wait_s": 3600, "sensor_interval_s": 5})]
)
def test_a_recreated_topic_s_malformed_messages_are_dead_lettered_though_old_runs_had_their_offsets(
    kafka_settings, kafka_bootstrap, spec, registry, instance, specs_dir, streamfit_home
):
    """A batch planned with the ranges of a run that learned them is learned again without sending
    its dead letters twice (a registry restored from a backup), but only when that run's head is
    gone: here the head is still there and the topic was deleted, recreated and reset to earliest,
    so the same offsets hold other messages, and their malformed ones must reach the DLQ."""
    defs = defs_for(spec, kafka_bootstrap, registry)
    kafka = KafkaResource(bootstrap=kafka_bootstrap)

    def fill() -> None:
        _fill_with_four_malformed(kafka_settings, spec)

    def learn_next() -> dg.RunRequest:
        return _learn_next_planned(defs, spec, instance, kafka, registry)

    fill()
    before = [learn_next(), learn_next()]
    letters = [d for d in read_topic(kafka_settings, spec.dlq_topic) if d["component"] == "trainer"]
    assert len(letters) == 4
    _delete_events_topic(kafka_settings, spec)
    fill()
    reset = CliRunner().invoke(
        main, ["offsets", "reset", spec.name, "--to", "earliest", "--bootstrap", kafka_bootstrap]
    )
    assert reset.exit_code == 0, reset.output

    after = [learn_next(), learn_next()]

    assert [r.tags[RANGES_TAG] for r in after] == [r.tags[RANGES_TAG] for r in before]  # the same offsets
    assert all(RELEARNS_TAG not in r.tags for r in after)
    letters = [d for d in read_topic(kafka_settings, spec.dlq_topic) if d["component"] == "trainer"]
    assert len(letters) == 8, "the new topic's malformed messages were dead-lettered too"
    assert registry.head(spec.name).learned == high_waters(kafka_settings, spec.events_topic)


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "spec", [synthetic_spec(batch={"rows": 200, "max_rows": 200, "max_wait_s": 3600, "sensor_interval_s": 5})]
)
def test_a_stream_started_over_under_its_name_dead_letters_its_new_topic_s_malformed_messages(
    kafka_settings, kafka_bootstrap, spec, registry, instance, specs_dir, streamfit_home
):
    """Registry deleted and topic recreated, the Dagster instance and the DLQ kept: the old runs' heads
    are gone as after a restore, but their versions learned another incarnation of the topic (its
    topic id), so the new batches are not taken for lost ones and their dead letters are sent."""
    import shutil

    defs = defs_for(spec, kafka_bootstrap, registry)
    kafka = KafkaResource(bootstrap=kafka_bootstrap)

    def fill() -> None:
        _fill_with_four_malformed(kafka_settings, spec)

    def learn_next() -> dg.RunRequest:
        return _learn_next_planned(defs, spec, instance, kafka, registry)

    fill()
    before = [learn_next(), learn_next()]
    _delete_events_topic(kafka_settings, spec)
    shutil.rmtree(registry.root)  # started over: no registry, the same stream name
    fill()

    after = [learn_next(), learn_next()]

    assert [r.tags[RANGES_TAG] for r in after] == [r.tags[RANGES_TAG] for r in before]
    assert all(RELEARNS_TAG not in r.tags for r in after)
    letters = [d for d in read_topic(kafka_settings, spec.dlq_topic) if d["component"] == "trainer"]
    assert len(letters) == 8, "the new topic's malformed messages were dead-lettered too"
