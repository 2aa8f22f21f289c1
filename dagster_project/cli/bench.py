"""`streamfit bench`: run the benchmark suite from the source tree.

The benchmarks are not part of the installed package, so this only checks that they are there and
hands over to `python -m benchmarks` with the same options.
"""

from __future__ import annotations

import click

# What `python -m benchmarks --sections` takes (benchmarks/run.py's SECTIONS, which a test compares):
# written out here because the benchmarks are not installed, and `--help` must not need them.
DEFAULT_SECTIONS = ("training", "inference", "quality", "cost", "freshness", "scale_out")
ON_REQUEST_SECTIONS = ("brokers", "sustained")  # Tansu vs Apache Kafka; minutes of paced load per rate


@click.command()
@click.option("--quick", "size", flag_value="quick", default=True, help="CI size, under 2 minutes (the default).")
@click.option("--full", "size", flag_value="full", help="The published size, about 10 minutes.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Directory for latest.json/.txt/.png.")
@click.option(
    "--sections",
    default=None,
    help=f"Comma-separated, of {','.join(DEFAULT_SECTIONS)} (the default run) and {','.join(ON_REQUEST_SECTIONS)} "
    "(on request only).",
)
@click.option("--bootstrap", default=None, help="Benchmark this broker instead of a fresh embedded one.")
@click.option("--no-chart", is_flag=True, help="Skip the PNG chart.")
def bench(size: str, out: str | None, sections: str | None, bootstrap: str | None, no_chart: bool) -> None:
    """Measure training, freshness, inference, quality, cost and scale-out in one run (benchmarks/README.md).

    `python -m benchmarks` takes these options and more: --smoke (the test suite's size), --broker
    kafka, --sustained-rates and --sustained-seconds.
    """
    import subprocess
    import sys

    from dagster_project.dev.services import PROJECT_ROOT

    if not (PROJECT_ROOT / "benchmarks" / "run.py").exists():
        raise click.ClickException(f"the benchmarks ship with the source tree; none found in {PROJECT_ROOT}")
    args = [sys.executable, "-m", "benchmarks", f"--{size}"]
    for flag, value in (("--out", out), ("--sections", sections), ("--bootstrap", bootstrap)):
        if value:
            args += [flag, str(value)]
    if no_chart:
        args.append("--no-chart")
    raise SystemExit(subprocess.call(args, cwd=PROJECT_ROOT))
