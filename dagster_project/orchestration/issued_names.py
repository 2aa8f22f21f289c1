"""The highest version name this Dagster deployment has given a stream.

A registry restored from an older backup numbers new versions from its own head, so without this the
first version after the restore took the name of a lost one: predictions, decisions and MLflow links
made before the restore named a model that was no longer the one under that name. Every run that
registers a version materializes `[stream, "model_version"]` with the version's name, so the newest
such materialization is the highest name given (names only grow). Versions registered outside Dagster
(`streamfit batches replay` from a shell) leave no materialization and are not seen here.
"""

from __future__ import annotations

import dagster as dg

from dagster_project.names import is_version_name, version_number
from dagster_project.registry.store import Version


def highest_issued(instance: dg.DagsterInstance, stream: str) -> int:
    """The number of the newest version a run registered for `stream` (0: none recorded)."""
    event = instance.get_latest_materialization_event(dg.AssetKey([stream, "model_version"]))
    materialization = event.asset_materialization if event is not None else None
    entry = materialization.metadata.get("version") if materialization is not None else None
    name = getattr(entry, "value", entry)
    return version_number(name) if isinstance(name, str) and is_version_name(name) else 0


def log_names_skipped(context: dg.OpExecutionContext | dg.AssetExecutionContext, version: Version) -> None:
    """Say in the run's log (what the UI shows) when a version was numbered past names the registry lost."""
    skipped = version.meta.get("names_skipped")
    if skipped:
        context.log.warning(
            f"{version.stream}: {skipped['from']}..{skipped['to']} were given before to versions this registry "
            f"does not hold (restored from an older backup?), so this version is {version.name}: no name means "
            "two models"
        )
