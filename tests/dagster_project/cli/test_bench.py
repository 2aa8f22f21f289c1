"""`streamfit bench --help` against what `python -m benchmarks`, which it hands over to, accepts."""

from __future__ import annotations

from click.testing import CliRunner

from benchmarks import run
from dagster_project.cli import main


def test_bench_help_lists_every_section_python_m_benchmarks_takes() -> None:
    """It listed five of the eight (no scale_out, brokers or sustained), which `bench` passes on all the same."""
    result = CliRunner().invoke(main, ["bench", "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # click wraps the help
    default = ",".join(run.DEFAULT_SECTIONS)
    on_request = ",".join(s for s in run.SECTIONS if s not in run.DEFAULT_SECTIONS)
    assert f"of {default} (the default run) and {on_request} (on request only)" in text
    assert "`python -m benchmarks` takes these options and more: --smoke" in text  # bench has no --smoke
