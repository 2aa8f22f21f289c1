"""What a batch's data-quality verdict does (quality/policy.py): train, split rows off to the DLQ,
halt the stream, or quarantine the batch, on a real broker and a real registry.

The same policies run inside the training job in tests/assets/test_quality_gate.py; here each
outcome's effects are checked directly: the DLQ records, the halt record, the stored batch and the
pending offsets.
"""

from __future__ import annotations

import uuid
from collections import Counter

import numpy as np
import orjson
import pytest

from dagster_project.ingest.events import MAX_ID_CHARS
from dagster_project.ingest.micro_batch import MicroBatch, read_batch
from dagster_project.kafka import clients
from dagster_project.kafka.io import ensure_topics, probe_partitions
from dagster_project.quality.policy import apply_quality_policy, most_common_text
from dagster_project.quality.quarantine import QuarantineStore
from dagster_project.spec import StreamSpec
from tests.conftest import synthetic_spec
from tests.helpers import hand_batch, produce_synthetic, read_topic


def _spec(**quality) -> StreamSpec:
    """One partition; x0 must lie in [-10, 10], so a row with x0 = 50 breaks a per-row rule."""
    return synthetic_spec(
        partitions=1,
        features=[{"name": "x0", "min": -10, "max": 10}] + [{"name": f"x{i}"} for i in range(1, 5)],
        quality=quality,
    )


def _with_bad_rows(batch: MicroBatch, rows: list[int]) -> MicroBatch:
    batch.X[rows, 0] = 50.0
    return batch


def _run_id() -> str:
    return uuid.uuid4().hex


def _dlq(settings, spec: StreamSpec) -> list[dict]:
    if not probe_partitions(settings, spec.dlq_topic, {}):
        return []
    return read_topic(settings, spec.dlq_topic)


def test_a_clean_batch_trains_whole(kafka_settings, registry) -> None:
    spec = _spec()
    batch = hand_batch(spec, 120)

    outcome = apply_quality_policy(kafka_settings, registry, spec, batch, _run_id())

    assert outcome.passed and outcome.batch is batch and outcome.severity == "ERROR"
    assert outcome.message.startswith("p0[0, 120): passed ") and "120 rows" in outcome.message
    assert outcome.metadata["action"] == "train" and outcome.metadata["unexpected_rows"] == 0
    assert registry.halt(spec.name) is None and registry.pending_offset_reset(spec.name) is None
    assert registry.decisions(spec.name) == []


def test_partial_sends_split_off_rows_to_the_dlq_and_trains_the_rest(kafka_settings, registry) -> None:
    spec = _spec(policy="halt", allow_partial=True)
    ensure_topics(kafka_settings, [spec.events_topic, spec.dlq_topic], 1)
    # Built by hand: the events topic holds none of its messages, as when retention passed them before
    # they were dead-lettered, so each letter is the parsed row (tests/assets/test_dead_letters_once.py:
    # the original message, which a batch read from Kafka has).
    batch = _with_bad_rows(hand_batch(spec, 100, start=40), [3, 17, 60])

    outcome = apply_quality_policy(kafka_settings, registry, spec, batch, _run_id())

    assert outcome.passed and outcome.metadata["action"] == "partial"
    assert outcome.metadata["split_off_rows"] == 3 and outcome.metadata["kept_rows"] == 97
    assert f"3 rows broke per-row rules and went to {spec.dlq_topic}; the rest trains" in outcome.message
    kept = outcome.batch
    assert kept.rows == 97 and kept.ranges == batch.ranges  # the kept rows still account for the whole range
    assert not ({43, 57, 100} & set(kept.offsets.tolist()))
    dead = sorted(_dlq(kafka_settings, spec), key=lambda d: d["offset"])
    assert [d["offset"] for d in dead] == [43, 57, 100]
    for letter in dead:
        assert letter["component"] == "trainer"
        assert letter["topic"] == spec.events_topic and letter["partition"] == 0
        assert letter["reason"].startswith("data quality:")
        assert "feature 'x0' infinite or outside [-10, 10]: 50.0" in letter["reason"]
        assert letter["value"]["id"] == letter["_key"].decode() == f"{spec.name}-0-{letter['offset']}"
        assert letter["value"]["features"]["x0"] == 50.0 and set(letter["value"]["features"]) == set(spec.feature_names)
    assert registry.halt(spec.name) is None and registry.pending_offset_reset(spec.name) is None


