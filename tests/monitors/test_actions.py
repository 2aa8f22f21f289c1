"""The drift actions' records read back (monitors/actions.py): the cooldown's anchor, and what a first
cut's retrain record arms."""

from __future__ import annotations

from monitors.actions import ACTION_KIND, action_history

AT = ["2026-12-03T10:00:00+00:00", "2026-12-03T10:05:00+00:00", "2026-12-03T10:06:00+00:00"]


def _record(at: str, **extra) -> dict:
    return {"kind": ACTION_KIND, "action": "retrain", "at": at, **extra}


FIRST_CUT = {
    "after_cut": True,
    "to_version": "v9",
    "cut_version": "v8",
    "short": {"rows": 600, "errors": 60.0},
    "serves_from": {"0": 4000, "1": 4100},
}


def test_a_first_cut_retrain_leaves_the_cooldown_anchor_where_it_was() -> None:
    history = action_history(
        [_record(AT[0], to_version="v5"), {"kind": "promotion_gate", "at": AT[1]}, _record(AT[1], **FIRST_CUT)]
    )

    assert history.anchor.to_version == "v5" and history.anchor.at < history.since
    assert history.last_cut_retrain == history.answered == history.since  # rule 4 uses its time
    assert history.seed_version == "v8"  # the detector's series starts at the cut batch


def test_a_second_cut_retrain_is_an_ordinary_action() -> None:
    history = action_history(
        [_record(AT[0], to_version="v5"), _record(AT[1], **FIRST_CUT), _record(AT[2], second_cut=True)]
    )

    assert history.anchor.at == history.since  # it starts the cooldown
    assert history.seed_version is None
    assert history.armed({"v9"}, {0: 4000, 1: 4100}) is None  # and arms no third cut


def test_only_the_batch_a_first_cut_retrain_serves_first_is_armed() -> None:
    history = action_history([_record(AT[0], **FIRST_CUT)])

    assert history.armed({"v9"}, {0: 4000, 1: 4100})["short"] == {"rows": 600, "errors": 60.0}
    assert history.armed({"v9"}, {0: 4600, 1: 4100}) is None  # a later batch
    assert history.armed({"v8"}, {0: 4000, 1: 4100}) is None  # the retrain lost its gate: v8 serves
    assert action_history([_record(AT[0], to_version="v9")]).armed({"v9"}, {0: 4000, 1: 4100}) is None
