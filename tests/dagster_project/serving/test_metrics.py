"""The scorer's metrics as Prometheus sees them before anything happened."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from dagster_project.serving.metrics import ScorerMetrics


@pytest.mark.parametrize(
    "counter",
    [
        "streamfit_registry_errors_total",
        "streamfit_scorer_batch_retries_total",
        "streamfit_dlq_messages_total",
        "streamfit_feature_keys_evicted_total",
        "streamfit_model_swaps_total",
        "streamfit_scorer_consumer_rejoins_total",
        "streamfit_scorer_commit_failures_total",
    ],
)
def test_a_scorer_s_event_counters_are_exported_from_zero(counter: str) -> None:
    """A series that appears with its first event hides that event from increase(): a probe saw 6
    hot swaps read as 2.16, and a scorer's first commit failure or rejoin never reached a panel."""
    registry = CollectorRegistry()
    ScorerMetrics("orders", registry)

    assert registry.get_sample_value(counter, {"stream": "orders"}) == 0.0
