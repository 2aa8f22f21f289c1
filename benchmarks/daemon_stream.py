"""Streams under a real `dagster-daemon`, watched from outside: what freshness and sustained share.

`DaemonStreams` writes the streams' specs and a Dagster instance (`instance.write_instance_config`,
as `tests/test_end_to_end.py` does), creates the topics and starts `DagsterServices`. `watch`
starts a scorer's champion watcher and HTTP API (`ScoringService.start()`, no Kafka loop) on a
stream with an `Observer` that polls, every 50 ms, the registry's versions, the champion alias and
the scorer's `/healthz`, and records when each first appeared. `run_timeline` splits a run's
Dagster event log into launch and compute.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.request
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from dagster_project.kafka.io import ensure_topics
from dagster_project.kafka.settings import BOOTSTRAP_ENV, KafkaSettings
from dagster_project.spec import StreamSpec

POLL_S = 0.05


def reached(meta: dict[str, Any]) -> dict[int, int]:
    """Offsets a version read up to on each partition: its learned offsets, or its batch's end when
    later (the batch's tail, on which its promotion was decided, is learned by the next version)."""
    out = {int(p): int(o) for p, o in meta["offsets"]["learned"].items()}
    for p, (_, end) in (meta["offsets"].get("batch") or {}).items():
        out[int(p)] = max(out.get(int(p), 0), int(end))
    return out


def batch_rows(meta: dict[str, Any]) -> int:
    """Rows of the batch the sensor planned for this version (0 for a version without one)."""
    return sum(int(end) - int(start) for start, end in (meta["offsets"].get("batch") or {}).values())


class Observer:
    """Polls registry directory names, the champion alias and /healthz; records first-seen times."""

    def __init__(self, registry_dir: Path, stream: str, healthz_url: str) -> None:
        self.dir = registry_dir / stream
        self.healthz_url = healthz_url
        self.head_seen: dict[str, float] = {}
        self.champion_seen: dict[str, float] = {}
        self.served_seen: dict[str, float] = {}
        self.meta: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"observer-{stream}", daemon=True)

    def start(self) -> Observer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            now = time.time()
            try:
                names = [e.name for e in self.dir.iterdir()] if self.dir.is_dir() else []
            except OSError:
                names = []
            for name in names:
                if name.startswith("v") and name[1:].isdigit() and name not in self.head_seen:
                    self.head_seen[name] = now
                    self.meta[name] = orjson.loads((self.dir / name / "meta.json").read_bytes())
            champion = self.dir / "champion"
            if champion.exists():
                try:
                    version = orjson.loads(champion.read_bytes())["version"]
                    self.champion_seen.setdefault(version, now)
                except (OSError, orjson.JSONDecodeError, KeyError):
                    pass
            try:
                with urllib.request.urlopen(self.healthz_url, timeout=1) as response:
                    version = orjson.loads(response.read()).get("model_version")
                    if version:
                        self.served_seen.setdefault(version, time.time())
            except OSError:
                pass

    def versions(self) -> list[tuple[str, dict[str, Any]]]:
        """(name, meta) of every version seen, oldest first."""
        return sorted(self.meta.items(), key=lambda kv: int(kv[0][1:]))

    def covering(self, ends: dict[int, int]) -> list[str]:
        """Versions that read up to `ends` on every partition, oldest first: they learned those rows
        up to their batch's tail, on which their promotion was decided (the next version learns it)."""
        out = []
        for name, meta in self.versions():
            got = reached(meta)
            if all(got.get(p, 0) >= end for p, end in ends.items()):
                out.append(name)
        return out


def wait_for_sensor_tick(instance, sensor_name: str, services, timeout_s: float = 90) -> float:
    """Seconds until the daemon has evaluated the stream's Kafka sensor once (code location loaded)."""
    from dagster._core.definitions.run_request import InstigatorType

    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        services.check_alive()
        for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
            if state.name == sensor_name and instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1):
                return time.monotonic() - started
        time.sleep(0.5)
    raise RuntimeError(f"the daemon did not tick {sensor_name} within {timeout_s}s")


