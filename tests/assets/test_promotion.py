"""The champion gate inside training runs: better candidates are promoted, worse ones are not."""

from __future__ import annotations

import numpy as np

from dagster_project.kafka.io import probe_partitions
from dagster_project.learning.estimators import build_model, partial_fit
from dagster_project.onnx.export import export_onnx
from tests.helpers import produce_synthetic, run_batch


def _thirds(settings, spec):
    states = probe_partitions(settings, spec.events_topic, {})
    cuts = [{s.partition: s.high_water * k // 3 for s in states} for k in range(4)]
    return [{p: (cuts[k][p], cuts[k + 1][p]) for p in cuts[0]} for k in range(3)]


def test_a_better_candidate_is_promoted_on_the_next_batch(kafka_settings, spec, registry, stream_defs, instance):
    produce_synthetic(kafka_settings, spec, 1500)
    first, second, third = _thirds(kafka_settings, spec)
    for ranges in (first, second):
        assert run_batch(stream_defs, spec, ranges, instance).success
    assert registry.champion(spec.name) == "v1"  # v2 has not faced the champion yet

    result = run_batch(stream_defs, spec, third, instance)

    assert registry.champion(spec.name) == "v2"
    (decision,) = [d for d in registry.decisions(spec.name) if d["kind"] == "promotion_gate"]
    assert decision["candidate"] == "v2" and decision["champion"] == "v1" and decision["promote"]
    assert decision["candidate_value"] is not None and decision["champion_value"] is not None
    gate = result.asset_materializations_for_node(f"{spec.name}__champion")[0]
    assert gate.metadata["promoted"].value == 1


def test_a_worse_candidate_stays_a_candidate(kafka_settings, spec, registry, stream_defs, instance):
    produce_synthetic(kafka_settings, spec, 1000)
    first, second, _ = _thirds(kafka_settings, spec)
    assert run_batch(stream_defs, spec, first, instance).success
    v1 = registry.head(spec.name)
    # A saboteur's model: trained on inverted labels, registered as the head after v1's offsets.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 5))
    y = (X @ np.array([1.5, -2.0, 1.0, 0.0, 0.5]) <= 0).astype(int)
    bad = partial_fit(build_model(spec), X, y, np.array([0, 1]))
    meta = {**v1.meta, "metrics": {}}
    registry.register(spec.name, "v1", export_onnx(bad, 5), bad, meta)

    assert run_batch(stream_defs, spec, second, instance).success

    assert registry.champion(spec.name) == "v1"
    (decision,) = [d for d in registry.decisions(spec.name) if d["kind"] == "promotion_gate"]
    assert not decision["promote"] and decision["candidate"] == "v2"
    assert decision["champion_value"] - decision["candidate_value"] > 0.5
    assert "kept as candidate" in decision["reason"]
