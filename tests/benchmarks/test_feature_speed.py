"""The feature-speed benchmark computes the same values three ways before it compares their speed."""

from __future__ import annotations

from benchmarks import feature_speed


def test_the_running_windows_the_slices_and_pandas_agree() -> None:
    result = feature_speed.run(rows=3_000)
    assert set(result) == {"60s", "600s"}
    for r in result.values():
        assert r["max_abs_diff_vs_pandas"] < 1e-9 and r["max_abs_diff_slices_vs_pandas"] < 1e-9
        assert r["events_per_window"] > 20  # the windows are filled, so the slices do cost something
        assert min(r["incremental_eps"], r["slices_eps"], r["pandas_eps"]) > 0