def test_split_off_rows_are_counted_among_the_kept_batch_s_dead_letters(kafka_settings, registry) -> None:
    """The version's counts read 420 read, 409 valid, 10 dlq while the DLQ held 11: the rows the quality
    step split off were counted nowhere."""
    spec = _spec(allow_partial=True)
    ensure_topics(kafka_settings, [spec.events_topic, spec.dlq_topic], 1)
    batch = _with_bad_rows(hand_batch(spec, 60), [2, 9])
    batch.dlq_reasons = Counter({"not valid JSON": 4})  # refused when parsed

    kept = apply_quality_policy(kafka_settings, registry, spec, batch, _run_id()).batch

    assert kept.rows == 58 and kept.dlq == 4 + 2 == 4 + len(_dlq(kafka_settings, spec))
    assert kept.dlq_reasons["data quality"] == 2  # counted by kind, as parse refusals are
    assert batch.dlq == 4  # the batch as read is left as it was


def test_split_off_rows_have_a_reason_without_a_repeated_prefix(kafka_settings, registry) -> None:
    spec = _spec(allow_partial=True)
    ensure_topics(kafka_settings, [spec.events_topic, spec.dlq_topic], 1)
    batch = _with_bad_rows(hand_batch(spec, 50), [5])

    apply_quality_policy(kafka_settings, registry, spec, batch, _run_id())

    (letter,) = _dlq(kafka_settings, spec)
    assert letter["reason"] == "data quality: feature 'x0' infinite or outside [-10, 10]: 50.0"


def test_halt_stops_the_stream_and_says_how_to_skip(kafka_settings, registry) -> None:
    spec = _spec(policy="halt")
    batch = _with_bad_rows(hand_batch(spec, 80, start=200), [0, 1])
    run_id = _run_id()

    outcome = apply_quality_policy(kafka_settings, registry, spec, batch, run_id)

    assert outcome.batch is None and not outcome.passed and outcome.severity == "ERROR"
    assert outcome.metadata["action"] == "halt" and outcome.metadata["unexpected_rows"] == 2
    assert outcome.message.startswith(f"HALTED {spec.name} at p0[200, 280): ")
    assert f"re-execute run {run_id[:8]}" in outcome.message
    assert f"`streamfit batches skip {spec.name} --reason ...`" in outcome.message
    halt = registry.halt(spec.name)
    assert halt["ranges"] == {"0": [200, 280]} and halt["run_id"] == run_id and "x0" in halt["summary"]
    (decision,) = registry.decisions(spec.name)
    assert decision["kind"] == "quality" and decision["action"] == "halt" and decision["ranges"] == "p0[200, 280)"
    assert registry.pending_offset_reset(spec.name) is None, "a halted stream does not move on"
    assert QuarantineStore().list(spec.name) == []
    assert _dlq(kafka_settings, spec) == [], "without allow_partial no row is split off"


def test_the_halted_batch_passing_on_a_rerun_lifts_the_halt(kafka_settings, registry) -> None:
    spec = _spec(policy="halt")
    bad = _with_bad_rows(hand_batch(spec, 80), [4])
    halted_by = _run_id()
    apply_quality_policy(kafka_settings, registry, spec, bad, halted_by)
    assert registry.halt(spec.name)

    other = hand_batch(spec, 80, start=80)  # a different range passing does not lift it
    assert apply_quality_policy(kafka_settings, registry, spec, other, _run_id()).passed
    assert registry.halt(spec.name)

    rerun = _run_id()
    fixed = hand_batch(spec, 80)  # the same range, now clean (e.g. the spec's bounds were fixed)
    outcome = apply_quality_policy(kafka_settings, registry, spec, fixed, rerun)

    assert outcome.passed and registry.halt(spec.name) is None
    cleared = registry.decisions(spec.name)[-1]
    assert cleared["kind"] == "halt_cleared" and cleared["resolution"] == "batch passed on re-run"
    assert cleared["run_id"] == rerun and cleared["halt"]["run_id"] == halted_by


