"""The `[stream, "champion"]` asset's materialization for a champion moved outside any Dagster run.

A training run's gate and the drift monitor's rollback materialize the champion asset in their runs;
`streamfit models promote|rollback` (and a `quarantine replay` that registers a stream's first
version) move the alias from a shell, and without this the Dagster UI went on naming the champion
they replaced. The registry is the truth: a change already made there is never undone or turned
into an error here, only reported in the instance in DAGSTER_HOME (or said to be missing from it).
Dagster is imported inside the function: the CLI's import cost matters.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from dagster_project.registry.store import ROLLBACK_REASON, ModelRegistry, RegistryError, last_promotion


def record_champion_change(
    registry: ModelRegistry, stream: str, version: str, decision: str, by: str, warn: Callable[[str], None]
) -> bool:
    """Materialize `[stream, "champion"]` (runless) with the champion-history record that made `version`
    the champion: the version it replaced, the reason, who and how (`decision`). True when recorded.

    Nothing is recorded when the history's last change is not to `version` (the command moved nothing,
    or a run moved the alias on since, and that run materializes it). Without DAGSTER_HOME, or when the
    instance cannot be written, `warn` gets one line saying so; the command still succeeds."""
    home = os.environ.get("DAGSTER_HOME")
    try:
        change = last_promotion(registry.champion_history(stream), version)
    except RegistryError as exc:
        warn(
            f"{stream}: the Dagster UI was not told of a change of champion: the champion history is unreadable "
            f"({exc}); the registry's champion stands"
        )
        return False
    if change is None:
        return False
    if not home:
        warn(
            f"{stream}: the Dagster UI will show the champion as of its last run, not {version}: set DAGSTER_HOME "
            "to the deployment's instance directory to record the change there"
        )
        return False
    try:
        _report(stream, _metadata(change, decision, by))
    except Exception as exc:  # an instance that cannot be written (Postgres down): the registry change stands
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        warn(
            f"{stream}: the champion is {version} in the registry (that stands), but recording it in the Dagster "
            f"instance in {home} failed: {type(exc).__name__}: {first_line}"
        )
        return False
    return True


def _metadata(change: dict[str, Any], decision: str, by: str) -> dict[str, Any]:
    """The keys the runs' champion materializations use: `champion`, `rolled_back_from` (the drift
    monitor's rollback) or `previous` (the champion history's name), `reason`, `decision`; plus `by`."""
    reason = str(change.get("reason") or "")
    replaced = "rolled_back_from" if reason.startswith(ROLLBACK_REASON) else "previous"
    metadata: dict[str, Any] = {
        "champion": change["version"],
        replaced: change.get("previous") or "none",
        "reason": reason,
        "decision": decision,
        "by": by,
    }
    passed_over = (change.get("evidence") or {}).get("passed_over")
    if passed_over:
        import dagster as dg

        metadata["passed_over"] = dg.MetadataValue.json(passed_over)
    return metadata


def _report(stream: str, metadata: dict[str, Any]) -> None:
    import dagster as dg

    from dagster_project.instance import open_instance

    with open_instance() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=[stream, "champion"], metadata=metadata))
