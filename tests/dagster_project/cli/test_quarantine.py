"""`streamfit quarantine list` with nothing to show: a misspelt stream is named as unknown."""

from __future__ import annotations

from dagster_project.spec import StreamSpec


def test_quarantine_list_of_a_misspelt_stream_names_the_known_streams(cli, spec: StreamSpec) -> None:
    """`quarantine list paymnets` said "paymnets: no quarantined batches": at 3 a.m. that reads as
    "nothing was set aside" when nothing was even looked for."""
    known = cli("quarantine", "list", spec.name)
    typo = cli("quarantine", "list", spec.name + "x")

    assert known.exit_code == 0 and f"{spec.name}: no quarantined batches" in known.output
    assert typo.exit_code == 1, typo.output
    assert "no quarantined batches" not in typo.output
    assert f"unknown stream '{spec.name}x'; known streams: ['{spec.name}']" in typo.output
