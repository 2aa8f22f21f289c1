"""The `streamfit` command line: broker, produce, demo, offsets, models."""

from __future__ import annotations

import getpass
import os
import signal
import time

import click

from dagster_project.kafka.settings import BOOTSTRAP_ENV, KafkaSettings


def _settings(bootstrap: str | None) -> KafkaSettings:
    try:
        return KafkaSettings.from_env(bootstrap)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc


def _spec(name: str):
    """The stream's spec, or a one-line error listing the known streams."""
    from dagster_project.spec import get_spec

    try:
        return get_spec(name)
    except (KeyError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc.args[0])) from exc


bootstrap_option = click.option(
    "--bootstrap", envvar=BOOTSTRAP_ENV, default=None, help=f"Kafka bootstrap address (default: ${BOOTSTRAP_ENV})."
)


@click.group()
def main() -> None:
    """Streamfit: keep models learning from Kafka, orchestrated by Dagster."""


@main.command()
@click.option("--port", type=int, default=None, help="Port to listen on (default: a free one).")
def broker(port: int | None) -> None:
    """Run the embedded Kafka-protocol broker until Ctrl-C."""
    from dagster_project.kafka.brokers.tansu import EmbeddedBroker

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # before starting, so TERM and Ctrl-C both stop Tansu
    try:
        with EmbeddedBroker(port=port) as running:
            click.echo(f"export {BOOTSTRAP_ENV}={running.bootstrap}")
            click.echo("embedded broker running (in memory: topics are lost when it stops); Ctrl-C stops it")
            while running.process and running.process.poll() is None:
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    click.echo("broker stopped")


@main.command()
@click.argument("stream")
@click.option("--source", default=None, help="phishing, synthetic, or a .jsonl file (default: the stream's name).")
@click.option("--rate", type=float, default=None, help="Events per second (default: as fast as possible).")
@click.option("--limit", type=int, default=None, help="Stop after this many events.")
@bootstrap_option
def produce(stream: str, source: str | None, rate: float | None, limit: int | None, bootstrap: str | None) -> None:
    """Write events to <stream>.events in the contract format."""
    from dagster_project.dev.producer import encoded_events
    from dagster_project.dev.producer import produce as produce_events

    spec = _spec(stream)
    try:
        sent = produce_events(
            _settings(bootstrap), spec, encoded_events(source or stream), rate=rate, limit=limit, progress=True
        )
    except (FileNotFoundError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"produced {sent} events to {spec.events_topic}")


@main.command()
@click.option("--versions", type=int, default=None, help="Stop once this many versions exist (default: Ctrl-C).")
@click.option("--stream", default="synthetic", show_default=True)
@click.option("--rate", type=float, default=500.0, show_default=True, help="Replay speed, events per second.")
@click.option("--rows", type=int, default=20_000, show_default=True, help="How many synthetic events to replay.")
@click.option("--ui-port", type=int, default=None, help="Dagster UI port (default: a free one).")
@click.option("--timeout", "timeout_s", type=float, default=900.0, show_default=True)
def demo(versions: int | None, stream: str, rate: float, rows: int, ui_port: int | None, timeout_s: float) -> None:
    """Run the whole loop locally: broker, Dagster daemon and UI, a replayed stream."""
    from dagster_project.dev.demo import run_demo

    run_demo(versions, stream, rate, rows, ui_port, timeout_s)


@main.group()
def offsets() -> None:
    """Inspect or move a stream's learned offsets."""


@offsets.command("show")
@click.argument("stream")
@bootstrap_option
def offsets_show(stream: str, bootstrap: str | None) -> None:
    """Learned offsets, the broker's ends and the lag, per partition."""
    from dagster_project.kafka.io import committed_group_offsets, probe_partitions
    from dagster_project.registry.store import FilesystemRegistry, expected_offsets
    from dagster_project.settings import registry_root

    spec = _spec(stream)
    settings = _settings(bootstrap)
    head, expected, reset = expected_offsets(FilesystemRegistry(registry_root()), stream)
    committed = committed_group_offsets(settings, spec.trainer_group, spec.events_topic)
    click.echo(f"{stream}: head {head.name if head else 'none'}" + (f", pending reset {reset}" if reset else ""))
    for state in probe_partitions(settings, spec.events_topic, expected):
        click.echo(
            f"  partition {state.partition}: next {state.next_offset}  committed {committed.get(state.partition)}  "
            f"log [{state.log_start}, {state.high_water})  lag {state.lag}"
        )


