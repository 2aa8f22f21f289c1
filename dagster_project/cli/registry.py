"""`streamfit registry migrate --to mlflow`: copy a filesystem registry into MLflow.

Every version keeps its name (`v<N>`), parent, offsets, checksums, creation time and derived-feature
state (`features.json`); the champion alias, the champion history, the decisions, a halt, a pending
offset reset (with the feature state a quarantine skip carries) and the applied resets are copied
as they are. The copy is idempotent: versions MLflow already holds (same name, same
checksums) are left alone and records are written under keys made from their position, so an
interrupted migration is simply run again. Stop training first (the Dagster daemon, or the
sensors), migrate, then set STREAMFIT_REGISTRY=mlflow everywhere.
"""

from __future__ import annotations

from pathlib import Path

import click

from dagster_project.cli.common import stream_names


@click.group()
def registry() -> None:
    """Model registry backends (STREAMFIT_REGISTRY=filesystem|mlflow)."""


@registry.command("migrate")
@click.option("--to", "target", type=click.Choice(["mlflow"]), required=True, help="The backend to copy into.")
@click.option(
    "--from-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The filesystem registry to copy (default: $STREAMFIT_HOME/registry).",
)
@click.option(
    "--mlflow-uri",
    default=None,
    help="The MLflow tracking server (default: $STREAMFIT_MLFLOW_URI, else $MLFLOW_TRACKING_URI).",
)
@click.option(
    "--stream",
    "streams",
    multiple=True,
    callback=stream_names,
    help="Copy only this stream (repeatable; default: every stream).",
)
def migrate(target: str, from_root: Path | None, mlflow_uri: str | None, streams: tuple[str, ...]) -> None:
    """Copy a filesystem registry into MLflow, keeping version names, champion and history."""
    from dagster_project.registry.backends import (
        MLFLOW_NAMESPACE_ENV,
        MLFLOW_TRACKING_URI_ENV,
        MLFLOW_URI_ENV,
        registry_from_env,
    )
    from dagster_project.registry.store import FilesystemRegistry, RegistryError
    from dagster_project.settings import registry_root

    root = from_root or registry_root()
    source = FilesystemRegistry(root)
    held = source.streams()
    chosen = list(streams) or held
    if not chosen:
        raise click.ClickException(f"{root} holds no stream to migrate")
    missing = [stream for stream in chosen if stream not in held]
    if missing:
        raise click.ClickException(
            f"{root} holds no stream {', '.join(missing)} (it holds: {', '.join(held) or 'none'}); "
            "check --stream and --from-root"
        )
    try:
        destination = registry_from_env(root, backend=target, mlflow_uri=mlflow_uri)
    except RegistryError as exc:
        raise click.ClickException(f"{exc} (or pass --mlflow-uri; {MLFLOW_URI_ENV}/{MLFLOW_TRACKING_URI_ENV})") from exc
    for stream in chosen:
        _migrate_stream(source, destination, stream)
    # Into a namespace, every process must name it too: without it they read the bare names, find no
    # stream, and train from scratch beside the copy.
    namespace = f" and {MLFLOW_NAMESPACE_ENV}={destination.namespace}" if destination.namespace else ""
    click.echo(
        f"done: set STREAMFIT_REGISTRY=mlflow, MLFLOW_TRACKING_URI={destination.tracking_uri}{namespace} everywhere"
    )


def _migrate_stream(source, destination, stream: str) -> None:
    from dagster_project.registry.store import ESTIMATOR_FILE, ONNX_FILE

    valid, broken = source.scan(stream)
    if broken:
        names = ", ".join(f"{b.name} ({b.error})" for b in broken)
        raise click.ClickException(f"{stream}: fix or move aside the broken versions first: {names}")
    copied = present = 0
    for version in valid:
        onnx_bytes = source.read_verified(stream, version.name, ONNX_FILE)
        estimator_bytes = source.read_verified(stream, version.name, ESTIMATOR_FILE)
        feature_state = source.load_feature_state(stream, version.name)  # derived features continue from it
        outcome = destination.import_version(stream, version, onnx_bytes, estimator_bytes, feature_state)
        copied += outcome == "copied"
        present += outcome == "present"
    history, decisions = source.champion_history(stream), source.decisions(stream)
    destination.import_records(
        stream,
        history=history,
        decisions=decisions,
        halt=source.halt(stream),
        pending_reset=source.pending_offset_reset(stream),
        applied_resets=source.applied_offset_resets(stream),
    )
    champion = source.champion(stream)
    if champion is not None:
        destination.import_champion(stream, champion)
    # Check the copy against the source before saying so.
    copy = destination.versions(stream)
    if [(v.name, v.parent, v.learned, v.meta["sha256"]) for v in copy] != [
        (v.name, v.parent, v.learned, v.meta["sha256"]) for v in valid
    ]:
        raise click.ClickException(f"{stream}: the copy in MLflow differs from {source.root / stream}; run again")
    if destination.champion(stream) != champion or len(destination.champion_history(stream)) != len(history):
        raise click.ClickException(f"{stream}: the champion or its history differs after the copy; run again")
    numbers = {v.name: v.meta["mlflow"]["model_version"] for v in copy}
    renumbered = [f"{name}=MLflow {n}" for name, n in numbers.items() if name != f"v{n}"]
    registered = destination.registered_model(stream)  # `<namespace>.<stream>` in a namespace
    click.echo(
        f"{stream}: {len(valid)} versions ({copied} copied, {present} already there), champion {champion or '-'}, "
        f"{len(history)} champion changes, {len(decisions)} decisions -> registered model {registered!r}"
        + (f"; MLflow numbers differ for {', '.join(renumbered)}" if renumbered else "")
    )
