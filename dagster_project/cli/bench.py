"""`streamfit bench`: run the benchmark suite from the source tree.

The benchmarks are not part of the installed package, so this only checks that they are there and
hands over to `python -m benchmarks` with the same options.
"""

from __future__ import annotations

import click


@click.command()
@click.option("--quick", "size", flag_value="quick", default=True, help="CI size, under 2 minutes (the default).")
@click.option("--full", "size", flag_value="full", help="The published size, about 10 minutes.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Directory for latest.json/.txt/.png.")
@click.option("--sections", default=None, help="Comma-separated: training,inference,quality,cost,freshness.")
@click.option("--bootstrap", default=None, help="Benchmark this broker instead of a fresh embedded one.")
@click.option("--no-chart", is_flag=True, help="Skip the PNG chart.")
def bench(size: str, out: str | None, sections: str | None, bootstrap: str | None, no_chart: bool) -> None:
    """Measure training, freshness, inference, quality and cost in one run (benchmarks/README.md)."""
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
