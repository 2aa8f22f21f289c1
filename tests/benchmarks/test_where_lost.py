"""`benchmarks.where_lost`: where one configuration loses to another, and which family served there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import learning_streams, where_lost


def test_the_rare_positive_loss_is_placed_at_the_change_with_the_trees_leading(tmp_path: Path, capsys) -> None:
    out = tmp_path / "where.json"
    (found,) = where_lost.main(
        ["--streams", "searare_abrupt_s1", "--configs", "gate", "default", "--batch", "1000", "--json", str(out)]
    )
    assert found["difference"] < -0.005 and found["change"] == 3_000
    assert found["only_config_wrong_at_change"] >= 0.9 * found["only_config_wrong"] > 40
    leaders = [(c["after_row"], c["leader"]) for c in found["leader_changes"]]
    assert [leader for row, leader in leaders if row <= 3_000][-1] == "hgb"
    assert next(leader for row, leader in leaders if row > 3_000) == "sgd"
    assert json.loads(out.read_text()) == [found]
    printed = capsys.readouterr().out
    assert "searare_abrupt_s1 batch 1,000: gate - default -0.0" in printed and "at the change)" in printed


def test_a_stationary_stream_has_no_change_to_place_rows_at() -> None:
    stream = learning_streams.build("searare_stationary_s1", 3_000)
    found = where_lost.where_lost(stream, "gate", "default", 1_000, 100.0)
    assert found["only_config_wrong_at_change"] is None and found["change"] is None
    assert "at the change" not in where_lost.line(found)


def test_regression_streams_are_refused_with_the_reason() -> None:
    stream = learning_streams.build("friedman_stationary_s1", 2_000)
    with pytest.raises(ValueError, match="need a classification stream"):
        where_lost.where_lost(stream, "gate", "default", 1_000, 100.0)