@offsets.command("reset")
@click.argument("stream")
@click.option("--to", "position", type=click.Choice(["earliest", "latest"]), required=True)
@click.option("--reason", default="operator reset", show_default=True)
@bootstrap_option
def offsets_reset(stream: str, position: str, reason: str, bootstrap: str | None) -> None:
    """Move where the next batch starts (after data loss); the next version records it."""
    from dagster_project.kafka.io import probe_partitions
    from dagster_project.registry.store import FilesystemRegistry
    from dagster_project.settings import registry_root

    spec = _spec(stream)
    states = probe_partitions(_settings(bootstrap), spec.events_topic, {})
    if not states:
        raise click.ClickException(f"topic {spec.events_topic} does not exist on the broker")
    target = {s.partition: (s.log_start if position == "earliest" else s.high_water) for s in states}
    by = os.environ.get("USER") or getpass.getuser()
    FilesystemRegistry(registry_root()).set_pending_offsets(stream, target, reason=f"{reason} (--to {position})", by=by)
    click.echo(f"{stream}: next batch starts at {target}; the next version records this reset")


@main.command()
@click.option("--port", type=int, default=9108, show_default=True)
@click.option("--addr", default="0.0.0.0", show_default=True)
@click.option("--no-kafka", is_flag=True, help="Skip the lag probe (registry metrics only).")
def exporter(port: int, addr: str, no_kafka: bool) -> None:
    """Serve training metrics for Prometheus, read from the registry and Kafka on each scrape."""
    from dagster_project.observability.exporter import serve_exporter
    from dagster_project.registry.store import FilesystemRegistry
    from dagster_project.settings import registry_root
    from dagster_project.spec import load_specs

    kafka = None if no_kafka else _settings(None)
    serve_exporter(FilesystemRegistry(registry_root()), load_specs(), kafka, port, addr)
    click.echo(f"serving streamfit_* training metrics on http://{addr}:{port}/metrics; Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


@main.group()
def models() -> None:
    """Registered versions and the champion."""


@models.command("list")
@click.argument("stream")
def models_list(stream: str) -> None:
    """Every version with its offsets and metrics."""
    from dagster_project.registry.store import FilesystemRegistry
    from dagster_project.settings import registry_root

    registry = FilesystemRegistry(registry_root())
    champion = registry.champion(stream)
    for version in registry.versions(stream):
        mark = "*" if version.name == champion else " "
        click.echo(
            f"{mark} {version.name:>5}  parent {version.parent or '-':>5}  learned {version.meta['offsets']['learned']}"
            f"  metrics {version.meta.get('metrics', {})}"
        )


@main.command()
@click.argument("stream")
@click.option("--port", type=int, default=8080, show_default=True, help="HTTP port (0: a free one).")
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
    "--max-body-bytes",
    type=click.IntRange(min=1),
    default=1024 * 1024,
    show_default=True,
    help="Largest POST /predict body.",
)
@click.option(
    "--max-rows", type=click.IntRange(min=1), default=10_000, show_default=True, help="Most rows per POST /predict."
)
def serve(
    stream: str,
    port: int,
    host: str,
    bootstrap: str | None,
    group: str | None,
    max_poll_records: int,
    max_body_bytes: int,
    max_rows: int,
) -> None:
    """Score <stream>.events with the champion into <stream>.predictions; HTTP /predict, /healthz, /metrics.

    Follows the registry's champion alias ($STREAMFIT_HOME/registry) and hot-swaps it. Set
    STREAMFIT_SCORER_TOKEN to require `Authorization: Bearer <token>` on /predict. SIGTERM or
    Ctrl-C finishes the current batch, commits and leaves the group.
    """
    import logging

    from dagster_project.kafka.io import BrokerUnavailable
    from dagster_project.serving.scorer import build_service, scorer_group
    from dagster_project.spec import get_spec

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    try:
        spec = get_spec(stream)
        service = build_service(
            spec,
            _settings(bootstrap),
            host=host,
            port=port,
            group_id=group,
            max_poll_records=max_poll_records,
            max_body_bytes=max_body_bytes,
            max_rows=max_rows,
        )
    except (KeyError, FileNotFoundError, ValueError, BrokerUnavailable, OSError) as exc:
        raise click.ClickException(exc.args[0] if isinstance(exc, KeyError) else str(exc)) from exc
    service.start()
    click.echo(
        f"serving {stream}: {spec.events_topic} -> {spec.predictions_topic} in group {group or scorer_group(spec)}; "
        f"HTTP on {service.url}"
    )
    service.serve_until_signalled()
    click.echo("scorer stopped")


