"""The highest version name this Dagster deployment has given a stream.

A registry restored from an older backup numbers new versions from its own head, so without this the
first version after the restore took the name of a lost one: predictions, decisions and MLflow links
made before the restore named a model that was no longer the one under that name. Every run that
registers a version materializes `[stream, "model_version"]` with the version's name, so the highest
recent materialization is the highest name given. `streamfit quarantine replay`, which registers
outside a run, reads and reports it through the instance in DAGSTER_HOME when that is set.
"""

from __future__ import annotations

import dagster as dg

from dagster_project.names import is_version_name, version_number
from dagster_project.registry.store import Version

RECENT = 100  # materializations read: a late one (a retried run re-materializing its earlier version) is among them


def highest_issued(instance: dg.DagsterInstance, stream: str) -> int:
    """The highest version number a run registered for `stream` (0: none recorded).

    The highest among the recent materializations, not just the newest: a run that registered v5 and
    failed after it is retried once v6 exists, and its retry materializes v5 again, last. The newest
    materialization is also kept by Dagster when its run is deleted (retention)."""
    key = dg.AssetKey([stream, "model_version"])
    events = [record.event_log_entry for record in instance.fetch_materializations(key, limit=RECENT).records]
    events.append(instance.get_latest_materialization_event(key))
    return max((_number(event) for event in events if event is not None), default=0)


def _number(event: dg.EventLogEntry) -> int:
    materialization = event.asset_materialization
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
