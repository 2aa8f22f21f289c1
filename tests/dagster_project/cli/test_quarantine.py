"""`streamfit quarantine list` with nothing to show: a misspelt stream is named as unknown; a replay
that names the champion tells the Dagster instance."""

from __future__ import annotations

import dagster as dg

from dagster_project.cli.common import OPERATOR_ENV
from dagster_project.quality.quarantine import QuarantineStore
from dagster_project.registry.store import FIRST_VERSION_REASON
from dagster_project.spec import StreamSpec
from tests.helpers import hand_batch


def test_quarantine_list_of_a_misspelt_stream_names_the_known_streams(cli, spec: StreamSpec) -> None:
    """`quarantine list paymnets` said "paymnets: no quarantined batches": at 3 a.m. that reads as
    "nothing was set aside" when nothing was even looked for."""
    known = cli("quarantine", "list", spec.name)
    typo = cli("quarantine", "list", spec.name + "x")

    assert known.exit_code == 0 and f"{spec.name}: no quarantined batches" in known.output
    assert typo.exit_code == 1, typo.output
    assert "no quarantined batches" not in typo.output
    assert f"unknown stream '{spec.name}x'; known streams: ['{spec.name}']" in typo.output


def test_a_replay_that_registers_the_first_version_materializes_the_champion(
    cli, spec: StreamSpec, registry, instance, monkeypatch
) -> None:
    """A replay into a stream with no version yet names its version champion (the first version's rule),
    outside any run: the Dagster UI showed no champion. A replay onto a head moves no champion."""
    monkeypatch.setenv(OPERATOR_ENV, "erin")
    store = QuarantineStore()
    first = store.save(hand_batch(spec, 60, start=0, seed=1), {"failed_expectations": 1}, "run-q1")

    result = cli("quarantine", "replay", spec.name, first, "--force")

    assert (result.exit_code, result.stderr) == (0, ""), result.output
    assert registry.champion(spec.name) == "v1"
    latest = instance.get_latest_materialization_event(dg.AssetKey([spec.name, "champion"]))
    metadata = {key: value.value for key, value in latest.asset_materialization.metadata.items()}
    assert metadata == {
        "champion": "v1",
        "previous": "none",
        "reason": FIRST_VERSION_REASON,
        "decision": f"the stream's first version, registered by `streamfit quarantine replay` of {first}",
        "by": "erin",
    }

    second = store.save(hand_batch(spec, 60, start=60, seed=2), {"failed_expectations": 1}, "run-q2")
    result = cli("quarantine", "replay", spec.name, second, "--force")
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    assert registry.head(spec.name).name == "v2" and registry.champion(spec.name) == "v1"
    key = dg.AssetKey([spec.name, "champion"])
    assert len(instance.fetch_materializations(key, limit=10).records) == 1, "the champion did not move"