@models.command("show")
@click.argument("stream")
@click.argument("version")
def models_show(stream: str, version: str) -> None:
    """One version's meta.json (offsets, metrics, parity, profile)."""
    import orjson

    from dagster_project.registry.store import FilesystemRegistry, RegistryError
    from dagster_project.settings import registry_root

    try:
        meta = FilesystemRegistry(registry_root()).get(stream, version).meta
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(orjson.dumps(meta, option=orjson.OPT_INDENT_2).decode())


@models.command("promote")
@click.argument("stream")
@click.argument("version")
@click.option("--reason", default="manual promotion", show_default=True)
def models_promote(stream: str, version: str, reason: str) -> None:
    """Make VERSION the champion now (atomic; recorded in the champion history)."""
    from dagster_project.registry.store import FilesystemRegistry, RegistryError
    from dagster_project.settings import registry_root

    by = os.environ.get("USER") or getpass.getuser()
    try:
        FilesystemRegistry(registry_root()).set_champion(
            stream, version, reason=f"manual: {reason}", evidence={"by": by}
        )
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{stream}: champion is now {version}")


@models.command("rollback")
@click.argument("stream")
@click.option("--reason", default="manual rollback", show_default=True)
def models_rollback(stream: str, reason: str) -> None:
    """Return the champion to the last good one before it (scorers follow within seconds)."""
    from dagster_project.registry.store import FilesystemRegistry, RegistryError
    from dagster_project.settings import registry_root

    by = os.environ.get("USER") or getpass.getuser()
    try:
        version = FilesystemRegistry(registry_root()).rollback(stream, reason=reason, evidence={"by": by})
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{stream}: rolled back; champion is now {version}")


def _operator() -> str:
    return os.environ.get("USER") or getpass.getuser()


@main.group()
def batches() -> None:
    """Operator actions on a halted stream."""


@batches.command("skip")
@click.argument("stream")
@click.option("--reason", required=True, help="Why the batch is skipped (recorded with your name).")
def batches_skip(stream: str, reason: str) -> None:
    """Skip the batch a data-quality halt stopped at; the next version records who skipped what."""
    from dagster_project.registry.store import FilesystemRegistry
    from dagster_project.settings import registry_root

    _spec(stream)
    registry = FilesystemRegistry(registry_root())
    halt = registry.halt(stream)
    if halt is None:
        raise click.ClickException(f"{stream} is not halted; nothing to skip")
    ends = {int(p): int(r[1]) for p, r in halt["ranges"].items()}
    by = _operator()
    registry.set_pending_offsets(stream, ends, reason=f"skipped after data-quality halt: {reason}", by=by)
    registry.clear_halt(stream, {"resolution": "skipped", "by": by, "reason": reason})
    click.echo(f"{stream}: skipped {halt['ranges']} ({halt['summary']}); training resumes at {ends}")


@main.group()
def quarantine() -> None:
    """Batches set aside by a data-quality quarantine policy."""


@quarantine.command("list")
@click.argument("stream")
def quarantine_list(stream: str) -> None:
    """Every quarantined batch with its failure summary and replay state."""
    from dagster_project.quality.quarantine import QuarantineStore

    entries = QuarantineStore().list(stream)
    if not entries:
        click.echo(f"{stream}: no quarantined batches")
    for entry in entries:
        meta = entry.meta
        replayed = f"replayed by {meta['replayed_by']['version']}" if meta.get("replayed_by") else "not replayed"
        summary = meta["validation"].get("failed_expectations")
        click.echo(f"{entry.id}  rows {meta['rows']}  failed expectations {summary}  {replayed}")


@quarantine.command("show")
@click.argument("stream")
@click.argument("quarantine_id")
def quarantine_show(stream: str, quarantine_id: str) -> None:
    """The validation result of one quarantined batch."""
    import orjson

    from dagster_project.quality.quarantine import QuarantineError, QuarantineStore

    try:
        entry = QuarantineStore().get(stream, quarantine_id)
    except QuarantineError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(orjson.dumps(entry.meta, option=orjson.OPT_INDENT_2).decode())


