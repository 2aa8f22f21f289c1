"""benchmarks/early_cut_verdict.py: Part 17's pre-written criteria and decision rule, applied by code."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from benchmarks import early_cut_verdict
from benchmarks.early_cut_verdict import decision, retrained_from, verdict


def result(
    on: bool,
    recover: int | None = 4000,
    after: tuple[float, float] = (0.5, 0.7),
    served_from: int = 18_000,
    cut: bool = True,
    change: int | None = 12_000,
) -> dict[str, Any]:
    cuts = [{"early_cut": "first", "ranges": '{"0":[10000,14000]}'}] if on and cut else []
    return {
        "early_cut": on,
        "change": change,
        "summary": {
            "accuracy": 0.9,
            "before": 0.96,
            "after_1_batch": after[0],
            "after_2_batches": after[1],
            "after_to_end": 0.85,
            "rows_to_recover": recover,
        },
        "cuts": cuts,
        "retrains": 1,
        "drift_actions": [
            {"action": "rollback", "to_version": "v2"},
            {"action": "retrain", "to_version": "v4", "since": "v3", "after_cut": on and cut},
        ],
        "served_from": [[0, "v1"], [11_000, "v2"], [served_from, "v4"], [served_from + 4000, "v5"]],
    }


def test_retrained_from_is_the_first_row_the_first_retrain_s_version_served() -> None:
    assert retrained_from(result(False, served_from=17_513)) == 17_513  # not the rollback's v2 (11,000)
    assert retrained_from(result(False) | {"drift_actions": []}) is None


@pytest.mark.parametrize(
    ("on", "expected"),
    [
        (result(True, recover=3000, served_from=16_000), "helped"),
        (result(True, recover=3000, served_from=18_000), "neither"),  # not served sooner
        (result(True, recover=3000, served_from=16_000, cut=False), "neither"),  # sooner without a cut
        (result(True, recover=4000, served_from=16_000), "neither"),  # as many rows to recover
        (result(True, recover=4200, served_from=16_000), "worse"),
        (result(True, recover=None, served_from=16_000), "worse"),  # never recovered
        (result(True, recover=3000, after=(0.479, 0.7), served_from=16_000), "worse"),  # helped and worse: worse
        (result(True, recover=3000, after=(0.5, 0.679), served_from=16_000), "worse"),
        (result(True, recover=3000, after=(0.481, 0.681), served_from=16_000), "helped"),  # within 0.02
    ],
)
def test_verdict_applies_the_criteria_written_before_the_runs(on: dict[str, Any], expected: str) -> None:
    assert verdict(result(False), on) == expected


def test_a_change_free_pair_is_clean_only_without_a_cut_and_a_retrain() -> None:
    off = result(False, change=None) | {"retrains": 0}
    assert verdict(off, result(True, change=None, cut=False) | {"retrains": 0}) == "clean"
    assert verdict(off, result(True, change=None, cut=False)) == "cut"  # a retrain
    assert verdict(off, result(True, change=None) | {"retrains": 0}) == "cut"


def test_decision_needs_at_most_one_worse_a_helped_majority_and_clean_change_free_runs() -> None:
    on = "on when labels: is configured"
    assert decision(["helped", "helped", "worse", "clean"]) == on
    assert decision(["helped", "helped", "worse", "worse", "helped", "helped"]) == "opt-in"  # two worse
    assert decision(["helped", "neither", "worse", "neither"]) == "opt-in"  # no majority
    assert decision(["helped", "helped", "neither", "clean"]) == on
    assert decision(["helped", "helped", "helped", "cut"]) == "opt-in"


def test_main_prints_the_table_rows_each_verdict_and_the_decision(tmp_path, capsys) -> None:
    path = tmp_path / "change12000_rep.json"
    pair = [result(False), result(True, recover=3000, served_from=16_000)]
    path.write_bytes(orjson.dumps({"results": pair}))
    early_cut_verdict.main([str(path)])
    out = capsys.readouterr().out.splitlines()
    off_row = "| change at 12,000 | off | 0.9600 | 0.5000 / 0.7000 / 0.8500 | 4,000 | - | `v4` since `v3` (18,000) |"
    assert out[0] == off_row
    assert out[1].startswith("| change at 12,000 | on |") and "first, `[10000, 14000)`" in out[1]
    assert "`after_cut` (16,000)" in out[1]
    assert out[2:] == ["change12000_rep.json: helped", "decision over 1 pairs: on when labels: is configured"]
