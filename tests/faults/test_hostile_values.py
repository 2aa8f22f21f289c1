"""Hostile values: a message that would poison the model is dead-lettered with its reason; the batch trains."""

from __future__ import annotations

import orjson

from dagster_project.dev.producer import produce
from dagster_project.ingest.events import make_event
from tests.helpers import high_waters, produce_synthetic, read_topic, run_batch

HOSTILE = {
    "max-float": {"x0": 1e308},
    "huge-negative": {"x1": -1e200},
    "beyond-float32": {"x2": 1e39},
    "just-over-the-limit": {"x3": 2e37},
}


def test_extreme_values_are_dead_lettered_and_the_rest_trains(kafka_settings, spec, registry, stream_defs, instance):
    """x0 = 1e308 once passed every check, overflowed the scaler, and halted the stream for good."""
    produce_synthetic(kafka_settings, spec, 200)
    base = {f"x{i}": 0.5 for i in range(5)}
    hostile = [(name.encode(), make_event(name, base | values, 1, 0.0)) for name, values in sorted(HOSTILE.items())]
    produce(kafka_settings, spec, hostile)
    produce_synthetic(kafka_settings, spec, 100, start=200)
    ends = high_waters(kafka_settings, spec.events_topic)

    assert run_batch(stream_defs, spec, {p: (0, e) for p, e in ends.items()}, instance).success

    (version,) = registry.versions(spec.name)
    assert version.meta["rows"]["trained"] == 300 and version.meta["rows"]["dlq"] == len(HOSTILE)
    assert version.learned == ends  # every offset handled, the hostile ones included
    letters = read_topic(kafka_settings, spec.dlq_topic)
    assert sorted(orjson.loads(d["value"])["id"] for d in letters) == sorted(HOSTILE)
    assert all("magnitude limit" in d["reason"] and d["component"] == "trainer" for d in letters)