def test_quarantine_stores_the_batch_and_moves_the_stream_on(kafka_settings, registry) -> None:
    spec = _spec(policy="quarantine")
    batch = _with_bad_rows(hand_batch(spec, 60, start=500), [10, 11, 12])
    batch.filling = ("count_1h",)  # derived windows still filling: its replay's version says so too
    run_id = _run_id()

    outcome = apply_quality_policy(kafka_settings, registry, spec, batch, run_id)

    assert outcome.batch is None and not outcome.passed and outcome.severity == "WARN"
    qid = outcome.metadata["quarantine_id"]
    assert outcome.message.startswith(f"QUARANTINED p0[500, 560) as {qid}: ")
    assert "the stream moves on (`streamfit quarantine show`)" in outcome.message
    stored = QuarantineStore().get(spec.name, qid)
    assert stored.meta["ranges"] == {"0": [500, 560]} and stored.meta["rows"] == 60
    assert stored.meta["run_id"] == run_id and stored.meta["replayed_by"] is None
    assert stored.meta["validation"]["unexpected_rows"] == 3 and not stored.meta["validation"]["passed"]
    np.testing.assert_array_equal(stored.batch.X, batch.X)
    np.testing.assert_array_equal(stored.batch.y, batch.y)
    assert stored.batch.ids == batch.ids and stored.batch.offsets.tolist() == list(range(500, 560))
    assert stored.batch.filling == ("count_1h",)
    reset = registry.pending_offset_reset(spec.name)
    assert reset["offsets"] == {"0": 560} and reset["reason"].startswith(f"quarantined {qid}: ")
    assert reset["by"] == f"data quality, run {run_id}"
    assert registry.halt(spec.name) is None
    (decision,) = registry.decisions(spec.name)
    assert decision["action"] == "quarantine" and decision["run_id"] == run_id


def test_a_failing_batch_read_from_kafka_reports_its_dead_lettered_messages(kafka_settings, registry) -> None:
    spec = _spec(policy="quarantine")
    produce_synthetic(kafka_settings, spec, 30)
    producer = clients.producer(kafka_settings)
    for i in range(2):
        row = {"id": f"far-{i}", "features": {"x0": 99.0, "x1": 0, "x2": 0, "x3": 0, "x4": 0}, "label": 1}
        producer.send(spec.events_topic, key=row["id"].encode(), value=orjson.dumps(row))
    producer.send(spec.events_topic, key=b"junk", value=b"{not json")
    producer.flush()
    producer.close()
    (state,) = probe_partitions(kafka_settings, spec.events_topic, {})
    batch = read_batch(kafka_settings, spec, {0: (0, state.high_water)})
    assert batch.rows == 32 and batch.dlq == 1

    outcome = apply_quality_policy(kafka_settings, registry, spec, batch, _run_id())

    assert outcome.metadata["action"] == "quarantine"
    assert "(1 messages dead-lettered: {'not valid JSON': 1})" in outcome.message
    assert registry.pending_offset_reset(spec.name)["offsets"] == {"0": 33}
    (parse_letter,) = _dlq(kafka_settings, spec)  # the parser's dead letter; the policy adds none
    assert parse_letter["component"] == "trainer" and parse_letter["offset"] == 32


