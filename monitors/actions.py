"""The drift actions' records (decisions.jsonl, kind `drift_action`), read back for the next decision.

A retrain that follows an early cut is recorded with `after_cut: true`: it leaves the cooldown where
the last other action put it, so a second retrain can follow if the cut learned a pause in a transition
(benchmarks/README.md part 12 (b)); the detections up to it still count as answered (decide's rule 4);
the detector's series after it starts at the cut batch's version; and its record carries the short
batch's totals and the first offsets the retrained version serves, which arm one second cut (part 16).
A second cut's retrain is marked `second_cut: true` and is an ordinary action: it anchors the cooldown.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from monitors.decisions import LastAction

ACTION_KIND = "drift_action"


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _as_last_action(record: dict[str, Any]) -> LastAction:
    return LastAction(record["action"], epoch(record["at"]), record.get("from_version"), record.get("to_version"))


@dataclass(frozen=True)
class ActionHistory:
    """The action records of one stream, oldest first, and what they mean for cooldown and cuts."""

    records: list[dict[str, Any]]

    @property
    def latest(self) -> dict[str, Any] | None:
        return self.records[-1] if self.records else None

    @property
    def anchor(self) -> LastAction | None:
        """The action the cooldown runs from: the last one that is not a first cut's retrain."""
        anchors = [r for r in self.records if not r.get("after_cut")]
        return _as_last_action(anchors[-1]) if anchors else None

    @property
    def last_cut_retrain(self) -> float | None:
        """When a first cut's retrain last ran (one such cooldown-free retrain per cooldown)."""
        cuts = [r for r in self.records if r.get("after_cut")]
        return epoch(cuts[-1]["at"]) if cuts else None

    @property
    def answered(self) -> float | None:
        """Detections up to here were answered by a first cut's retrain (decide's rule 4 uses its time)."""
        return self.last_cut_retrain

    @property
    def since(self) -> float:
        """Evidence counts from the latest action of any kind (0: no action yet)."""
        return epoch(self.latest["at"]) if self.latest else 0.0

    @property
    def seed_version(self) -> str | None:
        """The version whose batch seeds the detector's series after the latest action: the cut batch's,
        after a first cut's retrain (so "rise again" means above the level the cut was taken on)."""
        latest = self.latest
        return latest.get("cut_version") if latest and latest.get("after_cut") else None

    def armed(self, lineage: Collection[str], next_offsets: dict[int, int]) -> dict[str, Any] | None:
        """The first cut's retrain record when the waiting batch may be cut again: that retrain is the
        latest action, its version is in the serving lineage (`monitors.lineage`: the champion, or the
        one the gate promoted the champion after; not when the retrain lost its gate), and the waiting
        batch is the first it serves. The lineage, not the champion alone: a gate promotion in between
        continues the retrained model, and its rows are the same evidence."""
        latest = self.latest
        if not latest or not latest.get("after_cut") or latest.get("to_version") not in lineage:
            return None
        serves_from = {int(p): int(o) for p, o in (latest.get("serves_from") or {}).items()}
        return latest if serves_from and serves_from == next_offsets and latest.get("short") else None


def action_history(decisions: list[dict[str, Any]]) -> ActionHistory:
    return ActionHistory([d for d in decisions if d.get("kind") == ACTION_KIND])


def last_action(registry: Any, stream: str) -> LastAction | None:
    """The action the drift cooldown runs from (a first cut's retrain does not move it)."""
    return action_history(registry.decisions(stream)).anchor
