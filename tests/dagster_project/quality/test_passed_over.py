"""Passed-over batches' records (quality/passed_over.py) through the resets that replace them."""

from __future__ import annotations

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