def test_a_halt_counts_dead_letters_by_kind_not_by_each_event_s_values(kafka_settings, registry) -> None:
    """Counted by their text, 800 events each a few seconds ahead of their Kafka timestamp were 800
    reasons: the halt's summary (and the sensor's skip reason) ran to 121 KB."""
    spec = _spec(policy="halt")
    produce_synthetic(kafka_settings, spec, 30)
    producer = clients.producer(kafka_settings)
    for i in range(40):  # ids too long by different amounts: the refusal names each one's length
        row = {"id": "i" * (MAX_ID_CHARS + 1 + i), "features": {"x0": 0, "x1": 0, "x2": 0, "x3": 0, "x4": 0}}
        producer.send(spec.events_topic, value=orjson.dumps({**row, "label": 1}))
    far = {"x0": 99.0, "x1": 0, "x2": 0, "x3": 0, "x4": 0}  # breaks x0's range: the batch halts
    producer.send(spec.events_topic, value=orjson.dumps({"id": "far", "features": far, "label": 1}))
    producer.flush()
    producer.close()
    (state,) = probe_partitions(kafka_settings, spec.events_topic, {})
    batch = read_batch(kafka_settings, spec, {0: (0, state.high_water)})
    kind = "event 'id' is <n> characters long, over the <n> an id may have (it keys the event's prediction and label)"
    assert batch.dlq == 40 and batch.dlq_reasons == {kind: 40}

    outcome = apply_quality_policy(kafka_settings, registry, spec, batch, _run_id())

    assert f'(40 messages dead-lettered: {{"{kind}": 40}})' in outcome.message
    assert len(registry.halt(spec.name)["summary"]) < 1_000


def test_the_dead_letter_note_names_the_commonest_kinds_and_sums_the_rest() -> None:
    reasons = Counter({f"kind {chr(97 + i)}": 10 - i for i in range(8)})
    assert most_common_text(reasons) == (
        "{'kind a': 10, 'kind b': 9, 'kind c': 8, 'kind d': 7, 'kind e': 6} and 3 more kinds (12 messages)"
    )
    assert most_common_text(Counter({"not valid JSON": 2})) == "{'not valid JSON': 2}"


def _all_dead(spec: StreamSpec, start: int, end: int) -> MicroBatch:
    """A batch of [start, end) whose every message was dead-lettered (as read_batch returns it)."""
    batch = hand_batch(spec, 0, start=start)
    batch.ranges, batch.read = {0: (start, end)}, end - start
    batch.dlq_reasons.update({"not valid JSON": end - start})
    return batch


def test_a_batch_of_only_dead_letters_is_passed_over_with_the_reason(kafka_settings, registry) -> None:
    spec, run_id = _spec(policy="halt"), _run_id()

    outcome = apply_quality_policy(kafka_settings, registry, spec, _all_dead(spec, 200, 230), run_id)

    assert outcome.batch is None and outcome.passed and outcome.severity == "WARN"
    assert outcome.message.startswith("PASSED OVER p0[200, 230): every message (30: {'not valid JSON': 30})")
    assert registry.halt(spec.name) is None
    reset = registry.pending_offset_reset(spec.name)
    assert reset["offsets"] == {"0": 230} and reset["by"] == f"the trainer, run {run_id}"
    assert reset["reason"] == "every message of p0[200, 230) was dead-lettered (30): nothing to learn"
    (decision,) = registry.decisions(spec.name)
    assert decision["kind"] == "passed_over" and decision["messages"] == 30 and decision["run_id"] == run_id


def test_a_passed_over_batch_following_an_operator_reset_keeps_it_and_one_set_since_stays(
    kafka_settings, registry
) -> None:
    spec = _spec(policy="halt")
    registry.set_pending_offsets(spec.name, {0: 200}, reason="operator reset (--to latest)", by="alice")
    apply_quality_policy(kafka_settings, registry, spec, _all_dead(spec, 200, 230), _run_id())
    reset = registry.pending_offset_reset(spec.name)
    assert reset["offsets"] == {"0": 230} and reset["after"]["by"] == "alice"
    assert "it followed the reset 'operator reset (--to latest)' (by alice)" in reset["reason"]

    # A reset set while the next batch ran (it starts elsewhere) is the operator's later decision: kept.
    newer = registry.set_pending_offsets(spec.name, {0: 500}, reason="operator reset (--to latest)", by="bob")
    apply_quality_policy(kafka_settings, registry, spec, _all_dead(spec, 230, 240), _run_id())
    assert registry.pending_offset_reset(spec.name) == newer
    assert [d["ranges"] for d in registry.decisions(spec.name)] == ["p0[200, 230)", "p0[230, 240)"]


