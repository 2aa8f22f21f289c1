"""`streamfit exporter`: training metrics for Prometheus.

Each scrape reads the registry (and, unless --no-kafka, the broker's lag), so the exporter keeps no
state of its own and can be restarted at any time.
"""

from __future__ import annotations

import time

import click

from dagster_project.cli.common import PORT, cannot_listen, kafka_settings, registry


@click.command()
@click.option("--port", type=PORT, default=9108, show_default=True)
@click.option(
    "--addr", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface; no auth)."
)
@click.option("--no-kafka", is_flag=True, help="Skip the lag probe (registry metrics only).")
def exporter(port: int, addr: str, no_kafka: bool) -> None:
    """Serve training metrics for Prometheus, read from the registry and Kafka on each scrape."""
    from dagster_project.observability.exporter import exporter_specs, serve_exporter

    kafka = None if no_kafka else kafka_settings(None)
    # One file that does not load, or whose stream's definitions do not build, hides only its own stream
    specs, broken = exporter_specs()
    for spec_file in broken:
        click.echo(
            f"{spec_file.path}: its stream does not train (streamfit_spec_invalid is 1 for it): {spec_file.error}",
            err=True,
        )
    try:
        serve_exporter(registry(), specs, kafka, port, addr, broken=broken)
    except OSError as exc:  # the port is taken (another exporter?) or not ours to bind
        raise cannot_listen("metrics", addr, port, exc) from exc
    click.echo(f"serving streamfit_* training metrics on http://{addr}:{port}/metrics; Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
