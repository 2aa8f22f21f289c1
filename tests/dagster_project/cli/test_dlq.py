"""`streamfit dlq show` against the real broker: the dead letters a training run wrote, newest last."""

from __future__ import annotations

import orjson

from dagster_project.dev.producer import produce
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.spec import StreamSpec
from tests.helpers import high_waters, produce_synthetic, run_batch


def test_dlq_show_lists_the_newest_dead_letters_with_where_they_came_from_and_why(
    cli, spec: StreamSpec, kafka_settings: KafkaSettings, stream_defs, instance
) -> None:
    args = ("dlq", "show", spec.name, "--bootstrap", kafka_settings.bootstrap)
    assert "no dead letters" in cli(*args).output  # before anything was refused
    produce_synthetic(kafka_settings, spec, 50)
    bad = [(b"bad-%d" % i, b"{not json %d" % i) for i in range(3)]
    produce(kafka_settings, spec, [*bad, (b"unknown", orjson.dumps({"id": "u", "ts": 1.0, "features": {"zz": 1}}))])
    ends = high_waters(kafka_settings, spec.events_topic)
    assert run_batch(stream_defs, spec, {p: (0, e) for p, e in ends.items()}, instance).success

    shown = cli(*args, "--limit", 2)
    listed = cli(*args, "--json")

    assert shown.exit_code == 0, shown.output
    assert f"{spec.name}: 4 dead letter(s) in {spec.dlq_topic}; the newest 2:" in shown.output
    assert len(shown.output.splitlines()) == 3 and "trainer" in shown.output
    letters = orjson.loads(listed.output)["letters"]
    assert len(letters) == 4 and {letter["component"] for letter in letters} == {"trainer"}
    reasons = [letter["reason"] for letter in letters]
    assert sum("missing feature(s)" in r for r in reasons) == 1, reasons
    assert sum("JSON" in r for r in reasons) == 3, reasons
    assert all(letter["topic"] == spec.events_topic and letter["offset"] >= 0 for letter in letters)
