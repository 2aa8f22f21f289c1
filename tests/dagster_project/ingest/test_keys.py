"""The key a stream's events are produced with: the partition each key's history lives on."""

from __future__ import annotations

from dagster_project.ingest.keys import message_key
from dagster_project.spec import StreamSpec


def test_a_by_field_declared_as_a_feature_is_read_from_features() -> None:
    """Where the product reads the key (`features.timing.event_key`): a declared feature's value."""
    spec = StreamSpec.model_validate(
        {
            "name": "shops",
            "task": "classification",
            "features": [{"name": "amount"}, {"name": "shop", "type": "category", "buckets": 8}],
            "label": {"classes": [0, 1]},
            "event_time": {"field": "ts"},
            "derived": [{"name": "spend_1h", "of": "amount", "by": "shop", "agg": "sum", "window": "1h"}],
        }
    )
    key = message_key(spec)
    assert key({"id": "e1", "features": {"amount": 2.0, "shop": "s9"}}) == b"s9"
    assert key({"id": "e1", "shop": "top-level is not where the product looks", "features": {}}) is None
    assert key({"id": "e1", "features": {"shop": ""}}) is None and key([1]) is None
