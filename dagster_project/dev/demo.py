"""`streamfit demo`: the whole loop on one machine, watched live.

Starts the embedded broker (unless STREAMFIT_KAFKA_BOOTSTRAP points elsewhere), a Dagster home,
the daemon and the web UI, replays the synthetic stream, and prints progress until the wanted
number of versions exists (or Ctrl-C). Everything it started is stopped on the way out.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import click

from dagster_project.dev.producer import encoded_events, produce
from dagster_project.dev.services import DagsterServices
from dagster_project.instance import write_instance_config
from dagster_project.kafka.brokers.tansu import EmbeddedBroker, free_port
from dagster_project.kafka.settings import BOOTSTRAP_ENV, KafkaSettings
from dagster_project.registry.backends import registry_from_env
from dagster_project.spec import get_spec


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def run_demo(versions: int | None, stream: str, rate: float, rows: int, ui_port: int | None, timeout_s: float) -> int:
    # SIGTERM (a supervisor, `timeout`) takes the Ctrl-C path, so everything started is stopped:
    # the children run in their own sessions and would otherwise outlive the demo.
    signal.signal(signal.SIGTERM, _interrupt)
    with ExitStack() as stack:
        home = Path(os.environ.get("STREAMFIT_HOME") or stack.enter_context(tempfile.TemporaryDirectory()))
        home = home.resolve()
        dagster_home = home / "dagster"
        write_instance_config(dagster_home)
        bootstrap = os.environ.get(BOOTSTRAP_ENV)
        if not bootstrap:
            broker = stack.enter_context(EmbeddedBroker(log_path=home / "broker.log"))
            bootstrap = broker.bootstrap
            click.echo(f"embedded Kafka broker on {bootstrap}")
        env = os.environ | {BOOTSTRAP_ENV: bootstrap, "STREAMFIT_HOME": str(home), "DAGSTER_HOME": str(dagster_home)}
        os.environ.update(env)
        spec = get_spec(stream)
        registry = registry_from_env(home / "registry")
        services = stack.enter_context(DagsterServices(env, home / "logs", ui_port=ui_port or free_port()))
        click.echo(f"STREAMFIT_HOME={home}  (logs in {home / 'logs'})")
        if services.wait_for_ui():
            click.echo(f"Dagster UI: {services.ui_url}  (assets, checks, sensors and runs of '{stream}')")
        produced = {"rows": 0}
        failure: list[BaseException] = []

        def replay() -> None:
            try:
                settings = KafkaSettings.from_env(bootstrap)
                produced["rows"] = produce(settings, spec, encoded_events("synthetic"), rate=rate, limit=rows)
            except BaseException as exc:  # reported by the progress loop
                failure.append(exc)

        threading.Thread(target=replay, daemon=True).start()
        click.echo(f"replaying {rows} synthetic events into {spec.events_topic} at {rate:g}/s; Ctrl-C stops")
        started = time.monotonic()
        last_line = ""
        try:
            while True:
                if failure:
                    raise click.ClickException(f"producer failed: {failure[0]!r}")
                services.check_alive()
                found = registry.versions(stream)
                line = _progress_line(found)
                if line != last_line:
                    click.echo(f"[{time.monotonic() - started:5.0f}s] {line}")
                    last_line = line
                if versions and len(found) >= versions:
                    break
                if time.monotonic() - started > timeout_s:
                    raise click.ClickException(
                        f"only {len(found)} of {versions} versions after {timeout_s:.0f}s; see {home / 'logs'}"
                    )
                time.sleep(1.0)
        except KeyboardInterrupt:
            click.echo("stopping...")
        found = registry.versions(stream)
        click.echo(_summary(found, registry.champion(stream)))
        return len(found)


def _progress_line(found: list) -> str:
    if not found:
        return "waiting for the first batch..."
    head = found[-1]
    metrics = head.meta.get("metrics", {})
    metric = f"accuracy {metrics['accuracy']:.3f}" if "accuracy" in metrics else "first batch (no prior model)"
    return f"versions {len(found)}  rows learned {head.meta['rows_learned_total']}  head {head.name}: {metric}"


def _summary(found: list, champion: str | None) -> str:
    lines = [f"summary: {len(found)} versions, champion {champion}"]
    for version in found:
        batch = version.meta["offsets"]["batch"]
        metrics = version.meta.get("metrics", {})
        acc = f"{metrics['accuracy']:.3f}" if "accuracy" in metrics else "  -  "
        lines.append(f"  {version.name:>5}  offsets {batch}  rows {version.meta['rows']['trained']:>6}  accuracy {acc}")
    return "\n".join(lines)
