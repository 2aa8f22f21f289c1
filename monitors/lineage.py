"""The serving lineage: the champions whose served rows the early cut reads as one model's evidence.

The promotion gate promotes a new champion after nearly every batch, each continuing the one before
(it learned one more batch), so the rows waiting to be learned were usually served by several
champions. Read as one model's live errors, they give the early cut its half batch of evidence
(benchmarks/README.md part 17, "Evidence across promotions"); read per champion, the evidence restarts
at each promotion and never reaches it. A drift action (retrain or rollback), a manual alias change and
the first version are not continuations: each starts a new lineage, and the rows served before it no
longer count (a retrain or rollback already answered the change they show).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dagster_project.registry.store import FIRST_VERSION_REASON, MANUAL_REASON, ROLLBACK_REASON, alias_changes
from monitors.actions import ActionHistory, epoch

NOT_A_CONTINUATION = (FIRST_VERSION_REASON, ROLLBACK_REASON, MANUAL_REASON)  # champion-history reasons


@dataclass(frozen=True)
class Lineage:
    """The versions of the champion's lineage and when it began (epoch s; 0 when the history does not say)."""

    since: float
    versions: frozenset[str]


def _continues(change: dict[str, Any]) -> bool:
    return not str(change.get("reason", "")).startswith(NOT_A_CONTINUATION)


def serving_lineage(history: Sequence[dict[str, Any]], actions: ActionHistory, champion: str) -> Lineage | None:
    """The lineage `champion` serves in, from the champion history (alias changes, oldest first) and the
    drift actions; None when the champion is not part of the lineage the latest action began (a
    retrain its gate refused, or one not promoted yet: the old lineage still serves, and its rows are
    not the retrained model's evidence).

    It begins at the latest alias change that is not a gate promotion or at the latest drift action,
    whichever came later, with that change's or action's version (a retrain's version is promoted
    after its action is recorded, a rollback's alias moves just before); every version the gate
    promoted from then on continues it."""
    since, first = 0.0, set()
    history = alias_changes(history)  # a re-promotion of the champion changed nothing
    for change in history:
        if not _continues(change):
            since, first = epoch(change["at"]), {change["version"]}
    latest = actions.latest
    if latest is not None and actions.since >= since:
        since, first = actions.since, {latest["to_version"]} if latest.get("to_version") else set()
    versions = first | {c["version"] for c in history if epoch(c["at"]) >= since and _continues(c)}
    return Lineage(since, frozenset(versions)) if champion in versions else None