@quarantine.command("replay")
@click.argument("stream")
@click.argument("quarantine_id")
@click.option("--force", is_flag=True, help="Train it even if it still fails its checks.")
def quarantine_replay(stream: str, quarantine_id: str, force: bool) -> None:
    """Train a quarantined batch on top of the head, exactly once."""
    from dagster_project.quality.quarantine import QuarantineError, QuarantineStore
    from dagster_project.quality.replay import replay_quarantined
    from dagster_project.registry.store import FilesystemRegistry
    from dagster_project.settings import registry_root

    spec = _spec(stream)
    try:
        version = replay_quarantined(
            FilesystemRegistry(registry_root()), QuarantineStore(), spec, quarantine_id, _operator(), force
        )
    except QuarantineError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{stream}: {quarantine_id} trained into {version.name}")


@main.group()
def labels() -> None:
    """Delayed labels: join them with predictions for live accuracy/error per model version."""


@labels.command("join")
@click.argument("stream")
@bootstrap_option
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics on this port (0: a free one).")
@click.option("--metrics-addr", default="0.0.0.0", show_default=True)
@click.option("--window", "window_s", type=float, default=None, help="Join window in seconds (default: the spec's).")
@click.option("--max-pending", type=click.IntRange(min=1), default=None, help="Most waiting entries (default: spec).")
@click.option("--flush-interval", "flush_interval_s", type=float, default=None, help="Seconds between checkpoints.")
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
    from dagster_project.labels.joiner import LabelJoiner, LabelStoreError, LiveMetricsReader, progress_line
    from dagster_project.settings import registry_root

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = _spec(stream)
    reader = LiveMetricsReader(registry_root(), spec.name)

    def report(record: dict) -> None:
        click.echo(progress_line(spec.name, record, reader.refresh()))

    try:
        joiner = LabelJoiner(
            spec,
            _settings(bootstrap),
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
            raise click.ClickException(f"cannot serve metrics on {metrics_addr}:{metrics_port}: {exc}") from exc
        where = f"; metrics on http://{metrics_addr}:{server.server_port}/metrics"

    def handle(signum, _frame) -> None:
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
@click.argument("stream")
@click.option("--source", type=click.Choice(["synthetic", "phishing"]), default=None, help="Default: the stream name.")
@click.option("--start", type=click.IntRange(min=0), default=0, show_default=True, help="First event of the source.")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="How many labels (default: all).")
@click.option("--rate", type=float, default=None, help="Labels per second (default: as fast as possible).")
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
    from dagster_project.labels.joiner import produce_labels

    spec = _spec(stream)
    try:
        sent = produce_labels(
            _settings(bootstrap),
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
@click.argument("stream")
def labels_show(stream: str) -> None:
    """Live quality per model version, from the registry's live_metrics.jsonl."""
    from dagster_project.labels.joiner import live_summary
    from dagster_project.settings import registry_root

    summary = live_summary(registry_root(), stream)
    if not summary.records:
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


@main.command()
@click.option("--quick", "size", flag_value="quick", default=True, help="CI size, under 2 minutes (the default).")
@click.option("--full", "size", flag_value="full", help="The published size, about 10 minutes.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Directory for latest.json/.txt/.png.")
@click.option("--sections", default=None, help="Comma-separated: training,inference,quality,cost,freshness.")
@click.option("--bootstrap", default=None, help="Benchmark this broker instead of a fresh embedded one.")
@click.option("--no-chart", is_flag=True, help="Skip the PNG chart.")
def bench(size: str, out: str | None, sections: str | None, bootstrap: str | None, no_chart: bool) -> None:
    """Measure training, freshness, inference, quality and cost in one run (benchmarks/README.md)."""
    import subprocess
    import sys

    from dagster_project.dev.services import PROJECT_ROOT

    if not (PROJECT_ROOT / "benchmarks" / "run.py").exists():
        raise click.ClickException(f"the benchmarks ship with the source tree; none found in {PROJECT_ROOT}")
    args = [sys.executable, "-m", "benchmarks", f"--{size}"]
    for flag, value in (("--out", out), ("--sections", sections), ("--bootstrap", bootstrap)):
        if value:
            args += [flag, str(value)]
    if no_chart:
        args.append("--no-chart")
    raise SystemExit(subprocess.call(args, cwd=PROJECT_ROOT))


if __name__ == "__main__":
    main()