def _junk_batch(spec: StreamSpec, start: int, messages: int) -> MicroBatch:
    """A batch that read `messages` messages at [start, start + messages) and dead-lettered every one."""
    batch = hand_batch(spec, 0, start=start)
    batch.ranges = {0: (start, start + messages)}
    batch.dlq_reasons.update({"not valid JSON": messages})
    batch.read = messages
    return batch


def test_a_quarantine_after_a_passed_over_batch_keeps_it_recorded(kafka_settings, registry) -> None:
    """A batch of junk passed over, then the next batch (which followed its pending reset) quarantined:
    the quarantine's reset replaced the pass-over's and dropped it, so no version recorded the junk's
    offsets and `streamfit_rows{fate="dlq"}` went down by its 30 messages (a counter reset)."""
    from dagster_project.observability.exporter import passed_over_rows

    spec = _spec(policy="quarantine")
    assert apply_quality_policy(kafka_settings, registry, spec, _junk_batch(spec, 500, 30), _run_id()).passed
    assert passed_over_rows([registry.pending_offset_reset(spec.name)]) == {"read": 30, "dlq": 30}
    batch = _with_bad_rows(hand_batch(spec, 60, start=530), [10, 11, 12])

    outcome = apply_quality_policy(kafka_settings, registry, spec, batch, _run_id())

    assert outcome.metadata["action"] == "quarantine"
    reset = registry.pending_offset_reset(spec.name)
    assert reset["offsets"] == {"0": 590} and reset["reason"].startswith("quarantined ")
    assert reset["after"]["dead_lettered"] == {"ranges": {"0": [500, 530]}, "messages": 30}
    assert passed_over_rows([reset]) == {"read": 30, "dlq": 30}


@pytest.mark.parametrize(
    "change, named",
    [
        ({"features": {"x0": "1.5", "x1": 0, "x2": 0, "x3": 0, "x4": 0}, "label": 1}, "x0"),  # a number sent as text
        ({"features": {"x0": 0, "x1": 0, "x2": 0, "x3": 0, "x4": 0}, "label": "yes"}, "'yes'"),  # a new class
        ({"payload": {"x0": 0, "x1": 0, "x2": 0, "x3": 0, "x4": 0}, "label": 1}, "'features'"),  # a new envelope
    ],
    ids=["feature-type", "label-class", "envelope"],
)
def test_a_batch_dead_lettered_whole_by_a_schema_change_halts_naming_it(
    change, named, kafka_settings, registry
) -> None:
    """Producers that change a feature's type, add a class or move the features halt the stream as a
    renamed feature does: passed over, every later batch was too, learning nothing for ever while
    only the dead-letter ratio warned."""
    from dagster_project.ingest.events import EventParser, reason_kind

    spec = _spec(policy="halt")
    failures = EventParser(spec).parse_many([orjson.dumps({"id": f"e{i}", **change}) for i in range(30)]).failures
    batch = _junk_batch(spec, 500, 30)
    batch.dlq_reasons = Counter(reason_kind(reason) for _, reason in failures)
    assert batch.dlq == 30

    outcome = apply_quality_policy(kafka_settings, registry, spec, batch, _run_id())

    assert not outcome.passed and outcome.metadata["action"] == "halt", outcome.message
    assert outcome.message.startswith(f"HALTED {spec.name} at p0[500, 530)") and named in outcome.message
    assert registry.pending_offset_reset(spec.name) is None


def test_a_category_sent_as_another_type_is_a_schema_change_not_junk() -> None:
    """A category feature of strings now sent as numbers: every later batch is refused alike."""
    from dagster_project.ingest.events import EventParser, reason_kind
    from dagster_project.quality.passed_over import nothing_but_dead_letters

    spec = synthetic_spec(partitions=1, features=[{"name": "color", "type": "category", "categories": ["red", "blue"]}])
    failures = EventParser(spec).parse_many([orjson.dumps({"id": "e", "features": {"color": 5}})]).failures
    batch = _junk_batch(spec, 0, 1)
    batch.dlq_reasons = Counter(reason_kind(reason) for _, reason in failures)
    assert batch.dlq == 1 and not nothing_but_dead_letters(batch), batch.dlq_reasons
