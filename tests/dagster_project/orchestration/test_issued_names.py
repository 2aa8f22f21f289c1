"""The highest version name a Dagster instance has seen registered for a stream."""

from __future__ import annotations

import dagster as dg

from dagster_project.orchestration.issued_names import highest_issued


def _materialize(instance: dg.DagsterInstance, stream: str, version: str) -> None:
    event = dg.AssetMaterialization([stream, "model_version"], metadata={"version": version})
    instance.report_runless_asset_event(event)


def test_the_highest_recent_name_counts_not_the_newest(instance: dg.DagsterInstance) -> None:
    """A run that registered v5 and failed after it is retried once v6 exists; the retry materializes
    v5 again, last. Reading only the newest, a restore would have given v6 a second time."""
    assert highest_issued(instance, "clicks") == 0
    for version in ("v3", "v6", "v5"):
        _materialize(instance, "clicks", version)
    _materialize(instance, "other", "v40")
    assert highest_issued(instance, "clicks") == 6 and highest_issued(instance, "other") == 40
