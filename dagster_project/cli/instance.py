"""`streamfit instance`: the Dagster instance Streamfit runs on (DAGSTER_HOME)."""

from __future__ import annotations

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
