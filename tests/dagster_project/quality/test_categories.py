"""The unseen-category rule: a batch whose share of values outside a vocabulary exceeds
`quality.max_unseen_category_share` fails, naming the feature, share, threshold and example values
with their offsets; at or below the threshold it passes. Batches are parsed from real events: no Kafka."""

from __future__ import annotations

from dagster_project.dev.datasets import census_events
from dagster_project.ingest.events import make_event
from dagster_project.ingest.micro_batch import MicroBatch, _parse
from dagster_project.kafka.io import RawRecord
from dagster_project.kafka.record_columns import RecordColumns
from dagster_project.quality.suite import row_violations, validate_batch
from dagster_project.spec import StreamSpec
from tests.conftest import census_spec

FIRST_OFFSET = 500


def _batch(spec: StreamSpec, rows: int, unseen_every: int | None) -> MicroBatch:
    """`rows` census events on partition 1; every `unseen_every`-th has a workclass outside the vocabulary."""
    records = []
    for i, event in enumerate(census_events(rows=rows, unseen_share=0.0)):
        features = dict(event.features)
        if unseen_every and i % unseen_every == 0:
            features["workclass"] = f"Space-{i}"
        value = make_event(event.event_id, features, event.label)
        records.append(RawRecord(1, FIRST_OFFSET + i, 0, None, value))
    return _parse(None, spec, {1: (FIRST_OFFSET, FIRST_OFFSET + rows)}, RecordColumns.of(records), False, None)


def test_too_many_unseen_categories_fail_the_batch_naming_feature_share_threshold_and_examples() -> None:
    spec = census_spec(quality={"max_unseen_category_share": 0.05})
    batch = _batch(spec, 200, unseen_every=10)  # 20 of 200 rows: 10 %

    result = validate_batch(batch, spec)

    assert not result.passed
    (failure,) = result.failures
    assert failure.column == "workclass"
    assert failure.unexpected_count == 20 and failure.observed == 0.1
    assert failure.message.startswith(
        "unseen categories in 'workclass': 20 of 200 rows (10.0%) hold values outside its categories, "
        "above quality.max_unseen_category_share 0.05; e.g. 'Space-0' at 1:500, 'Space-10' at 1:510"
    )
    # It names fixes that work: adding the values to `categories` would be a SPEC CHANGED (a new stream).
    assert failure.message.endswith(
        "; if they are expected, raise the threshold (they are learned as the feature's `unseen` encoding). "
        "Adding them to the feature's categories changes the model's columns, which is a new stream (the sensor "
        "says SPEC CHANGED); for values that keep coming, declare a new stream with `buckets: N` (hashing)"
    )
    assert failure.sample[0] == {"event_id": "census-0", "partition": 1, "offset": 500, "value": "Space-0"}
    assert result.unseen_categories == {"workclass": 20, "education": 0}
    assert result.as_metadata()["unseen_categories"] == {"workclass": 20, "education": 0}
    assert not row_violations(batch, spec).any()  # a batch-level share, not a bad row: allow_partial keeps them


def test_a_share_at_the_threshold_passes_and_is_still_counted() -> None:
    spec = census_spec(quality={"max_unseen_category_share": 0.1})
    result = validate_batch(_batch(spec, 200, unseen_every=10), spec)
    assert result.passed, result.summary
    assert result.unseen_categories["workclass"] == 20


def test_the_default_threshold_passes_a_clean_batch_and_fails_a_changed_upstream() -> None:
    spec = census_spec(quality={})
    assert spec.quality.max_unseen_category_share == 0.05
    assert validate_batch(_batch(spec, 100, unseen_every=None), spec).passed
    assert not validate_batch(_batch(spec, 100, unseen_every=2), spec).passed


def test_hashed_features_have_nothing_unseen() -> None:
    spec = census_spec(quality={"max_unseen_category_share": 0.0})
    result = validate_batch(_batch(spec, 50, unseen_every=None), spec)
    assert result.passed, result.summary
    assert "zip" not in result.unseen_categories