def iso(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


def run_timeline(instance, run_id: str) -> dict[str, Any]:
    """First time of each event type in the run's event log, step durations, and the worker's start.

    The queued run coordinator logs RUN_ENQUEUED, then RUN_STARTING when the daemon dequeues and
    launches the run; the spawned worker logs an ENGINE_EVENT ("Started process for run") once it
    runs, then RUN_START after it has loaded the code location.
    """
    events_by_type: dict[str, float] = {}
    steps: dict[str, dict[str, float]] = {}
    worker_started = None
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        kind = event.event_type.name  # RUN_START etc. (the stored values are the legacy PIPELINE_* names)
        events_by_type.setdefault(kind, entry.timestamp)
        if kind == "ENGINE_EVENT" and "RUN_STARTING" in events_by_type and "RUN_START" not in events_by_type:
            worker_started = worker_started or entry.timestamp
        if kind in ("STEP_START", "STEP_SUCCESS", "STEP_FAILURE") and event.step_key:
            step = event.step_key.split("__", 1)[-1]
            steps.setdefault(step, {})[kind] = entry.timestamp
    durations = {
        step: t["STEP_SUCCESS"] - t["STEP_START"]
        for step, t in steps.items()
        if "STEP_SUCCESS" in t and "STEP_START" in t
    }
    return {"events": events_by_type, "step_s": durations, "worker_started": worker_started}


class DaemonStreams:
    """`specs` under one real dagster-daemon, in `home`; `watch` adds a scorer and an observer per stream."""

    def __init__(self, home: Path, bootstrap: str, specs: list[StreamSpec]) -> None:
        from benchmarks.data import write_spec
        from dagster_project.instance import write_instance_config
        from dagster_project.registry.store import FilesystemRegistry

        self.home = home
        self.specs = specs
        streams = home / "streams"
        for spec in specs:
            write_spec(spec, streams)
        self.dagster_home = home / "dagster"
        write_instance_config(self.dagster_home)
        self.env = os.environ | {
            BOOTSTRAP_ENV: bootstrap,
            "STREAMFIT_HOME": str(home),
            "STREAMFIT_STREAMS": str(streams),
            "DAGSTER_HOME": str(self.dagster_home),
            "DAGSTER_DISABLE_TELEMETRY": "1",
        }
        settings = KafkaSettings.from_env(bootstrap)
        self.settings = settings
        for spec in specs:
            topics = [spec.events_topic, spec.labels_topic, spec.dlq_topic, spec.predictions_topic]
            ensure_topics(settings, topics, spec.partitions)
        self.registry = FilesystemRegistry(home / "registry")
        self._stack = ExitStack()
        self.services = None
        self.instance = None

    def __enter__(self) -> DaemonStreams:
        import dagster as dg

        from dagster_project.dev.services import DagsterServices

        logging.getLogger("dagster_project.serving").setLevel(logging.ERROR)  # swaps are measured, not logged
        try:
            self.services = self._stack.enter_context(DagsterServices(self.env, self.home / "logs"))
            self.instance = self._stack.enter_context(dg.DagsterInstance.from_config(str(self.dagster_home)))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def watch(self, spec: StreamSpec) -> Observer:
        """A scorer's watcher + HTTP API following `spec`'s champion, and an observer of both; both
        stop when the daemon does."""
        from dagster_project.kafka.brokers.tansu import free_port
        from dagster_project.serving.scorer import ScoringService

        service = ScoringService(spec, self.settings, self.registry, port=free_port(), watch_interval_s=0.25).start()
        self._stack.callback(service.close)
        observer = Observer(self.home / "registry", spec.name, f"{service.url}/healthz").start()
        self._stack.callback(observer.stop)
        return observer

    def wait_for_sensor(self, spec: StreamSpec, timeout_s: float = 90) -> float:
        return wait_for_sensor_tick(self.instance, f"{spec.name}_kafka_sensor", self.services, timeout_s)

    def daemon_log_tail(self, chars: int = 3000) -> str:
        return (self.home / "logs" / "dagster-daemon.log").read_text()[-chars:]
