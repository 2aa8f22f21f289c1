"""`streamfit labels show` with nothing to show: a misspelt stream is named as unknown."""

from __future__ import annotations

from dagster_project.spec import StreamSpec


def test_labels_show_of_a_misspelt_stream_names_the_known_streams(cli, spec: StreamSpec) -> None:
    """`labels show paymnets` said "no joined labels yet (run `streamfit labels join paymnets`)":
    advice that then fails, for a stream that does not exist."""
    known = cli("labels", "show", spec.name)
    typo = cli("labels", "show", spec.name + "x")

    assert known.exit_code == 0 and f"{spec.name}: no joined labels yet" in known.output
    assert typo.exit_code == 1, typo.output
    assert "labels join" not in typo.output
    assert f"unknown stream '{spec.name}x'; known streams: ['{spec.name}']" in typo.output
