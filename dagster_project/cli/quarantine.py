"""`streamfit quarantine list|show|replay`: batches a `quarantine` quality policy set aside.

The stream keeps training past a quarantined batch; an operator can read why it failed and, once
satisfied, train it into the model on top of the head, exactly once.
"""

from __future__ import annotations

import os

import click

from dagster_project.cli.common import (
    bootstrap_option,
    dagster_instance,
    echo_json,
    operator_name,
    registry,
    stream_argument,
    stream_spec,
)


@click.group()
def quarantine() -> None:
    """Batches set aside by a data-quality quarantine policy."""


@quarantine.command("list")
@stream_argument
def quarantine_list(stream: str) -> None:
    """Every quarantined batch with its failure summary and replay state."""
    from dagster_project.quality.quarantine import QuarantineStore

    entries = QuarantineStore().list(stream)
    if not entries:
        stream_spec(stream)  # a misspelt name is not "nothing quarantined": the known streams are named
        click.echo(f"{stream}: no quarantined batches")
    for entry in entries:
        meta = entry.meta
        replayed = f"replayed by {meta['replayed_by']['version']}" if meta.get("replayed_by") else "not replayed"
        summary = meta["validation"].get("failed_expectations")
        click.echo(f"{entry.id}  rows {meta['rows']}  failed expectations {summary}  {replayed}")


@quarantine.command("show")
@stream_argument
@click.argument("quarantine_id")
def quarantine_show(stream: str, quarantine_id: str) -> None:
    """The validation result of one quarantined batch."""
    from dagster_project.quality.quarantine import QuarantineError, QuarantineStore

    try:
        entry = QuarantineStore().get(stream, quarantine_id)
    except QuarantineError as exc:
        raise click.ClickException(str(exc)) from exc
    echo_json(entry.meta)


@quarantine.command("replay")
@stream_argument
@click.argument("quarantine_id")
@click.option("--force", is_flag=True, help="Train it even if it still fails its checks.")
@bootstrap_option
def quarantine_replay(stream: str, quarantine_id: str, force: bool, bootstrap: str | None) -> None:
    """Train a quarantined batch on top of the head, exactly once (a windowed model reads the rest of
    its window back from Kafka)."""
    from dagster_project.kafka.io import BrokerUnavailable
    from dagster_project.kafka.settings import KafkaSettings
    from dagster_project.orchestration.champion_events import record_champion_change
    from dagster_project.quality.quarantine import QuarantineError, QuarantineStore
    from dagster_project.quality.replay import replay_quarantined
    from dagster_project.registry.store import RegistryError

    spec = stream_spec(stream)
    try:  # only a windowed model's refit reads from the broker; without one configured it says so if it must
        settings = KafkaSettings.from_env(bootstrap)
    except RuntimeError:
        settings = None
    instance = _dagster_instance()
    try:
        store = registry()
        version = replay_quarantined(
            store,
            QuarantineStore(),
            spec,
            quarantine_id,
            operator_name(),
            force,
            settings,
            number_after=_highest_issued(instance, stream),
        )
    except (QuarantineError, RegistryError, BrokerUnavailable, ValueError) as exc:
        raise click.ClickException(f"{stream}: {quarantine_id} was not replayed: {exc}") from exc
    if instance is not None:  # as a run's registration is: no later version takes its name after a restore
        import dagster as dg

        event = dg.AssetMaterialization(
            [stream, "model_version"], metadata={"version": version.name, "replay": quarantine_id}
        )
        instance.report_runless_asset_event(event)
        instance.dispose()
    click.echo(f"{stream}: {quarantine_id} trained into {version.name}")
    # The stream's first version is named champion as it registers: the Dagster UI is told, as by a run.
    record_champion_change(
        store,
        stream,
        version.name,
        f"the stream's first version, registered by `streamfit quarantine replay` of {quarantine_id}",
        operator_name(),
        lambda line: click.echo(line, err=True),
    )


def _dagster_instance():
    """The Dagster instance in DAGSTER_HOME, or None without one (the replay then knows only the
    registry's names: after a restore it could give a lost version's name again)."""
    if not os.environ.get("DAGSTER_HOME"):
        return None
    return dagster_instance()


def _highest_issued(instance, stream: str) -> int:
    if instance is None:
        return 0
    from dagster_project.orchestration.issued_names import highest_issued

    return highest_issued(instance, stream)
