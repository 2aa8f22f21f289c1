"""Derived features through real training runs: across batches, crashes, DLQ and the checkpoint."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest

from dagster_project.features import FeatureState, dump_state, load_state
from dagster_project.registry.store import expected_offsets
from dagster_project.spec import StreamSpec
from tests.dagster_project.features.reference import pandas_reference
from tests.dagster_project.features.support import (
    AHEAD_EVERY,
    KEYLESS_EVERY,
    LATE_EVERY,
    learn_in_batches,
    learned_batches,
    produce_sensors,
    sensors_spec,
)
from tests.helpers import defs_for, high_waters, read_topic, run_batch

# The subject is the derived features' state across runs (dead letters, crashes, checkpoints), not how
# Streamfit talks to a broker (tests/dagster_project/kafka/ and tests/faults/ run on both): once, in the Tansu session.
pytestmark = pytest.mark.one_broker


def accepted_events(settings, spec: StreamSpec, upto: dict[int, int]) -> pd.DataFrame:
    """The events the feature state accepted up to `upto` (the head's learned offsets)."""
    dead = {(d["partition"], d["offset"]) for d in dead_letters(settings, spec)}
    rows = [
        {"partition": r["_partition"], "offset": r["_offset"], "ts": r["ts"], "device": r["device"], **r["features"]}
        for r in read_topic(settings, spec.events_topic, skip_unparsable=True)
        if (r["_partition"], r["_offset"]) not in dead and r["_offset"] < upto[r["_partition"]]
    ]
    return pd.DataFrame(rows)


def dead_letters(settings, spec: StreamSpec) -> list[dict]:
    return [
        {"partition": r["partition"], "offset": r["offset"], "reason": r["reason"]}
        for r in read_topic(settings, spec.dlq_topic)
    ]


def assert_learned_values_equal_pandas(settings, registry, spec: StreamSpec, upto: dict[int, int]) -> np.ndarray:
    """Each version's learned rows carry the derived values pandas gives over every accepted event, its
    checkpoint is the state after them, and each accepted event up to `upto` was learned exactly once.
    Returns pandas' values (rows in `accepted_events` order)."""
    events = accepted_events(settings, spec, upto)
    expected = pandas_reference(spec, events)
    where = {(p, o): i for i, (p, o) in enumerate(zip(events["partition"], events["offset"], strict=True))}
    width = len(spec.feature_names)
    seen = 0
    for name, batch in learned_batches(settings, registry, spec):
        rows = [where[(int(p), int(o))] for p, o in zip(batch.partitions, batch.offsets, strict=True)]
        assert np.abs(batch.X[:, width:] - expected[rows]).max() < 1e-9
        seen += batch.rows
        # the checkpoint is exactly the state after the offsets it learned
        assert registry.load_feature_state(spec.name, name) == batch.feature_state
    assert seen == len(events)  # every accepted event up to the head's offsets was learned by exactly one version
    return expected


@pytest.fixture
def sensors(kafka_settings, kafka_bootstrap, registry):
    spec = sensors_spec()
    produce_sensors(kafka_settings, spec)
    return spec, defs_for(spec, kafka_bootstrap, registry)


def test_features_across_batches_equal_pandas_over_the_whole_stream(sensors, kafka_settings, registry, instance):
    spec, defs = sensors
    learn_in_batches(defs, spec, kafka_settings, registry, instance)
    versions = registry.versions(spec.name)
    assert len(versions) == 3
    expected = assert_learned_values_equal_pandas(kafka_settings, registry, spec, versions[-1].learned)
    head = versions[-1]
    assert head.meta["feature_state"]["keys"] == 12
    assert expected[:, 3].max() > 50  # windows of 60 s over ~1 reading per device-second are well filled
    # The stream spans 62 s and every batch began within 60 s of its first event: drift checks leave
    # the derived profiles out (features.warmup; the other side in test_warmup.py)
    filling = [registry.profile(spec.name, v.name).get("filling") for v in versions]
    assert filling == [[d.name for d in spec.derived]] * 3, filling


def test_keyless_and_late_events_go_to_the_dlq_with_their_reason(sensors, kafka_settings, registry, instance):
    spec, defs = sensors
    learn_in_batches(defs, spec, kafka_settings, registry, instance)
    letters = dead_letters(kafka_settings, spec)
    learned = registry.head(spec.name).learned
    expected = {"no key": 0, "late event": 0}
    for r in read_topic(kafka_settings, spec.events_topic):
        i = int(r["id"].rsplit("-", 1)[1])
        if r["_offset"] < learned[r["_partition"]]:  # the last tail is dead-lettered by the batch learning it
            if i % KEYLESS_EVERY == 50:
                expected["no key"] += 1
            elif i % LATE_EVERY == 60:
                expected["late event"] += 1
    reasons = pd.Series([d["reason"].split(":")[0] for d in letters]).value_counts().to_dict()
    assert reasons == expected and min(expected.values()) > 5
    late = next(d["reason"] for d in letters if d["reason"].startswith("late event"))
    assert "more than event_time.lateness 5 s" in late
    dlq = sum(v.meta["rows"]["dlq"] for v in registry.versions(spec.name))
    assert dlq == len(letters)  # each counted once, by the version that learned its offset


def test_an_event_from_a_clock_far_ahead_is_refused_and_the_partition_keeps_learning(
    kafka_settings, kafka_bootstrap, registry, instance
) -> None:
    """Accepted, an event ten years ahead would have held its partition's watermark there and made
    every later event on it late. It is refused against its Kafka timestamp (event_time.max_ahead),
    and the events after it are learned with the values pandas gives over the accepted events."""
    spec = sensors_spec()
    produce_sensors(kafka_settings, spec, ahead=True)
    defs = defs_for(spec, kafka_bootstrap, registry)
    learn_in_batches(defs, spec, kafka_settings, registry, instance)
    learned = registry.head(spec.name).learned
    expected = {"no key": 0, "late event": 0, "event time": 0}
    for r in read_topic(kafka_settings, spec.events_topic):
        i = int(r["id"].rsplit("-", 1)[1])
        if r["_offset"] < learned[r["_partition"]]:
            if i % KEYLESS_EVERY == 50:
                expected["no key"] += 1
            elif i % LATE_EVERY == 60:
                expected["late event"] += 1
            elif i % AHEAD_EVERY == 70:
                expected["event time"] += 1
    letters = dead_letters(kafka_settings, spec)
    reasons = pd.Series([d["reason"].split(" ")[0] + " " + d["reason"].split(" ")[1] for d in letters])
    counts = {k.rstrip(":"): v for k, v in reasons.value_counts().to_dict().items()}
    assert counts == expected and min(expected.values()) > 5, counts
    ahead = next(d["reason"] for d in letters if d["reason"].startswith("event time"))
    assert "ahead of its Kafka timestamp" in ahead and "more than event_time.max_ahead 300 s" in ahead

    assert_learned_values_equal_pandas(kafka_settings, registry, spec, learned)


@pytest.mark.parametrize("fault", ["after_train", "after_register"])
def test_a_crashed_batch_retried_saves_the_same_feature_state(
    fault, sensors, kafka_settings, kafka_bootstrap, registry, instance, monkeypatch, tmp_path
):
    spec, defs = sensors
    ends = high_waters(kafka_settings, spec.events_topic)
    first = {p: (0, end // 2) for p, end in ends.items()}
    assert run_batch(defs, spec, first, instance).success
    second = {p: (registry.head(spec.name).learned[p], end) for p, end in ends.items()}
    monkeypatch.setenv("STREAMFIT_FAULT", fault)
    assert not run_batch(defs, spec, second, instance, raise_on_error=False).success
    assert len(registry.versions(spec.name)) == (1 if fault == "after_train" else 2)
    monkeypatch.delenv("STREAMFIT_FAULT")
    assert run_batch(defs, spec, second, instance).success
    versions = registry.versions(spec.name)
    assert [v.name for v in versions] == ["v1", "v2"]

    # One uninterrupted pass over the same offsets gives the same bytes: nothing lost, nothing twice.
    reference = FeatureState(spec)
    learned = versions[-1].learned
    for r in read_topic(kafka_settings, spec.events_topic):
        if r["_offset"] < learned[r["_partition"]]:
            try:
                reference.observe(r["_partition"], r, [r["features"]["temp"]])
            except ValueError:
                pass
    assert registry.load_feature_state(spec.name, "v2") == dump_state(reference)
    assert versions[-1].meta["rows_learned_total"] + sum(v.meta["rows"]["dlq"] for v in versions) == sum(
        learned.values()
    )
    state = load_state(spec, registry.load_feature_state(spec.name, "v2"))
    assert orjson.loads(dump_state(state)) == orjson.loads(registry.load_feature_state(spec.name, "v2"))


def test_the_key_cap_bounds_the_saved_state_and_is_counted(kafka_settings, kafka_bootstrap, registry, instance):
    spec = sensors_spec(feature_state={"max_keys": 4})  # 12 devices, about 6 per partition
    produce_sensors(kafka_settings, spec, rows=400)
    defs = defs_for(spec, kafka_bootstrap, registry)
    result = run_batch(
        defs, spec, {p: (0, end) for p, end in high_waters(kafka_settings, spec.events_topic).items()}, instance
    )
    assert result.success
    version = registry.head(spec.name)
    counters = version.meta["feature_state"]
    assert counters["evicted_keys"] > 0 and counters["keys"] <= 4 * spec.partitions
    saved = orjson.loads(registry.load_feature_state(spec.name, version.name))
    assert all(len(part["tables"]["device"]) <= 4 for part in saved["partitions"].values())
    metadata = result.asset_materializations_for_node(f"{spec.name}__micro_batch")[0].metadata
    assert metadata["feature_evicted_keys"].value == counters["evicted_keys"]


def reference_after(settings, spec: StreamSpec, learned: dict[int, int]) -> bytes:
    """The saved state of one uninterrupted pass over every event up to `learned`."""
    reference = FeatureState(spec)
    for r in read_topic(settings, spec.events_topic):
        if r["_offset"] < learned[r["_partition"]]:
            try:
                reference.observe(r["_partition"], r, [r["features"]["temp"]])
            except ValueError:
                pass
    return dump_state(reference)


def assert_matches_reference(batch, events: pd.DataFrame, expected: np.ndarray, width: int) -> None:
    where = {(p, o): i for i, (p, o) in enumerate(zip(events["partition"], events["offset"], strict=True))}
    rows = [where[(int(p), int(o))] for p, o in zip(batch.partitions, batch.offsets, strict=True)]
    assert len(rows) > 0
    assert np.abs(batch.X[:, width:] - expected[rows]).max() < 1e-9


def trained_batch(result, spec: StreamSpec):
    """The micro-batch a run handed to training (None when nothing trained)."""
    import dagster as dg

    assert result.success
    try:
        return result.output_for_node(f"{spec.name}__micro_batch")
    except dg.DagsterInvariantViolationError:  # quarantined: the asset yielded no output
        return None


def test_a_quarantined_batch_stays_in_the_features_and_replays_with_its_values(
    kafka_settings, kafka_bootstrap, registry, instance
):
    from dagster_project.quality.quarantine import QuarantineStore
    from dagster_project.quality.replay import replay_quarantined

    spec = sensors_spec(quality={"policy": "quarantine"})
    produce_sensors(kafka_settings, spec)
    defs = defs_for(spec, kafka_bootstrap, registry)
    # The same stream while a too-strict rule was deployed: its batch fails and is quarantined.
    strict = defs_for(
        spec.model_copy(update={"quality": spec.quality.model_copy(update={"mean_bounds": {"temp": (900.0, 999.0)}})}),
        kafka_bootstrap,
        registry,
    )
    ends = high_waters(kafka_settings, spec.events_topic)
    first = trained_batch(run_batch(defs, spec, {p: (0, e // 3) for p, e in ends.items()}, instance), spec)
    after_v1 = registry.head(spec.name).learned
    quarantined = run_batch(strict, spec, {p: (after_v1[p], 2 * e // 3) for p, e in ends.items()}, instance)
    assert trained_batch(quarantined, spec) is None
    (entry,) = QuarantineStore().list(spec.name)
    skip = registry.pending_offset_reset(spec.name)
    assert skip["reason"].startswith(f"quarantined {entry.id}") and "feature_state" in skip
    third = trained_batch(
        run_batch(defs, spec, {p: (skip["offsets"][str(p)], e) for p, e in ends.items()}, instance), spec
    )
    v1, v2 = registry.versions(spec.name)
    assert v2.meta["offset_reset_applied"]["reason"] == skip["reason"]
    assert "feature_state" not in v2.meta["offset_reset_applied"]  # features.json holds it, not meta.json

    events = accepted_events(kafka_settings, spec, v2.learned)
    expected = pandas_reference(spec, events)  # over every accepted event, the quarantined ones included
    width = len(spec.feature_names)
    stored = QuarantineStore().get(spec.name, entry.id).batch
    for batch in (first, stored, third):
        assert_matches_reference(batch, events, expected, width)
    assert registry.load_feature_state(spec.name, v2.name) == reference_after(kafka_settings, spec, v2.learned)

    v3 = replay_quarantined(registry, QuarantineStore(), spec, entry.id, by="ops", force=True)
    assert v3.learned == v2.learned
    assert v3.meta["rows_learned_total"] == v2.meta["rows_learned_total"] + int(stored.labelled.sum())
    # The replay learned the stored values and moved no feature state: nothing counted twice.
    assert registry.load_feature_state(spec.name, v3.name) == registry.load_feature_state(spec.name, v2.name)
    assert first.rows + stored.rows + third.rows == len(events)


def test_a_replay_before_the_next_batch_takes_the_state_after_the_quarantined_events(
    kafka_settings, kafka_bootstrap, registry, instance
):
    from dagster_project.quality.quarantine import QuarantineStore
    from dagster_project.quality.replay import replay_quarantined

    spec = sensors_spec(quality={"policy": "quarantine"})
    produce_sensors(kafka_settings, spec, rows=600)
    strict = spec.model_copy(
        update={"quality": spec.quality.model_copy(update={"mean_bounds": {"temp": (900.0, 999.0)}})}
    )
    ends = high_waters(kafka_settings, spec.events_topic)
    assert run_batch(
        defs_for(spec, kafka_bootstrap, registry), spec, {p: (0, e // 2) for p, e in ends.items()}, instance
    ).success
    start = registry.head(spec.name).learned
    assert run_batch(
        defs_for(strict, kafka_bootstrap, registry), spec, {p: (start[p], e) for p, e in ends.items()}, instance
    ).success
    (entry,) = QuarantineStore().list(spec.name)

    v2 = replay_quarantined(registry, QuarantineStore(), spec, entry.id, by="ops", force=True)

    assert registry.pending_offset_reset(spec.name) is None
    # The replay applied the skip, so its checkpoint is the state after the skipped events.
    assert registry.load_feature_state(spec.name, v2.name) == reference_after(kafka_settings, spec, v2.learned)


def test_a_first_batch_without_labels_keeps_its_feature_state(kafka_settings, kafka_bootstrap, registry, instance):
    from dagster_project.dev.datasets import sensor_events
    from dagster_project.dev.producer import produce
    from dagster_project.ingest.events import make_event

    spec = sensors_spec()
    unlabelled = 500

    def pairs():
        for i, e in enumerate(sensor_events(rows=1500, seed=9, devices=12)):
            label = None if i < unlabelled else e.label
            yield e.key.encode(), make_event(e.event_id, e.features, label, e.ts, **e.fields)

    assert produce(kafka_settings, spec, pairs()) == 1500
    defs = defs_for(spec, kafka_bootstrap, registry)
    ends = high_waters(kafka_settings, spec.events_topic)
    # The first third is unlabelled: nothing to train and no model yet, but the offsets advance.
    cuts = [{p: e * k // 6 for p, e in ends.items()} for k in (1, 3, 6)]
    assert trained_batch(run_batch(defs, spec, {p: (0, c) for p, c in cuts[0].items()}, instance), spec) is not None
    assert registry.versions(spec.name) == []
    pending = registry.pending_offset_reset(spec.name)
    assert "no model yet" in pending["reason"] and "feature_state" in pending
    trained = []
    for cut in cuts[1:]:
        _, start, _ = expected_offsets(registry, spec.name)  # the pending offsets, then the head's
        trained.append(trained_batch(run_batch(defs, spec, {p: (start[p], c) for p, c in cut.items()}, instance), spec))
    head = registry.head(spec.name)
    events = accepted_events(kafka_settings, spec, head.learned)
    expected = pandas_reference(spec, events)  # the unlabelled events are in every later window
    for batch in trained:
        assert_matches_reference(batch, events, expected, len(spec.feature_names))
    assert registry.load_feature_state(spec.name, head.name) == reference_after(kafka_settings, spec, head.learned)


def _halt_and_skip(kafka_settings, kafka_bootstrap, registry, instance, tmp_path):
    """A sensors stream whose second batch halts on a data-quality policy and is skipped by `ops`."""
    from click.testing import CliRunner

    from dagster_project.cli import main

    spec = sensors_spec()
    produce_sensors(kafka_settings, spec, rows=900)
    strict = spec.model_copy(update={"quality": spec.quality.model_copy(update={"mean_bounds": {"temp": (900, 999)}})})
    ends = high_waters(kafka_settings, spec.events_topic)
    assert run_batch(
        defs_for(spec, kafka_bootstrap, registry), spec, {p: (0, e // 3) for p, e in ends.items()}, instance
    ).success
    start = registry.head(spec.name).learned
    halted = {p: (start[p], 2 * e // 3) for p, e in ends.items()}
    assert not run_batch(
        defs_for(strict, kafka_bootstrap, registry), spec, halted, instance, raise_on_error=False
    ).success
    assert "feature_state" in registry.halt(spec.name)
    streams = tmp_path / "streams"
    streams.mkdir()
    (streams / f"{spec.name}.yaml").write_bytes(orjson.dumps(spec.model_dump(mode="json")))
    env = {"STREAMFIT_STREAMS": str(streams), "STREAMFIT_HOME": str(registry.root.parent), "USER": "ops"}
    skipped = CliRunner().invoke(main, ["batches", "skip", spec.name, "--reason", "glitch"], env=env)
    assert skipped.exit_code == 0, skipped.output
    return spec, ends, env


def test_a_skipped_halted_batch_stays_in_the_features(kafka_settings, kafka_bootstrap, registry, instance, tmp_path):
    """Policy halt: the operator skips the batch; its events stay in the state, as the scorer has them."""
    spec, ends, _ = _halt_and_skip(kafka_settings, kafka_bootstrap, registry, instance, tmp_path)
    _, resume, _ = expected_offsets(registry, spec.name)
    third = trained_batch(
        run_batch(
            defs_for(spec, kafka_bootstrap, registry), spec, {p: (resume[p], e) for p, e in ends.items()}, instance
        ),
        spec,
    )
    head = registry.head(spec.name)
    events = accepted_events(kafka_settings, spec, head.learned)  # the skipped events included
    assert_matches_reference(third, events, pandas_reference(spec, events), len(spec.feature_names))
    assert registry.load_feature_state(spec.name, head.name) == reference_after(kafka_settings, spec, head.learned)


def test_a_reset_past_a_skip_keeps_the_feature_state_it_carried(
    kafka_settings, kafka_bootstrap, registry, instance, tmp_path
):
    """A reset replacing a pending skip dropped the state the skip carried (the skipped events read),
    so the features lost those events. A start at or past the skip keeps it; one before it cannot."""
    from click.testing import CliRunner

    from dagster_project.cli import main
    from dagster_project.registry.store import carried_state

    spec, _, env = _halt_and_skip(kafka_settings, kafka_bootstrap, registry, instance, tmp_path)
    skip_state = carried_state(spec.name, registry.pending_offset_reset(spec.name))
    reset = ["offsets", "reset", spec.name, "--bootstrap", kafka_bootstrap, "--force", "--to"]

    latest = CliRunner().invoke(main, [*reset, "latest"], env=env)
    assert latest.exit_code == 0 and "and the feature state it carried" in latest.output, latest.output
    assert carried_state(spec.name, registry.pending_offset_reset(spec.name)) == skip_state is not None
    damaged = registry.pending_offset_reset(spec.name)
    registry._store_offset_reset(spec.name, {**damaged, "feature_state": damaged["feature_state"] + " "})
    again = CliRunner().invoke(main, [*reset, "latest"], env=env)  # the way out the checksum error names
    assert again.exit_code == 0 and "WARNING: the feature state the pending reset carried is damaged" in again.output
    assert carried_state(spec.name, registry.pending_offset_reset(spec.name)) is None
    earliest = CliRunner().invoke(main, [*reset, "earliest"], env=env)
    assert earliest.exit_code == 0, earliest.output
    assert carried_state(spec.name, registry.pending_offset_reset(spec.name)) is None  # those events come again


def test_an_event_whose_key_is_a_document_is_dead_lettered_and_stays_out_of_the_checkpoint(
    kafka_settings, kafka_bootstrap, registry, instance
) -> None:
    """40 devices named by 800 KB strings were all accepted: v1's features.json was 32 MB beside a 1 KB
    model, copied into every version and every scorer. A key is capped as an event id is."""
    from dagster_project.dev.datasets import sensor_events
    from dagster_project.dev.producer import produce
    from dagster_project.ingest.events import make_event

    spec = sensors_spec(promotion={"tail_rows": 0})
    events = list(sensor_events(rows=200, seed=9, devices=6))
    huge = [make_event(f"big{i}", {"temp": 20.0}, 0, events[-1].ts, device=f"{i}" + "K" * 200_000) for i in range(3)]
    pairs = [(e.key.encode(), make_event(e.event_id, e.features, e.label, e.ts, **e.fields)) for e in events]
    assert produce(kafka_settings, spec, pairs + [(b"big", h) for h in huge]) == 203
    ends = high_waters(kafka_settings, spec.events_topic)
    defs = defs_for(spec, kafka_bootstrap, registry)
    assert run_batch(defs, spec, {p: (0, end) for p, end in ends.items()}, instance).success
    reasons = [d["reason"] for d in dead_letters(kafka_settings, spec)]
    too_long = [r for r in reasons if r.startswith("key 'device' is 200,001 characters long")]
    assert len(too_long) == 3, reasons
    assert "over the 1,024 a key may have" in too_long[0] and len(too_long[0]) < 400
    head = registry.head(spec.name)
    assert head.meta["rows"]["dlq"] >= 3
    assert len(registry.load_feature_state(spec.name, head.name)) < 100_000


def test_a_batch_of_only_dead_letters_is_passed_over_and_the_features_go_on(
    kafka_settings, kafka_bootstrap, registry, instance
):
    """A batch whose every message is junk halted the stream. Passed over now, its skip carries the
    feature state, and the next batch's derived values are pandas' over every accepted event."""
    from dagster_project.dev.datasets import sensor_events
    from dagster_project.dev.producer import produce
    from dagster_project.ingest.events import make_event

    spec = sensors_spec(promotion={"tail_rows": 0})
    defs = defs_for(spec, kafka_bootstrap, registry)
    events = [
        (e.key.encode(), make_event(e.event_id, e.features, e.label, e.ts, **e.fields))
        for e in sensor_events(rows=900, seed=9, devices=12)
    ]
    # Not JSON: junk. (Valid events without a 'features' object say the producers' schema moved: a halt.)
    junk = [(b"junk-%d" % i, b"junk-%d \x00\xff" % i) for i in range(24)]
    cuts = []
    for part in (events[:600], junk, events[600:]):
        assert produce(kafka_settings, spec, iter(part)) == len(part)
        cuts.append(high_waters(kafka_settings, spec.events_topic))
        _, start, _ = expected_offsets(registry, spec.name)
        ranges = {p: (start.get(p, 0), e) for p, e in cuts[-1].items() if e > start.get(p, 0)}
        assert run_batch(defs, spec, ranges, instance).success
        if part is junk:
            skip = registry.pending_offset_reset(spec.name)
            assert skip["kind"] == "passed_over" and "feature_state" in skip and registry.halt(spec.name) is None

    v1, v2 = registry.versions(spec.name)
    applied = v2.meta["offset_reset_applied"]
    assert applied["dead_lettered"]["messages"] == 24
    for p, end in cuts[2].items():  # every offset learned once or passed over, in order
        passed = applied["dead_lettered"]["ranges"].get(str(p), [cuts[0][p], cuts[0][p]])
        assert [v1.meta["offsets"]["batch"][str(p)], passed, v2.meta["offsets"]["batch"][str(p)]] == [
            [0, cuts[0][p]],
            [cuts[0][p], cuts[1][p]],
            [cuts[1][p], end],
        ]
    assert_learned_values_equal_pandas(kafka_settings, registry, spec, v2.learned)
