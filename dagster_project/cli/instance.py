"""`streamfit instance`: the Dagster instance Streamfit runs on (DAGSTER_HOME)."""

from __future__ import annotations

import os

import click


@click.group("instance")
def instance() -> None:
    """The Dagster instance in DAGSTER_HOME (its dagster.yaml: SQLite locally, Postgres in production)."""


@instance.command("migrate")
def migrate() -> None:
    """Create or migrate Dagster's tables, then start run retries at the event log's end.

    Run it once before the daemon, webserver and code server start (the compose `init` step). It
    is `dagster instance migrate` plus the run-retry consumer's starting place: without it a run
    that fails before the daemon's first pass is never retried.
    """
    from dagster_project.instance import migrate as migrate_instance

    try:
        migrate_instance(click.echo)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc


@instance.command("prune-runs")
@click.option(
    "--older-than-days",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Delete finished runs created more than this many days ago (default: $STREAMFIT_RUN_RETENTION_DAYS, else 30).",
)
@click.option(
    "--keep-per-job", type=click.IntRange(min=0), default=100, show_default=True, help="Newest runs of each job kept."
)
@click.option("--dry-run", is_flag=True, help="Say what would go, delete nothing.")
def prune_runs(older_than_days: float | None, keep_per_job: int, dry_run: bool) -> None:
    """Delete old finished runs with their event logs, compute logs and outputs (the daily
    `run_retention` schedule does this too).

    What each version learned stays in the registry; runs a halted stream names, runs not finished
    and each job's newest runs are kept.
    """
    from datetime import timedelta

    from dagster_project.cli.common import registry
    from dagster_project.orchestration.retention import halted_runs, retention_days
    from dagster_project.orchestration.retention import prune_runs as prune
    from dagster_project.spec import load_specs_isolated

    if not os.environ.get("DAGSTER_HOME"):
        raise click.ClickException(
            "DAGSTER_HOME is not set: set it to the directory that holds the instance's dagster.yaml"
        )
    if older_than_days is None:
        try:
            older_than_days = retention_days()
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        if older_than_days is None:
            raise click.ClickException(
                "STREAMFIT_RUN_RETENTION_DAYS=0 keeps every run; pass --older-than-days to prune"
            )
    specs, _broken = load_specs_isolated()  # a broken spec file does not stop the pruning; halts are read anyway
    keep = halted_runs(registry(), [spec.name for spec in specs])
    from dagster_project.cli.common import dagster_instance

    with dagster_instance() as opened:
        result = prune(
            opened,
            timedelta(days=older_than_days),
            keep=keep,
            keep_per_job=keep_per_job,
            dry_run=dry_run,
            progress=lambda message: click.echo(message, err=True),
        )
    click.echo(f"runs older than {older_than_days:g} days: {result.summary(dry_run=dry_run)}")
