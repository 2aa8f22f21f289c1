"""The serving lineage (monitors/lineage.py): which champions' served rows are one model's evidence."""

from __future__ import annotations

from monitors.actions import ACTION_KIND, action_history, epoch
from monitors.lineage import serving_lineage

AT = [f"2026-12-03T10:0{i}:00+00:00" for i in range(6)]
GATE = "promoted: not worse on unseen rows"


def _change(at: str, version: str, reason: str = GATE) -> dict:
    return {"version": version, "reason": reason, "at": at}


def _action(at: str, action: str, to_version: str | None) -> dict:
    return {"kind": ACTION_KIND, "action": action, "at": at, "to_version": to_version}


FIRST = "first version: nothing to compare against"
HISTORY = [_change(AT[0], "v1", FIRST), _change(AT[1], "v2"), _change(AT[3], "v4")]


def test_gate_promotions_continue_the_lineage_the_first_version_began() -> None:
    lineage = serving_lineage(HISTORY, action_history([]), "v4")

    assert lineage is not None and lineage.versions == {"v1", "v2", "v4"} and lineage.since == epoch(AT[0])


def test_a_drift_retrain_starts_a_new_lineage_with_its_version() -> None:
    history = [*HISTORY[:2], _change(AT[3], "v3"), _change(AT[5], "v4")]  # v3 promoted by its gate after
    actions = action_history([_action(AT[2], "retrain", "v3")])

    lineage = serving_lineage(history, actions, "v4")

    assert lineage is not None and lineage.since == epoch(AT[2])
    assert lineage.versions == {"v3", "v4"}  # v1 and v2 served the old lineage


def test_a_rollback_or_a_manual_alias_change_starts_a_new_lineage() -> None:
    rolled = [*HISTORY, _change(AT[4], "v2", "rollback: v4 regressed")]
    assert serving_lineage(rolled, action_history([]), "v2").versions == {"v2"}
    manual = [*HISTORY, _change(AT[4], "v1", "manual: operator")]
    assert serving_lineage(manual, action_history([]), "v1").since == epoch(AT[4])


def test_no_lineage_when_the_champion_is_not_the_latest_action_s() -> None:
    actions = action_history([_action(AT[4], "retrain", "v5")])  # its gate refused v5, or has not decided yet

    assert serving_lineage(HISTORY, actions, "v4") is None
