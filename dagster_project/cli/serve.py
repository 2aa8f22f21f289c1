"""`streamfit serve`: the scorer process for one stream.

It consumes <stream>.events, scores with the registry's champion (hot-swapped when the champion
changes) and writes <stream>.predictions, with an HTTP API beside it. The service itself lives in
`dagster_project.serving.scorer`; this module only parses options and reports start-up errors.
"""

from __future__ import annotations

import click

from dagster_project.cli.common import (
    PORT,
    bootstrap_option,
    cannot_listen,
    kafka_settings,
    stream_argument,
    stream_spec,
)


@click.command()
@stream_argument
@click.option("--port", type=PORT, default=8080, show_default=True, help="HTTP port (0: a free one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP address (0.0.0.0 for every interface).")
@bootstrap_option
@click.option("--group", default=None, help="Consumer group (default: streamfit-<stream>-scorers).")
@click.option(
    "--max-poll-records",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Events per poll batch: the most a crash can score twice.",
)
@click.option(
    "--delivery",
    type=click.Choice(["exactly-once", "at-least-once", "auto"]),
    default=None,
    help="exactly-once: each poll batch is a Kafka transaction (predictions, dead letters and offsets); "
    "at-least-once: a crash repeats at most one batch; auto: exactly-once where the broker's transactions "
    "work (Apache Kafka), at-least-once on Tansu. Default: $STREAMFIT_SCORER_DELIVERY, else auto.",
)
@click.option(
    "--client",
    type=click.Choice(["auto", "kafka-python", "confluent"]),
    default=None,
    help="The Kafka client that consumes the events: kafka-python, or confluent (confluent-kafka: records "
    "decoded in C, cooperative rebalancing); auto: confluent when confluent-kafka is installed, else kafka-python. "
    "Default: $STREAMFIT_SCORER_CLIENT, else auto.",
)
@click.option(
    "--replica-id",
    default=None,
    help="This replica's name in its transactional id (streamfit-<stream>-scorer-<replica id>): keep it across "
    "restarts of the same replica, never share it between live replicas. Default: $STREAMFIT_SCORER_REPLICA_ID, "
    "else <hostname>-<port>.",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1),
    default=1024 * 1024,
    show_default=True,
    help="Largest POST /predict body.",
)
@click.option(
    "--max-rows",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Most rows per POST /predict or V2 infer request.",
)
@click.option(
    "--body-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds a request body may take to arrive in full (408 and the connection closed after).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Concurrent HTTP connections; requests beyond get 503.",
)
@click.option(
    "--keep-alive",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Seconds an idle keep-alive connection stays open.",
)
@click.option(
    "--http-processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes serving the HTTP API on the one port. 1: a thread beside the Kafka loop. N > 1: N processes "
    "serve HTTP only (each hot-swaps from the registry; /metrics counts all; --max-connections is per process) "
    "and this one runs the Kafka loop. Not for streams with derived features.",
)
def serve(
    stream: str,
    port: int,
    host: str,
    bootstrap: str | None,
    group: str | None,
    max_poll_records: int,
    delivery: str | None,
    client: str | None,
    replica_id: str | None,
    max_body_bytes: int,
    max_rows: int,
    body_timeout: float,
    max_connections: int,
    keep_alive: int,
    http_processes: int,
) -> None:
    """Score <stream>.events with the champion into <stream>.predictions; HTTP /predict, /v2 (Open
    Inference Protocol), /healthz, /livez, /readyz, /metrics.

    Follows the registry's champion alias ($STREAMFIT_HOME/registry, or MLflow's `models:/<stream>@champion`
    with STREAMFIT_REGISTRY=mlflow) and hot-swaps it. Set
    STREAMFIT_SCORER_TOKEN to require `Authorization: Bearer <token>` for inference. SIGTERM or
    Ctrl-C finishes the current batch, commits and leaves the group. Exits 1 if another process
    takes this replica's transactional id (exactly-once): two live replicas must not share --replica-id.
    """
    import logging
    import shutil
    import tempfile

    from dagster_project.kafka.fast_transactions import ClientCallsStuck
    from dagster_project.kafka.io import BrokerUnavailable
    from dagster_project.serving.scorer import HttpPortUnavailable, ScorerFenced, build_service, scorer_group

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # its INFO lines speak of a server process
    spec = stream_spec(stream)
    shared_metrics = None
    if http_processes > 1:  # before any metric exists: every process writes its samples here
        from dagster_project.serving.metrics import enable_multiprocess

        shared_metrics = tempfile.mkdtemp(prefix=f"streamfit-serve-{stream}-")
        enable_multiprocess(shared_metrics)
    try:
        try:
            service = build_service(
                spec,
                kafka_settings(bootstrap),
                host=host,
                port=port,
                group_id=group,
                max_poll_records=max_poll_records,
                delivery=delivery,
                client=client,
                replica_id=replica_id,
                max_body_bytes=max_body_bytes,
                max_rows=max_rows,
                body_timeout_s=body_timeout,
                max_connections=max_connections,
                keep_alive_s=keep_alive,
                http_processes=http_processes,
            )
        except HttpPortUnavailable as exc:  # busy (another scorer?) or not ours to bind: name --port
            raise cannot_listen("HTTP", exc.host, exc.port, exc.error) from exc
        except (KeyError, FileNotFoundError, ValueError, BrokerUnavailable, OSError) as exc:
            raise click.ClickException(exc.args[0] if isinstance(exc, KeyError) else str(exc)) from exc
        try:
            service.start()
        except RuntimeError as exc:  # an HTTP process did not start (its log says why)
            service.close()
            raise click.ClickException(str(exc)) from exc
        scorer = service.scorer
        mode = scorer.delivery.mode.replace("_", "-")
        if scorer.delivery.exactly_once:
            mode += f" as {scorer.transactional_id}"
        click.echo(f"delivery {mode}: {scorer.delivery.reason}; consuming with {scorer.client}")
        click.echo(
            f"serving {stream}: {spec.events_topic} -> {spec.predictions_topic} in group "
            f"{group or scorer_group(spec)}; HTTP on {service.url}"
        )
        click.echo(f"champion read from {scorer.watcher.registry.address}")
        try:
            service.serve_until_signalled()
        except ScorerFenced as exc:
            raise click.ClickException(f"fenced: {exc}") from exc
        except ClientCallsStuck as exc:
            raise click.ClickException(f"scorer stopped: {exc}") from exc
        click.echo("scorer stopped")
    finally:
        if shared_metrics is not None:
            shutil.rmtree(shared_metrics, ignore_errors=True)
