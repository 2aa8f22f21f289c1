"""Passed-over batches' records (quality/passed_over.py) through the resets that replace them."""

from __future__ import annotations

import orjson
import pytest

from dagster_project.observability.exporter import passed_over_rows
from dagster_project.quality.passed_over import pass_over, replacing
from tests.conftest import synthetic_spec
from tests.dagster_project.quality.test_policy import _junk_batch


def test_a_long_run_of_resets_replacing_each_other_stays_storable(registry) -> None:
    """Each reset that replaces a pending one keeps it under `after`: 300 batches quarantined in a row
    after a passed-over one nested 300 records, past what orjson writes ('Recursion limit reached' at
    255), so setting the next reset failed every retry and the stream halted on a failed run. The
    chain is kept to a bounded depth, the older records folded into one that still counts their dead
    letters."""
    spec = synthetic_spec(partitions=1)
    pass_over(registry, spec, _junk_batch(spec, 0, 30), "run-junk")
    for i in range(300):
        registry.set_pending_offsets(
            spec.name,
            {0: 100 + i},
            reason=f"quarantined q{i}",
            by="data quality",
            details=replacing(registry.pending_offset_reset(spec.name)),
        )
    reset = registry.pending_offset_reset(spec.name)
    assert reset["offsets"] == {"0": 399} and reset["after"]["reason"] == "quarantined q298"
    assert passed_over_rows([reset]) == {"read": 30, "dlq": 30}


def test_the_folded_record_counts_every_reset_it_stands_for() -> None:
    """Folding again an already folded summary counted it as one reset: 299 replaced resets (20 kept
    nested) were said to be '2 earlier reset(s), folded'."""
    from dagster_project.quality.passed_over import AFTER, MAX_AFTER

    record = None
    for i in range(300):
        record = {"offsets": {"0": i}, "reason": f"q{i}", "by": "test", **replacing(record)}
    for _ in range(MAX_AFTER):
        record = record[AFTER]
    assert record[AFTER]["folded"] == 299 - MAX_AFTER
    assert record[AFTER]["reason"] == f"{299 - MAX_AFTER} earlier reset(s), folded"


def _refused_whole(spec, messages: list[dict | bytes]):
    """A batch of these messages, every one refused by the parser, counted by kind as training counts them."""
    from collections import Counter

    import orjson

    from dagster_project.ingest.events import EventParser, reason_kind

    raw = [m if isinstance(m, bytes) else orjson.dumps(m) for m in messages]
    failures = EventParser(spec).parse_many(raw).failures
    batch = _junk_batch(spec, 0, len(raw))
    batch.dlq_reasons = Counter(reason_kind(reason) for _, reason in failures)
    assert batch.dlq == len(raw), batch.dlq_reasons
    return batch


_FEATURES = {"x0": 0, "x1": 0, "x2": 0, "x3": 0, "n": 2}


@pytest.mark.parametrize(
    "task, event",
    [
        ("classification", {"id": "e", "features": {**_FEATURES, "n": 2.5}, "label": 1}),  # an int now a float
        ("classification", {"id": "e", "features": {**_FEATURES, "n": None}, "label": 1}),  # a feature now null
        ("classification", {"id": "e", "ts": "2026-12-06T18:00:00Z", "features": _FEATURES}),  # ts now ISO text
        ("classification", {"id": "e", "features": _FEATURES, "label": {"value": 1}}),  # the label in an object
        ("regression", {"id": "e", "features": _FEATURES, "label": "1.5"}),  # a regression label as text
        ("classification", {"event_id": "e", "features": _FEATURES}),  # the id renamed
        ("classification", {"id": {"uuid": "e"}, "features": _FEATURES}),  # the id in an object
    ],
    ids=["int-as-float", "null", "ts-as-text", "label-object", "regression-label-text", "id-renamed", "id-object"],
)
def test_a_type_or_field_change_refusing_every_message_is_a_schema_change_not_junk(task: str, event: dict) -> None:
    """Producers that send an int feature as a float, null a feature, send `ts` as ISO text, wrap the label
    or rename the id have every message refused alike: passed over, every later batch was too, the stream
    learning nothing for ever while only the dead-letter ratio warned."""
    from dagster_project.quality.passed_over import nothing_but_dead_letters

    features = [{"name": f"x{i}"} for i in range(4)] + [{"name": "n", "type": "int"}]
    label = {"classes": [0, 1]} if task == "classification" else {}
    spec = synthetic_spec(partitions=1, task=task, features=features, label=label)
    batch = _refused_whole(spec, [event] * 30)
    assert not nothing_but_dead_letters(batch), batch.dlq_reasons


@pytest.mark.parametrize(
    "message",
    [b"{not json", b"", b"5", orjson.dumps({"id": "e", "features": {**_FEATURES, "x0": 1e38}})],
    ids=["not-json", "empty", "not-an-object", "beyond-magnitude"],
)
def test_junk_refusing_every_message_is_still_passed_over(message: bytes) -> None:
    """Corrupt messages are not a schema change: a batch of them is passed over, as before."""
    from dagster_project.quality.passed_over import nothing_but_dead_letters

    features = [{"name": f"x{i}"} for i in range(4)] + [{"name": "n", "type": "int"}]
    batch = _refused_whole(synthetic_spec(partitions=1, features=features), [message] * 30)
    assert nothing_but_dead_letters(batch), batch.dlq_reasons
