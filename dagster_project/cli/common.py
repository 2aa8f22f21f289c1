"""What every `streamfit` command group shares, defined once so the groups cannot drift apart.

The --bootstrap option, Kafka settings, a stream's spec, the model registry and the operator's
name all come from here. Heavy libraries are imported inside the functions, so that importing the
CLI (for `streamfit --help`, say) stays cheap.
"""

from __future__ import annotations

import getpass
import os
from typing import TYPE_CHECKING, Any

import click

from dagster_project.kafka.settings import BOOTSTRAP_ENV, KafkaSettings

if TYPE_CHECKING:
    from dagster_project.registry.store import ModelRegistry
    from dagster_project.spec import StreamSpec

OPERATOR_ENV = "STREAMFIT_OPERATOR"

bootstrap_option = click.option(
    "--bootstrap", envvar=BOOTSTRAP_ENV, default=None, help=f"Kafka bootstrap address (default: ${BOOTSTRAP_ENV})."
)


def kafka_settings(bootstrap: str | None) -> KafkaSettings:
    """Settings for `bootstrap`, else $STREAMFIT_KAFKA_BOOTSTRAP; no broker configured is a one-line error."""
    try:
        return KafkaSettings.from_env(bootstrap)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc


def stream_spec(name: str) -> StreamSpec:
    """The stream's spec, or a one-line error listing the known streams."""
    from dagster_project.spec import get_spec

    try:
        return get_spec(name)
    except (KeyError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc.args[0])) from exc


def registry() -> ModelRegistry:
    """The model registry the commands read and write ($STREAMFIT_REGISTRY: filesystem or mlflow)."""
    from dagster_project.registry.backends import registry_from_env

    return registry_from_env()


def operator_name() -> str:
    """Who is acting, for the audit trail: $STREAMFIT_OPERATOR, else the login user."""
    name = os.environ.get(OPERATOR_ENV, "").strip() or os.environ.get("USER")
    if name:
        return name
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no $USER and no passwd entry (a container with an arbitrary uid)
        return f"uid {os.getuid()}"


def echo_json(data: Any) -> None:
    """Print `data` as indented JSON."""
    import orjson

    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
