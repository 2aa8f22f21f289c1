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


def test_a_value_that_overflows_the_float32_model_does_not_halt_the_stream(
    kafka_settings, spec, registry, stream_defs, instance
) -> None:
    """1e37 is inside the event contract, but on features whose spread is 1e-3 the served model's
    float32 scaler turns it into inf and its output into NaN: the batch's parity failed at every
    retry and halted the stream, with no dead letter and no row named. The row is learned (clipped);
    the scorers refuse it; parity is judged on the others, and the run names the row."""
    import numpy as np

    rng = np.random.default_rng(3)

    def events(prefix: str, n: int) -> list[tuple[bytes, bytes]]:
        X = rng.normal(0.0, 1e-3, size=(n, 5))
        return [
            (
                f"{prefix}{i}".encode(),
                make_event(f"{prefix}{i}", {f"x{j}": float(X[i, j]) for j in range(5)}, int(X[i, 0] > 0), 0.0),
            )
            for i in range(n)
        ]

    produce(kafka_settings, spec, events("a", 300))
    first = high_waters(kafka_settings, spec.events_topic)
    assert run_batch(stream_defs, spec, {p: (0, e) for p, e in first.items()}, instance).success
    hostile = {f"x{j}": (1e37 if j % 2 == 0 else -1e37) for j in range(5)}
    produce(kafka_settings, spec, events("b", 100) + [(b"far", make_event("far", hostile, 1, 0.0))] + events("c", 100))
    ends = high_waters(kafka_settings, spec.events_topic)

    result = run_batch(stream_defs, spec, {p: (first[p], e) for p, e in ends.items()}, instance)

    assert result.success
    head = registry.head(spec.name)
    assert head.name == "v2" and head.learned == ends and head.meta["rows"]["trained"] == 201
    assert head.meta["parity"]["unscorable_rows"] == 1 and head.meta["parity"]["passed"]
    warnings = [e.message for e in instance.all_logs(result.run_id) if "overflow its float32" in (e.message or "")]
    assert len(warnings) == 1 and "1 row(s) of this batch get no finite output" in warnings[0]
