"""A sensor stream with derived features on the real broker, trained batch by batch (shared by tests)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import yaml

from dagster_project.dev.datasets import sensor_events
from dagster_project.dev.producer import produce
from dagster_project.features.checkpoint import expected_state
from dagster_project.ingest.events import make_event
from dagster_project.ingest.micro_batch import MicroBatch, read_batch
from dagster_project.registry.store import expected_offsets
from dagster_project.spec import StreamSpec
from tests.helpers import defs_for, high_waters, run_batch

ROWS = 1500
KEYLESS_EVERY, LATE_EVERY, AHEAD_EVERY = 97, 89, 83
AHEAD_S = 10 * 365 * 86400.0  # a producer clock ten years ahead: far beyond event_time.max_ahead


def sensors_spec(**overrides) -> StreamSpec:
    raw = yaml.safe_load((Path(__file__).resolve().parents[3] / "streams" / "sensors.yaml").read_text())
    raw |= {
        "name": f"s{uuid.uuid4().hex[:10]}",
        "batch": {"rows": 200, "max_rows": 2000, "max_wait_s": 3600, "retry_delay_s": 0.1},
        "promotion": {"tail_rows": 40, "min_rows": 10},  # each batch leaves a tail the next one learns
    }
    return StreamSpec.model_validate(raw | overrides)


def produce_sensors(settings, spec: StreamSpec, rows: int = ROWS, ahead: bool = False) -> None:
    """The sensor stream keyed by device, with keyless events and events far too late mixed in
    (and, with `ahead`, events from a clock years ahead)."""

    def pairs():
        for i, e in enumerate(sensor_events(rows=rows, seed=9, devices=12)):
            fields, ts = dict(e.fields), e.ts
            if i % KEYLESS_EVERY == 50:
                fields = {}
            elif i % LATE_EVERY == 60:
                ts -= 30.0  # lateness is 5 s
            elif ahead and i % AHEAD_EVERY == 70:
                ts += AHEAD_S
            yield e.key.encode(), make_event(e.event_id, e.features, e.label, ts, **fields)

    assert produce(settings, spec, pairs()) == rows


def learn_in_batches(defs, spec, settings, registry, instance, pieces: int = 3) -> None:
    """`pieces` training runs, each from the head's learned offsets (after the previous tail)."""
    ends = high_waters(settings, spec.events_topic)
    for k in range(1, pieces + 1):
        head = registry.head(spec.name)
        start = head.learned if head else {p: 0 for p in ends}
        ranges = {p: (start[p], end * k // pieces) for p, end in ends.items()}
        assert run_batch(defs, spec, ranges, instance).success


def learned_batches(settings, registry, spec: StreamSpec) -> list[tuple[str, MicroBatch]]:
    """What each version learned, read again exactly as its run read it (from its parent's state)."""
    out = []
    applied = registry.applied_offset_resets(spec.name)  # a quarantine's skip carries the state after its events
    for version in registry.versions(spec.name):
        if version.meta.get("retrain") or version.meta.get("replay"):
            continue  # re-learned rows behind the head: their offsets were learned by an earlier version
        parent = registry.get(spec.name, version.parent) if version.parent else None
        ranges = {int(p): (s, version.learned[int(p)]) for p, (s, _) in version.meta["offsets"]["batch"].items()}
        state = expected_state(registry, spec, parent, applied.get(version.name))
        out.append((version.name, read_batch(settings, spec, ranges, False, state=state)))
    return out


def training_inputs(settings, registry, spec: StreamSpec) -> dict[tuple[int, int], np.ndarray]:
    """(partition, offset) -> the model input training gives that event, through the topic's end."""
    batches = [b for _, b in learned_batches(settings, registry, spec)]
    head, expected, reset = expected_offsets(registry, spec.name)
    rest = {p: (o, e) for p, e in high_waters(settings, spec.events_topic).items() if (o := expected.get(p, 0)) < e}
    if rest:  # past the head: what the next batch would learn, from the state it would start from
        batches.append(read_batch(settings, spec, rest, False, state=expected_state(registry, spec, head, reset)))
    return {
        (int(p), int(o)): batch.X[i]
        for batch in batches
        for i, (p, o) in enumerate(zip(batch.partitions, batch.offsets, strict=True))
    }


def learn_around_a_quarantine(settings, bootstrap: str, registry, instance, rows: int = 900, **overrides):
    """A derived-feature stream learned in thirds whose middle third fails the quality gate and is
    quarantined: returns the spec and the offsets the quarantine's skip moved each partition to."""
    spec = sensors_spec(quality={"policy": "quarantine"}, **overrides)
    strict = spec.model_copy(update={"quality": spec.quality.model_copy(update={"mean_bounds": {"temp": (900, 999)}})})
    produce_sensors(settings, spec, rows=rows)
    ends = high_waters(settings, spec.events_topic)
    defs = defs_for(spec, bootstrap, registry)
    assert run_batch(defs, spec, {p: (0, e // 3) for p, e in ends.items()}, instance).success
    start = registry.head(spec.name).learned
    quarantine = {p: (start[p], 2 * e // 3) for p, e in ends.items()}
    assert run_batch(defs_for(strict, bootstrap, registry), spec, quarantine, instance).success
    skip = {int(p): o for p, o in registry.pending_offset_reset(spec.name)["offsets"].items()}
    assert run_batch(defs, spec, {p: (skip[p], e) for p, e in ends.items()}, instance).success
    return spec, skip
