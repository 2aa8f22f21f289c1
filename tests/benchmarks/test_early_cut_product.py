"""The product check's summary (benchmarks/early_cut_product.py): accuracy spans and recovery rows."""

from __future__ import annotations

import numpy as np

from benchmarks.early_cut_product import stream_spec, summary


def test_recovery_counts_rows_until_a_100_row_window_is_back_near_the_level_before() -> None:
    outcome = np.concatenate([np.full(400, np.nan), np.ones(600), np.zeros(250), np.ones(750)])
    result = {"early_cut": True, "outcome": outcome, "cuts": ["first"], "actions": [], "served": []}

    line = summary(result, change=1000, batch=200)

    assert "before the change 1.0000" in line and "rows 1000-1200 0.0000" in line
    assert "within 0.05 of before: 245;" in line  # rows 1245-1344 hold 95 correct of 100


def test_without_a_change_only_what_it_did_is_reported() -> None:
    result = {"early_cut": False, "outcome": np.ones(800), "cuts": [], "actions": [], "served": []}

    assert (
        summary(result, change=10**6, batch=200)
        == "early_cut off: no change; served accuracy 1.0000; cuts []; actions []"
    )
    assert stream_spec(True, 400).batch.early_cut and not stream_spec(False, 400).batch.early_cut
