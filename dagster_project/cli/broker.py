"""`streamfit broker`: a local Kafka to develop and demo against.

By default the embedded Tansu broker (in memory, starts at once); with --kafka an Apache Kafka
KRaft cluster of --nodes brokers, for what only real Kafka does (replication, a node failing).
Both print the same export line and stop everything they started on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import signal
import time

import click
from click.core import ParameterSource

from dagster_project.cli.common import PORT
from dagster_project.kafka.settings import BOOTSTRAP_ENV


@click.command()
@click.option(
    "--port",
    type=PORT,
    default=None,
    help="Port to listen on (default: a free one); with --kafka --nodes N, the nodes take N ports from it.",
)
@click.option("--kafka", is_flag=True, help="Start an Apache Kafka KRaft cluster instead of the embedded broker.")
@click.option(
    "--nodes", type=click.IntRange(min=1), default=1, show_default=True, help="Brokers in the --kafka cluster."
)
@click.pass_context
def broker(ctx: click.Context, port: int | None, kafka: bool, nodes: int) -> None:
    """Run the embedded Kafka-protocol broker until Ctrl-C.

    With --kafka, an Apache Kafka KRaft cluster of --nodes brokers instead (needs Java and Maven;
    the first run downloads the Kafka jars).
    """
    if not kafka and ctx.get_parameter_source("nodes") is not ParameterSource.DEFAULT:
        raise click.UsageError("--nodes applies to an Apache Kafka cluster only: add --kafka")
    if port and port + nodes - 1 > 65535:
        raise click.UsageError(f"--port {port} leaves no room for {nodes} nodes (ports {port}..{port + nodes - 1})")

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # before starting, so TERM and Ctrl-C both stop what started
    try:
        if kafka:
            _run_kafka_cluster(nodes, port)
        else:
            _run_embedded(port)
    except KeyboardInterrupt:
        pass
    click.echo("broker stopped")


def _run_embedded(port: int | None) -> None:
    """Tansu on `port` until its process exits or Ctrl-C."""
    from dagster_project.kafka.brokers.tansu import EmbeddedBroker

    with EmbeddedBroker(port=port) as running:
        click.echo(f"export {BOOTSTRAP_ENV}={running.bootstrap}")
        click.echo("embedded broker running (in memory: topics are lost when it stops); Ctrl-C stops it")
        while running.process and running.process.poll() is None:
            time.sleep(0.5)


def _run_kafka_cluster(nodes: int, port: int | None = None) -> None:
    """An Apache Kafka KRaft cluster of `nodes` brokers until Ctrl-C; missing Java or Maven is a one-line error."""
    from dagster_project.kafka.brokers.apache import ApacheKafkaCluster, ensure_kafka_jars

    try:
        ensure_kafka_jars(progress=lambda line: click.echo(line, err=True))
        cluster = ApacheKafkaCluster(nodes=nodes, client_port=port)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        cluster.start()
        click.echo(f"export {BOOTSTRAP_ENV}={cluster.bootstrap}")
        click.echo(
            f"Apache Kafka running ({nodes} KRaft node{'s' if nodes > 1 else ''}, "
            f"started in {cluster.startup_seconds:.1f} s); Ctrl-C stops it"
        )
        while True:
            time.sleep(0.5)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        cluster.stop()
