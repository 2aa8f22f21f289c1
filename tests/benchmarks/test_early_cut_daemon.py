"""The pure helpers of benchmarks/early_cut_daemon.py: served outcome, windows, recovery, reason kinds."""

from __future__ import annotations

import math

import numpy as np
import orjson

from benchmarks import early_cut_daemon
from benchmarks.early_cut_daemon import accuracy, reason_kind, rows_to_recover, served_outcome, summarize


def test_served_outcome_marks_unserved_rows_nan() -> None:
    labels = np.array([1, 0, 1, 1])
    outcome = served_outcome({0: 1, 1: 1, 3: True, 9: 0}, labels)  # row 9 is outside the stream
    assert outcome[0] == 1.0 and outcome[1] == 0.0 and outcome[3] == 1.0
    assert math.isnan(outcome[2])


def test_accuracy_ignores_unserved_rows_and_is_none_without_any() -> None:
    outcome = np.array([np.nan, 1.0, 0.0, 1.0, np.nan])
    assert accuracy(outcome, 0, 4) == 2 / 3
    assert accuracy(outcome, 4, 5) is None
    assert accuracy(outcome, -3, 2) == 1.0  # clipped to the stream


def test_rows_to_recover_counts_to_the_end_of_the_first_window_back_within_tolerance() -> None:
    before = 0.91  # [800, 1000) at 0.9 is within 0.02 of it, not above it
    outcome = np.concatenate([np.ones(400), np.zeros(200), np.full(200, 0.5), np.ones(400)])
    outcome[800:1000:10] = 0.0  # 0.9 over [800, 1000)
    # windows from the change (400): [400,600) 0.0, [600,800) 0.5, [800,1000) 0.9
    assert rows_to_recover(outcome, 400, before, window=200, tolerance=0.02) == 600
    assert rows_to_recover(outcome, 400, 0.95, window=200, tolerance=0.02) == 800  # 0.9 is not within 0.02 of 0.95
    assert rows_to_recover(outcome[:800], 400, before, window=200, tolerance=0.02) is None


def test_rows_to_recover_skips_windows_nothing_was_served_in() -> None:
    outcome = np.concatenate([np.full(200, np.nan), np.ones(200)])
    assert rows_to_recover(outcome, 0, 1.0, window=200) == 400


def test_summarize_reports_the_windows_after_the_change_and_none_without_one() -> None:
    outcome = np.concatenate([np.ones(1000), np.zeros(500), np.ones(500)])
    s = summarize(outcome, 1000, batch=500)
    assert s["before"] == 1.0 and s["after_1_batch"] == 0.0 and s["after_2_batches"] == 0.5
    assert s["after_to_end"] == 0.5 and s["rows_to_recover"] == 800  # [1400, 1600) is 0.5, [1600, 1800) 1.0
    flat = summarize(outcome, None, batch=500)
    assert "before" not in flat and flat["accuracy"] == 0.75


def test_reason_kind_drops_numbers_and_versions() -> None:
    a = reason_kind("1,234 rows waiting < 5000 (oldest 12.5 s); live errors of v3 rose 0.31 -> 0.52")
    b = reason_kind("99 rows waiting < 5000 (oldest 3 s); live errors of v12 rose 1e-3 -> 0.5")
    assert a == b


def test_reason_kind_drops_run_ids() -> None:
    assert reason_kind("training run 1a2b3c4d is STARTED") == reason_kind("training run deadbeef is STARTED")


def test_write_ends_the_file_name_with_the_tag_so_a_repeat_keeps_the_earlier_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(early_cut_daemon, "RESULTS", tmp_path)
    first = early_cut_daemon.write([{"a": 1}], 12_000, 35_000, [False, True])
    again = early_cut_daemon.write([{"a": 2}], 12_000, 35_000, [False, True], "_waiting")
    assert (first.name, again.name) == (
        "change12000_rows35000_off-on.json",
        "change12000_rows35000_off-on_waiting.json",
    )
    assert orjson.loads(first.read_bytes())["results"] == [{"a": 1}]
