"""The Kafka sensor's early cut (`batch.early_cut`) on a real broker, registry and Dagster instance.

Two batches are learned through the sensor, then fewer than `batch.rows` rows wait and the label
join's live_metrics.jsonl (written here line by line, as the joiner writes it) says how the served
champion does on them.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import dagster as dg
import orjson
import pytest

from assets.remediation import ActionConfig, cut_fields
from dagster_project import names
from dagster_project.kafka.io import probe_partitions
from dagster_project.kafka.offsets import CUT_REASON_PREFIX, decode_ranges, encode_ranges
from dagster_project.labels import JoinState, LiveStore
from dagster_project.labels.store import live_metrics_path
from dagster_project.resources import KafkaResource
from monitors.actions import ACTION_KIND, epoch
from sensors.drift_sensor import cut_record
from tests.conftest import synthetic_spec
from tests.helpers import defs_for, high_waters, kafka_sensor_tick, produce_synthetic, run_batch

# The subject is when the early cut plans a batch, from the label join's live metrics, not how
# Streamfit talks to a broker (tests/sensors/test_kafka_sensor.py runs on both): once, in the Tansu session.
pytestmark = pytest.mark.one_broker

ROWS = 200  # batch.rows


def _spec(early_cut: bool | None, labels: dict | None = None):
    """A stream with a label join (flush every second); `early_cut` None leaves it to the default."""
    batch = {"rows": ROWS, "max_rows": 1000, "max_wait_s": 3600, "sensor_interval_s": 5}
    if early_cut is not None:
        batch["early_cut"] = early_cut
    return synthetic_spec(partitions=1, batch=batch, **({"labels": labels or {"flush_interval_s": 1}}))


def _learn_two_batches(spec, kafka_bootstrap, kafka_settings, registry, instance):
    """v1 and v2 learned through the sensor; then 150 rows (under batch.rows) wait."""
    defs = defs_for(spec, kafka_bootstrap, registry)
    kafka = KafkaResource(bootstrap=kafka_bootstrap)
    for batch in range(2):
        produce_synthetic(kafka_settings, spec, ROWS, start=batch * ROWS)
        result = kafka_sensor_tick(defs, spec, instance, kafka, registry)
        (request,) = result.run_requests
        assert run_batch(defs, spec, decode_ranges(request.tags[names.RANGES_TAG]), instance, tags=request.tags).success
    produce_synthetic(kafka_settings, spec, 150, start=2 * ROWS)
    return defs, kafka


def _checkpoints(registry, spec, version: str, errors: list[int], rows: int = 25) -> None:
    """live_metrics.jsonl lines: `version` joined `rows` rows per checkpoint with `errors[i]` misses."""
    _served(registry, spec, [{version: (rows, missed)} for missed in errors])


def _served(
    registry, spec, checkpoints: list[dict[str, tuple[int, int]]], start: float | None = None, step: float = 1.0
) -> None:
    """live_metrics.jsonl lines, one per checkpoint: each version's (joined rows, misses), `step` s apart
    from `start` (default: a second from now)."""
    path = live_metrics_path(registry.root, spec.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.time() + 1 if start is None else start
    with open(path, "ab") as fh:
        for i, served in enumerate(checkpoints):
            at = datetime.fromtimestamp(start + i * step, UTC).isoformat(timespec="milliseconds")
            line = {
                "seq": i + 1,
                "at": at,
                "stream": spec.name,
                "task": "classification",
                "versions": {v: {"rows": rows, "correct": rows - missed} for v, (rows, missed) in served.items()},
                "counters": {},
                "pending": {"predictions": 0, "labels": 0},
            }
            fh.write(orjson.dumps(line) + b"\n")


GATE = "promoted: candidate not worse than the champion on unseen rows"  # a gate promotion's reason (any text)


def _two_champions(spec, registry) -> tuple[str, str]:
    """v1 (the first version) then v2, promoted by the gate: the lineage the waiting rows are served in."""
    first, second = (v.name for v in registry.versions(spec.name)[:2])
    if registry.champion(spec.name) != second:
        registry.set_champion(spec.name, second, reason=GATE)
    return first, second


SETTLED_RISE = [14] * 6  # 150 rows at 0.56 error: well above a learned synthetic batch, and flat


@pytest.mark.parametrize("spec_of", ["off", "no label join", "a join too slow"])
def test_off_plans_exactly_as_before(spec_of, kafka_bootstrap, kafka_settings, registry, instance) -> None:
    """Off when the spec says so, when it has no labels: section, or when its join checkpoints fewer
    than four times a batch (flush_interval_s > max_wait_s / 4): nothing is refused, nothing is cut."""
    if spec_of == "off":
        spec = _spec(early_cut=False)
    elif spec_of == "no label join":
        spec = synthetic_spec(partitions=1, batch={"rows": ROWS, "max_rows": 1000, "max_wait_s": 3600})
    else:
        spec = _spec(early_cut=None, labels={"flush_interval_s": 1000})
    assert spec.batch.early_cut is False
    defs, kafka = _learn_two_batches(spec, kafka_bootstrap, kafka_settings, registry, instance)
    _checkpoints(registry, spec, registry.champion(spec.name), SETTLED_RISE)

    result = kafka_sensor_tick(defs, spec, instance, kafka, registry)

    assert isinstance(result, dg.SkipReason)
    assert result.skip_message.startswith(f"{spec.name}: waiting: lag 150 < batch.rows {ROWS}, oldest row ")
    assert result.skip_message.endswith("s < 3600s")


@pytest.mark.parametrize("early_cut", [True, None], ids=["on", "default with a label join"])
def test_a_settled_rise_cuts_the_waiting_batch_with_its_reason(
    early_cut, kafka_bootstrap, kafka_settings, registry, instance
) -> None:
    spec = _spec(early_cut=early_cut)
    assert spec.batch.early_cut is True
    defs, kafka = _learn_two_batches(spec, kafka_bootstrap, kafka_settings, registry, instance)
    learned = registry.head(spec.name).learned
    _checkpoints(registry, spec, registry.champion(spec.name), SETTLED_RISE)

    result = kafka_sensor_tick(defs, spec, instance, kafka, registry)

    assert isinstance(result, dg.SensorResult), result
    (request,) = result.run_requests
    ends = high_waters(kafka_settings, spec.events_topic)
    planned = {p: (learned[p], ends[p]) for p in ends}
    assert decode_ranges(request.tags[names.RANGES_TAG]) == planned  # everything waiting now: 150 rows
    assert sum(e - s for s, e in planned.values()) == 150
    assert request.tags[names.EARLY_CUT_TAG] == "first"
    reason = orjson.loads(result.cursor)["reason"]
    assert reason.startswith(CUT_REASON_PREFIX) and "flat, cut" in reason
    assert "the drift detector fires on the short batch" in reason
    assert request.tags[names.CUT_REASON_TAG] == reason.removeprefix(CUT_REASON_PREFIX)
    assert orjson.loads(result.cursor)["ranges"] == encode_ranges(planned)


def test_a_stationary_live_series_is_not_cut(kafka_bootstrap, kafka_settings, registry, instance) -> None:
    spec = _spec(early_cut=True)
    defs, kafka = _learn_two_batches(spec, kafka_bootstrap, kafka_settings, registry, instance)
    before = registry.head(spec.name).meta["metrics"]
    level = round((1 - before["accuracy"]) * 25)  # the batch before's error level, per 25 rows
    _checkpoints(registry, spec, registry.champion(spec.name), [level] * 6)

    result = kafka_sensor_tick(defs, spec, instance, kafka, registry)

    assert isinstance(result, dg.SkipReason)
    assert "lag 150 < batch.rows" in result.skip_message
    assert "no early cut: " in result.skip_message and "not above the batch before" in result.skip_message


def test_no_cut_when_the_drift_decision_would_not_retrain(kafka_bootstrap, kafka_settings, registry, instance) -> None:
    spec = _spec(early_cut=True)
    registry.record_decision(spec.name, {"kind": ACTION_KIND, "action": "retrain"})  # the cooldown runs
    defs, kafka = _learn_two_batches(spec, kafka_bootstrap, kafka_settings, registry, instance)
    _checkpoints(registry, spec, registry.champion(spec.name), SETTLED_RISE)

    result = kafka_sensor_tick(defs, spec, instance, kafka, registry)

    assert isinstance(result, dg.SkipReason)
    assert "flat, cut; no retrain would follow" in result.skip_message
    assert "suppressed by cooldown" in result.skip_message


def test_the_second_cut_is_armed_only_by_a_first_cut_retrain(
    kafka_bootstrap, kafka_settings, registry, instance
) -> None:
    spec = _spec(early_cut=True)
    defs, kafka = _learn_two_batches(spec, kafka_bootstrap, kafka_settings, registry, instance)
    champion, head = registry.champion(spec.name), registry.head(spec.name)
    first = {"kind": ACTION_KIND, "action": "retrain", "to_version": champion, "after_cut": True}
    first |= {"cut_version": head.name, "short": {"rows": 150, "errors": 15.0}}
    first |= {"serves_from": {str(p): o for p, o in head.learned.items()}}
    registry.record_decision(spec.name, first)
    _checkpoints(registry, spec, champion, [12] * 6)  # the retrained model errs at once, 0.48 vs 0.10

    result = kafka_sensor_tick(defs, spec, instance, kafka, registry)

    assert isinstance(result, dg.SensorResult), result
    (request,) = result.run_requests
    assert request.tags[names.EARLY_CUT_TAG] == "second"
    assert "after a cut's retrain" in request.tags[names.CUT_REASON_TAG]

    registry.record_decision(spec.name, first | {"serves_from": {"0": 0}})  # not the batch it serves first
    result = kafka_sensor_tick(defs, spec, instance, kafka, registry)
    assert isinstance(result, dg.SkipReason) and "a cut's retrain ran less than" in result.skip_message


@pytest.mark.parametrize("labels", [None, {"flush_interval_s": 1000}])
def test_early_cut_needs_a_label_join_that_checkpoints_four_times_a_batch(labels) -> None:
    extra = {} if labels is None else {"labels": labels}
    with pytest.raises(ValueError, match="batch.early_cut needs"):
        synthetic_spec(batch={"rows": ROWS, "max_wait_s": 3600, "early_cut": True}, **extra)


def test_the_retrain_after_a_cut_batch_is_recorded_as_the_cut_s(
    kafka_bootstrap, kafka_settings, registry, instance
) -> None:
    spec = _spec(early_cut=True)
    defs, kafka = _learn_two_batches(spec, kafka_bootstrap, kafka_settings, registry, instance)
    assert cut_record(instance, registry, spec) == {}, "the batch just learned was not cut"
    _checkpoints(registry, spec, registry.champion(spec.name), SETTLED_RISE)
    (request,) = kafka_sensor_tick(defs, spec, instance, kafka, registry).run_requests
    assert run_batch(defs, spec, decode_ranges(request.tags[names.RANGES_TAG]), instance, tags=request.tags).success
    cut = registry.head(spec.name)

    record = cut_record(instance, registry, spec)

    assert record["after_cut"] is True and record["cut_version"] == cut.name
    served = (cut.meta.get("served") or {}).get("metrics") or cut.meta["metrics"]  # the champion's, on the batch
    assert orjson.loads(record["short"]) == {"rows": 150, "errors": round((1 - served["accuracy"]) * 150)}
    assert orjson.loads(record["serves_from"]) == {str(p): o for p, o in cut.learned.items()}
    registry.record_decision(spec.name, {"kind": ACTION_KIND, "action": "retrain", "after_cut": True})
    assert cut_record(instance, registry, spec) == {}, "the cut batch's retrain has been recorded already"


def test_a_second_cut_s_retrain_learns_from_its_batch_and_is_marked_second(
    kafka_bootstrap, kafka_settings, registry, instance
) -> None:
    spec = _spec(early_cut=True)
    defs, kafka = _learn_two_batches(spec, kafka_bootstrap, kafka_settings, registry, instance)
    ranges = {0: (2 * ROWS, 2 * ROWS + 150)}
    assert run_batch(defs, spec, ranges, instance, tags={names.EARLY_CUT_TAG: "second"}).success

    record = cut_record(instance, registry, spec)

    assert record == {"second_cut": True, "window_from_version": registry.head(spec.name).name}
    fields = cut_fields(ActionConfig(from_version="v3", reasons=["drift"], **record))
    assert fields == {"second_cut": True}, "it anchors the cooldown: no after_cut"
    first = ActionConfig(from_version="v3", reasons=["drift"], after_cut=True, cut_version="v3")
    first = first.model_copy(update={"short": '{"rows": 150, "errors": 60.0}', "serves_from": '{"0": 550}'})
    assert cut_fields(first) == {
        "after_cut": True,
        "cut_version": "v3",
        "short": {"rows": 150, "errors": 60.0},
        "serves_from": {"0": 550},
    }


# Two consecutive champions served the waiting rows; a hot swap inside the third checkpoint. Neither
# alone has half a batch (100 rows) of joined rows (v1 65, v2 85); together 150, at 0.56 error.
ACROSS_A_PROMOTION = [
    {"v1": (25, 14)},
    {"v1": (25, 14)},
    {"v1": (15, 8), "v2": (10, 6)},
    {"v2": (25, 14)},
    {"v2": (25, 14)},
    {"v2": (25, 14)},
]


def _as(served: list[dict[str, tuple[int, int]]], names_: dict[str, str]) -> list[dict[str, tuple[int, int]]]:
    return [{names_[v]: t for v, t in checkpoint.items()} for checkpoint in served]


def test_the_waiting_rows_of_consecutive_gate_promoted_champions_are_one_evidence(
    kafka_bootstrap, kafka_settings, registry, instance
) -> None:
    spec = _spec(early_cut=True)
    defs, kafka = _learn_two_batches(spec, kafka_bootstrap, kafka_settings, registry, instance)
    first, second = _two_champions(spec, registry)
    _served(registry, spec, _as(ACROSS_A_PROMOTION, {"v1": first, "v2": second}))

    result = kafka_sensor_tick(defs, spec, instance, kafka, registry)

    assert isinstance(result, dg.SensorResult), result
    (request,) = result.run_requests
    assert request.tags[names.EARLY_CUT_TAG] == "first"
    reason = request.tags[names.CUT_REASON_TAG]
    assert reason.startswith("waiting 150 rows in 6 checkpoints") and "flat, cut" in reason


@pytest.mark.parametrize("action", ["retrain", "rollback"])
def test_rows_served_before_a_drift_action_are_not_counted(
    action, kafka_bootstrap, kafka_settings, registry, instance
) -> None:
    spec = _spec(early_cut=True)
    defs, kafka = _learn_two_batches(spec, kafka_bootstrap, kafka_settings, registry, instance)
    first, second = _two_champions(spec, registry)
    old, new = (first, second) if action == "retrain" else (second, first)
    if action == "retrain":  # v1 served; the retrain's version (v2 here) is promoted by its gate after the record
        registry.set_champion(spec.name, first, reason=GATE)
    time.sleep(1.0)  # the old champion's risen rows: after the oldest waiting row, before the action
    _served(registry, spec, [{old: (25, 14)}] * 3, start=time.time() - 0.5, step=0.1)
    time.sleep(0.1)
    if action == "rollback":
        registry.set_champion(spec.name, new, reason="rollback: the champion regressed")
    registry.record_decision(spec.name, {"kind": ACTION_KIND, "action": action, "from_version": old, "to_version": new})
    if action == "retrain":
        registry.set_champion(spec.name, new, reason=GATE)
    # after it: the new lineage's 75 rows, and 25 of the old champion's rows joined late
    _served(registry, spec, [{new: (25, 14), old: (25, 14)}, {new: (25, 14)}, {new: (25, 14)}])

    result = kafka_sensor_tick(defs, spec, instance, kafka, registry)

    assert isinstance(result, dg.SkipReason), result
    assert "no early cut: waiting 75 rows in 3 checkpoints" in result.skip_message
    assert "fewer than 100 waiting rows" in result.skip_message


def test_no_cut_while_the_retrained_version_has_not_taken_over(
    kafka_bootstrap, kafka_settings, registry, instance
) -> None:
    spec = _spec(early_cut=True)
    defs, kafka = _learn_two_batches(spec, kafka_bootstrap, kafka_settings, registry, instance)
    first, second = _two_champions(spec, registry)
    # A retrain's action recorded after v2's promotion: a second later, as the records' times have
    # millisecond resolution and a promotion in the same millisecond would count as after the action.
    promoted = epoch(registry.champion_history(spec.name)[-1]["at"])
    at = datetime.fromtimestamp(promoted + 1, UTC).isoformat(timespec="milliseconds")
    registry.record_decision(spec.name, {"kind": ACTION_KIND, "action": "retrain", "to_version": "v9", "at": at})
    _checkpoints(registry, spec, second, SETTLED_RISE)

    result = kafka_sensor_tick(defs, spec, instance, kafka, registry)

    assert isinstance(result, dg.SkipReason), result
    assert f"champion {second} does not continue the lineage the last drift action began" in result.skip_message


def test_a_second_cut_still_works_when_the_gate_promoted_after_the_cut_retrain(
    kafka_bootstrap, kafka_settings, registry, instance
) -> None:
    spec = _spec(early_cut=True)
    defs, kafka = _learn_two_batches(spec, kafka_bootstrap, kafka_settings, registry, instance)
    first, second = (v.name for v in registry.versions(spec.name)[:2])
    registry.set_champion(spec.name, first, reason=GATE)  # the first cut's retrained version serves
    head = registry.head(spec.name)
    retrain = {"kind": ACTION_KIND, "action": "retrain", "to_version": first, "after_cut": True}
    retrain |= {"cut_version": head.name, "short": {"rows": 150, "errors": 15.0}}
    retrain |= {"serves_from": {str(p): o for p, o in head.learned.items()}}
    registry.record_decision(spec.name, retrain)
    registry.set_champion(spec.name, second, reason=GATE)  # the gate promotes again in between
    # the retrained model and its successor err at once (0.48 vs the short batch's 0.10), 75 rows each
    _served(registry, spec, [{first: (25, 12)}] * 3 + [{second: (25, 12)}] * 3)

    result = kafka_sensor_tick(defs, spec, instance, kafka, registry)

    assert isinstance(result, dg.SensorResult), result
    (request,) = result.run_requests
    assert request.tags[names.EARLY_CUT_TAG] == "second"
    assert "after a cut's retrain: waiting 150 rows" in request.tags[names.CUT_REASON_TAG]


def _joined(state: JoinState, version: str, rows: int, missed: int, event_ms: float, prefix: str) -> None:
    """`rows` predictions of `version` whose events were at `event_ms` (+1 ms each), joined with labels
    now, `missed` of them wrong: what the joiner does when their labels arrive."""
    now_ms = time.time() * 1000
    for i in range(rows):
        state.add_prediction(f"{prefix}{i}", version, 1, ts=now_ms, event_ms=event_ms + i)
        state.add_label(f"{prefix}{i}", 0 if i < missed else 1, ts=now_ms)


def _checkpoint(registry, spec, state: JoinState, at: float) -> None:
    """One live_metrics.jsonl line as the joiner writes it (`JoinState.record`)."""
    LiveStore(registry.root, spec.name).append(state.record(state.seq + 1, spec.name, at))
    state.checkpointed(state.seq + 1, at)


def test_rows_served_before_the_oldest_waiting_row_are_not_counted_though_joined_after_it(
    kafka_bootstrap, kafka_settings, registry, instance
) -> None:
    spec = _spec(early_cut=True)
    defs, kafka = _learn_two_batches(spec, kafka_bootstrap, kafka_settings, registry, instance)
    champion, learned = registry.champion(spec.name), registry.head(spec.name).learned
    (probe,) = probe_partitions(kafka_settings, spec.events_topic, learned)
    oldest_ms = probe.oldest_waiting_ts_ms  # the first of the 150 waiting rows
    assert oldest_ms is not None and probe.lag == 150
    state = JoinState("classification", window_s=600, max_pending=10_000)
    # Checkpoints after the oldest waiting row's time, with rows served before it (the last learned rows,
    # their labels late), all risen; then the waiting rows' own checkpoints, 75 rows at the same error.
    at = max(time.time(), oldest_ms / 1000) + 0.5
    for i in range(3):
        _joined(state, champion, 25, 14, oldest_ms - 3000 + i * 500, prefix=f"learned{i}-")
        _checkpoint(registry, spec, state, at + i * 0.1)
    for i in range(3):
        _joined(state, champion, 25, 14, oldest_ms + 500 + i * 500, prefix=f"waiting{i}-")
        _checkpoint(registry, spec, state, at + 0.3 + i * 0.1)

    result = kafka_sensor_tick(defs, spec, instance, kafka, registry)

    assert isinstance(result, dg.SkipReason), result  # the 150 joined rows would cut: only 75 are waiting
    assert "no early cut: waiting 75 rows in 3 checkpoints" in result.skip_message
    assert "fewer than 100 waiting rows" in result.skip_message
