"""What every `streamfit` command group shares, defined once so the groups cannot drift apart.

The --bootstrap option, Kafka settings, a stream's spec, the model registry and the operator's
name all come from here. Heavy libraries are imported inside the functions, so that importing the
CLI (for `streamfit --help`, say) stays cheap.
"""

from __future__ import annotations

import errno
import getpass
import math
import os
import re
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


def cannot_listen(what: str, addr: str, port: int, exc: OSError, option: str = "--port") -> click.ClickException:
    """A one-line error for a port a server cannot bind, naming the option that picks another when it is taken."""
    message = f"cannot serve {what} on {addr}:{port}: {exc.strerror or exc}"
    if exc.errno == errno.EADDRINUSE:
        message += f" (another process listens there: stop it, or pick another port with {option})"
    return click.ClickException(message)


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


def _stream_name(ctx: click.Context, param: click.Parameter, name: str) -> str:
    """A stream name as specs have it: lowercase letters, digits and '_' (never a path)."""
    from dagster_project.spec import STREAM_NAME_PATTERN

    if not re.fullmatch(STREAM_NAME_PATTERN, name):
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise click.BadParameter(
            f"{shown!r} is not a stream name: a lowercase letter, then up to 62 lowercase letters, digits or '_'"
        )
    return name


stream_argument = click.argument("stream", callback=_stream_name)


def stream_names(ctx: click.Context, param: click.Parameter, names: tuple[str, ...]) -> tuple[str, ...]:
    """A repeatable option's stream names, each checked as `stream_argument` checks one."""
    return tuple(_stream_name(ctx, param, name) for name in names)


PORT = click.IntRange(0, 65535)  # a TCP port (0: a free one)


class PositiveSeconds(click.ParamType):
    """A duration in seconds above zero; `nan` and `inf` are refused (click's FloatRange lets nan through)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds <= 0:
            self.fail(f"{value!r} must be a finite number of seconds above 0", param, ctx)
        return seconds


class PositiveRate(PositiveSeconds):
    """Events per second above zero, finite."""

    name = "rate"


def dagster_instance() -> Any:
    """The Dagster instance in DAGSTER_HOME, a missing variable of its dagster.yaml named in one line."""
    from dagster_project.instance import open_instance

    try:
        return open_instance()
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
