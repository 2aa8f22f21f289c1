"""`streamfit labels join|produce|show`: live model quality from delayed labels.

Labels arrive after the predictions they grade; the joiner matches the two topics within a window
and writes live accuracy/error per model version next to the registry, where `show` reads it.
"""

from __future__ import annotations

import signal

import click

from dagster_project.cli.common import (
    PORT,
    PositiveRate,
    PositiveSeconds,
    bootstrap_option,
    cannot_listen,
    kafka_settings,
    stream_argument,
    stream_spec,
)


@click.group()
def labels() -> None:
    """Delayed labels: join them with predictions for live accuracy/error per model version."""


@labels.command("join")
@stream_argument
@bootstrap_option
@click.option("--metrics-port", type=PORT, default=None, help="Serve Prometheus metrics on this port (0: a free one).")
@click.option(
    "--metrics-addr", default="127.0.0.1", show_default=True, help="Address for metrics (0.0.0.0: every interface)."
)
@click.option(
    "--window", "window_s", type=PositiveSeconds(), default=None, help="Join window in seconds (default: the spec's)."
)
@click.option("--max-pending", type=click.IntRange(min=1), default=None, help="Most waiting entries (default: spec).")
@click.option(
    "--flush-interval", "flush_interval_s", type=PositiveSeconds(), default=None, help="Seconds between checkpoints."
)
def labels_join(
    stream: str,
    bootstrap: str | None,
    metrics_port: int | None,
    metrics_addr: str,
    window_s: float | None,
    max_pending: int | None,
    flush_interval_s: float | None,
) -> None:
    """Join <stream>.predictions with <stream>.labels until Ctrl-C; live metrics go to the registry.

    Prints one line per checkpoint (joined, pending, evicted, live quality per version). SIGTERM or
    Ctrl-C writes a last checkpoint, commits and leaves the group.
    """
    import logging

    from dagster_project.kafka.io import BrokerUnavailable
    from dagster_project.labels import (
        LabelJoiner,
        LabelStoreError,
        LiveMetricsReader,
        progress_line,
    )
    from dagster_project.settings import registry_root

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = stream_spec(stream)
    reader = LiveMetricsReader(registry_root(), spec.name)

    def report(record: dict) -> None:
        click.echo(progress_line(spec.name, record, reader.refresh()))

    try:
        joiner = LabelJoiner(
            spec,
            kafka_settings(bootstrap),
            registry_root(),
            window_s=window_s,
            max_pending=max_pending,
            flush_interval_s=flush_interval_s,
            on_flush=report,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    where = ""
    if metrics_port is not None:
        try:
            server, _ = joiner.serve_metrics(metrics_port, metrics_addr)
        except OSError as exc:
            raise cannot_listen("metrics", metrics_addr, metrics_port, exc, option="--metrics-port") from exc
        where = f"; metrics on http://{metrics_addr}:{server.server_port}/metrics"

    def handle(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        joiner.stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    click.echo(
        f"joining {spec.predictions_topic} + {spec.labels_topic} in group {joiner.group_id}, "
        f"window {joiner.window_s:g} s -> {joiner.store.path}{where}"
    )
    try:
        joiner.run()
    except (BrokerUnavailable, LabelStoreError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"label joiner stopped after {joiner.checkpoints} checkpoints")


@labels.command("produce")
@stream_argument
@click.option(
    "--source",
    type=click.Choice(["census", "phishing", "sensors", "synthetic"]),
    default=None,
    help="Default: the stream name.",
)
@click.option("--start", type=click.IntRange(min=0), default=0, show_default=True, help="First event of the source.")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="How many labels (default: all).")
@click.option("--rate", type=PositiveRate(), default=None, help="Labels per second (default: as fast as possible).")
@click.option("--shuffle-seed", type=int, default=None, help="Send the labels in a shuffled order.")
@bootstrap_option
def labels_produce(
    stream: str,
    source: str | None,
    start: int,
    limit: int | None,
    rate: float | None,
    shuffle_seed: int | None,
    bootstrap: str | None,
) -> None:
    """Send a dataset's labels to <stream>.labels as {id, label, ts} (demos and tests)."""
    from dagster_project.labels import produce_labels

    spec = stream_spec(stream)
    try:
        sent = produce_labels(
            kafka_settings(bootstrap),
            spec,
            source or stream,
            start=start,
            limit=limit,
            rate=rate,
            shuffle_seed=shuffle_seed,
        )
    except (ValueError, RuntimeError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"produced {sent} labels to {spec.labels_topic}")


@labels.command("show")
@stream_argument
def labels_show(stream: str) -> None:
    """Live quality per model version, from the registry's live_metrics.jsonl."""
    from dagster_project.labels import live_summary
    from dagster_project.settings import registry_root

    summary = live_summary(registry_root(), stream)
    if not summary.records:
        stream_spec(stream)  # a misspelt name is not "no labels yet": the known streams are named
        click.echo(f"{stream}: no joined labels yet (run `streamfit labels join {stream}`)")
        return
    c = summary.counters
    click.echo(
        f"{stream}: joined {c['joined']}, pending {summary.pending['predictions']} predictions / "
        f"{summary.pending['labels']} labels, evicted {c['evicted_predictions']} / {c['evicted_labels']}"
    )
    for version, quality in summary.quality().items():
        shown = "  ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in quality.items())
        click.echo(f"  {version:>5}  {shown}")
