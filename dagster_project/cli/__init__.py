"""The `streamfit` command line: the click group and its command groups, one module each.

Importing this package is cheap: every command imports what it needs (Dagster, scikit-learn,
Great Expectations, Kafka clients) when it runs. Helpers the groups share are in `common`.
"""

from __future__ import annotations

import click

from dagster_project.cli import (
    batches,
    bench,
    broker,
    check,
    code_server,
    demo,
    dlq,
    exporter,
    instance,
    labels,
    models,
    offsets,
    produce,
    quarantine,
    registry,
    serve,
)


class _StreamfitGroup(click.Group):
    """Registry errors (a damaged file, a refused operation) end as one line naming the fix, never a traceback."""

    def invoke(self, ctx: click.Context):
        from dagster_project.registry.store import RegistryError

        try:
            return super().invoke(ctx)
        except RegistryError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_StreamfitGroup)
def main() -> None:
    """Streamfit: keep models learning from Kafka, orchestrated by Dagster."""


main.add_command(broker.broker)
main.add_command(produce.produce)
main.add_command(demo.demo)
main.add_command(offsets.offsets)
main.add_command(exporter.exporter)
main.add_command(models.models)
main.add_command(registry.registry)
main.add_command(serve.serve)
main.add_command(batches.batches)
main.add_command(quarantine.quarantine)
main.add_command(dlq.dlq)
main.add_command(labels.labels)
main.add_command(bench.bench)
main.add_command(code_server.code_server)
main.add_command(instance.instance)
main.add_command(check.check)
