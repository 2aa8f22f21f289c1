"""`streamfit models list|show|promote|rollback`: the registry's versions and its champion.

Promotion and rollback are the operator's override of the automatic promotion gate; both are
recorded in the champion history with the operator's name, and a change of champion materializes
the `champion` asset in the Dagster instance in DAGSTER_HOME, as a run's change does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from dagster_project.cli.common import echo_json, operator_name, registry, stream_argument

if TYPE_CHECKING:
    from dagster_project.registry.store import ModelRegistry


@click.group()
def models() -> None:
    """Registered versions and the champion."""


@models.command("list")
@stream_argument
def models_list(stream: str) -> None:
    """Every version with its offsets and metrics; broken entries are flagged with the fix."""
    from dagster_project.registry.store import BrokenVersion, RegistryError

    store = registry()
    try:
        champion = store.champion(stream)
    except RegistryError as exc:
        champion = None
        click.echo(f"! champion alias: {exc}", err=True)
    valid, broken = store.scan(stream)
    if not valid and not broken:
        raise click.ClickException(
            f"{stream}: no version registered in {store!r}; "
            "check the stream name, STREAMFIT_HOME and STREAMFIT_REGISTRY"
        )
    rows = [(v.number, v) for v in valid] + [(b.number, b) for b in broken]
    for _, version in sorted(rows, key=lambda row: row[0]):
        if isinstance(version, BrokenVersion):
            click.echo(f"! {version.name:>5}  BROKEN: {version.error}")
            continue
        mark = "*" if version.name == champion else " "
        click.echo(
            f"{mark} {version.name:>5}  parent {version.parent or '-':>5}  "
            f"learned {version.meta.get('offsets', {}).get('learned')}"
            f"  metrics {version.meta.get('metrics', {})}"
        )


@models.command("show")
@stream_argument
@click.argument("version")
def models_show(stream: str, version: str) -> None:
    """One version's meta.json (offsets, metrics, parity, profile)."""
    from dagster_project.registry.store import RegistryError

    store = registry()
    try:
        meta = store.get(stream, version).meta
        if "profile" not in meta:  # MLflow keeps the profile as an artifact of the version's run
            meta = {**meta, "profile": store.profile(stream, version)}
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    echo_json(meta)


@models.command("promote")
@stream_argument
@click.argument("version")
@click.option("--reason", default="manual promotion", show_default=True)
def models_promote(stream: str, version: str, reason: str) -> None:
    """Make VERSION the champion now (atomic; recorded in the champion history)."""
    from dagster_project.registry.store import MANUAL_REASON, RegistryError

    store = registry()
    try:
        store.get(stream, version)  # an unknown name is named as such
        problem = store.unservable(stream, version)
        if problem is not None:  # scorers would refuse it and keep serving the current champion
            raise RegistryError(
                f"{stream} {version} cannot be served, so the champion stays {store.champion(stream) or '-'}: "
                f"{problem}. Promote another version (`streamfit models list {stream}`)"
            )
        moved = store.set_champion(stream, version, reason=MANUAL_REASON + reason, evidence={"by": operator_name()})
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    if not moved:
        click.echo(
            f"{stream}: {version} is already the champion; nothing changed (no champion-history entry: a later "
            "rollback or drift check still compares it with the version it replaced). Scorers that refused it "
            "check it again now"
        )
        return
    click.echo(f"{stream}: champion is now {version}")
    _record(store, stream, version, "chosen by hand: `streamfit models promote`")


@models.command("rollback")
@stream_argument
@click.option("--reason", default="manual rollback", show_default=True)
def models_rollback(stream: str, reason: str) -> None:
    """Return the champion to the last good one before it (scorers follow within seconds)."""
    from dagster_project.registry.store import RegistryError

    try:
        store = registry()
        version = store.rollback(stream, reason=reason, evidence={"by": operator_name()})
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{stream}: rolled back; champion is now {version}")
    _record(store, stream, version, "chosen by hand: `streamfit models rollback`")


def _record(store: ModelRegistry, stream: str, version: str, decision: str) -> None:
    """Materialize the champion asset in DAGSTER_HOME's instance: the Dagster UI went on naming the old one."""
    from dagster_project.orchestration.champion_events import record_champion_change

    record_champion_change(store, stream, version, decision, operator_name(), lambda line: click.echo(line, err=True))
