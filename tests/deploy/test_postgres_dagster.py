"""Production-mode Dagster on the local PostgreSQL: separate processes, real training runs.

The deployment of docker-compose.yaml, minus Docker: `streamfit instance migrate` (the compose init
step) on a fresh database, the code location as its own gRPC server (`dagster code-server start`,
checked with the compose healthcheck command), and `dagster-daemon run` and `dagster-webserver`
loading it through a workspace file with a `grpc_server` entry (deploy/workspace.yaml with the
test's port). The instance is Streamfit's Postgres dagster.yaml (credentials from env vars).

What it shows (600 rows produced at once: three batches of 200 waiting):
- runs of one stream never overlap, and the run queue's tag limit is what holds when two of them
  wait together: batches 1 and 2 are launched at the same moment through the webserver's GraphQL
  API; batch 2 starts only after batch 1 finished and trains on top of its version (v2's parent is
  v1; run start/end times from the Postgres run records);
- the limit is per stream: a run of a second stream, launched with them, starts while batch 1 runs;
- the Kafka sensor drives the remaining batch to a registered version: v1, v2, v3, 600 rows, each
  version made by a successful run recorded in Postgres. (It is paused through the webserver's
  GraphQL API, the UI's toggle, while the test queues batches 1 and 2, so it cannot race them; the
  test waits for a tick begun before the pause to finish before it produces, or that tick could
  still see the data and request batch 1 itself.)
- failed runs are retried by the daemon: the second stream's run asks for a batch past the model's
  next offsets (a gap), fails on every attempt, and its run_retries.max_retries (2) retries appear
  as failed runs with the retry tags, serialized like the rest;
- the instance loaded back from Postgres has the Postgres storages, the queued run coordinator with
  the `streamfit/stream` limit of 1 and run retries enabled with max_retries 2; the daemon's
  heartbeats (sensors, run queue, retry consumer) are there too.

Needs PostgreSQL (Debian's postgresql, a cluster listed by `pg_lsclusters`) and root to start it and
create a role; skipped with the reason otherwise, or failed if STREAMFIT_REQUIRE_POSTGRES is set.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import dagster as dg
import pytest
import yaml

from dagster_project.instance import COMPUTE_LOGS_DIR_ENV, POSTGRES_ENV, STORAGE_DIR_ENV, write_postgres_instance_config
from dagster_project.kafka.io import probe_partitions
from dagster_project.kafka.offsets import BatchPlan, plan_batch
from dagster_project.kafka.settings import BOOTSTRAP_ENV
from dagster_project.names import STREAM_TAG
from dagster_project.registry.store import FilesystemRegistry
from tests.conftest import synthetic_spec
from tests.helpers import produce_synthetic

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
REQUIRE_ENV = "STREAMFIT_REQUIRE_POSTGRES"
LOCATION = "streamfit"
ROWS, BATCH = 600, 200
DEADLINE_S = 300  # ~60 s on a quiet machine; runs start slowly when the cores are busy

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:gql.*"),  # dagster-graphql's client on gql 4
]


def unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{reason} ({REQUIRE_ENV} is set)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(*args: str, port: int) -> subprocess.CompletedProcess[str]:
    """psql as the postgres superuser over the local socket (peer authentication)."""
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-p", str(port), "-v", "ON_ERROR_STOP=1", "-qAt", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )


@pytest.fixture(scope="module")
def postgres_port():
    """The port of a running local PostgreSQL cluster; started (and stopped again) if it was down."""
    if not shutil.which("pg_lsclusters"):
        unavailable("PostgreSQL is not installed (Debian: apt-get install -y postgresql)")
    listed = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, timeout=30)
    rows = [line.split() for line in listed.stdout.splitlines() if line.strip()]
    if not rows:
        unavailable("no PostgreSQL cluster (pg_lsclusters lists none; create one with pg_createcluster)")
    version, cluster, port, status = rows[0][:4]
    if os.geteuid() != 0:
        unavailable("creating a test role and database needs root (runuser -u postgres); CI runs as root")
    started = False
    if status != "online":
        start = ["pg_ctlcluster", version, cluster, "start"]
        result = subprocess.run(start, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            unavailable(f"`pg_ctlcluster {version} {cluster} start` failed: {result.stderr.strip()}")
        started = True
    deadline = time.monotonic() + 30
    while subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", port], capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            unavailable(f"PostgreSQL {version}/{cluster} on port {port} does not accept connections")
        time.sleep(0.3)
    try:
        yield int(port)
    finally:
        if started:
            subprocess.run(["pg_ctlcluster", version, cluster, "stop"], capture_output=True, timeout=60)


@pytest.fixture
def postgres_database(postgres_port: int):
    """A fresh role (with a password) and database owned by it, dropped afterwards."""
    name = f"streamfit_test_{uuid.uuid4().hex[:10]}"
    password = secrets.token_hex(16)
    created = as_postgres(
        "-c",
        f"CREATE ROLE {name} LOGIN PASSWORD '{password}'",
        "-c",
        f"CREATE DATABASE {name} OWNER {name}",
        port=postgres_port,
    )
    assert created.returncode == 0, created.stderr
    try:
        yield {"host": "127.0.0.1", "port": str(postgres_port), "user": name, "password": password, "db": name}
    finally:
        dropped = as_postgres(
            "-c",
            f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
            "-c",
            f"DROP ROLE IF EXISTS {name}",
            port=postgres_port,
        )
        assert dropped.returncode == 0, dropped.stderr


class Processes:
    """Child processes in their own sessions, stopped by PID (their process group) on exit."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def _args(self, args: list[str]) -> list[str]:
        executable = VENV_BIN / args[0]
        return [str(executable) if executable.exists() else args[0], *args[1:]]

    def start(self, name: str, args: list[str]) -> None:
        log = open(self.log_dir / f"{name}.log", "ab")
        self._logs.append(log)
        self.running[name] = subprocess.Popen(
            self._args(args),
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def run(self, name: str, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self._args(args), cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        (self.log_dir / f"{name}.log").write_text(result.stdout + result.stderr)
        return result

    def check_alive(self) -> None:
        for name, process in self.running.items():
            assert process.poll() is None, f"{name} exited with {process.returncode}:\n{self.tail(name)}"

    def tail(self, name: str, chars: int = 3000) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def problems(self, name: str, lines: int = 40) -> str:
        """The log's warnings and errors from its start (a tail shows only the last seconds of a busy daemon)."""
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        marks = ("WARNING", "ERROR", "Error", "Exception", "Failed", "failed")
        return "\n".join([line for line in text.splitlines() if any(m in line for m in marks)][-lines:])

    def stop(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            try:  # children the group leader left behind (run workers of the code server)
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for log in self._logs:
            log.close()


def wait_for(what: str, condition, timeout_s: float, processes: Processes, interval_s: float = 0.5, describe=None):
    """Poll `condition`; on timeout fail with `describe()` (the state that was awaited) and log tails."""
    deadline = time.monotonic() + timeout_s
    while True:
        processes.check_alive()
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n}\n{processes.tail(n, 4000)}" for n in processes.running)
            logs += "".join(f"\n--- {n}: warnings and errors\n{processes.problems(n)}" for n in processes.running)
            state = f"\nstate: {describe()}" if describe else ""
            # The state last: a CI log that keeps only the output's head and tail still shows it.
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}\n{logs}{state}")
        time.sleep(interval_s)


def http_json(url: str, body: dict | None = None) -> dict | None:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())
    except OSError:
        return None


def run_log_text(instance: dg.DagsterInstance, run_id: str) -> str:
    """Every user log message and step failure of a run, as text."""
    lines = []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is not None and event.event_type == dg.DagsterEventType.STEP_FAILURE:
            lines.append(event.step_failure_data.error.to_string())
        elif entry.user_message:
            lines.append(entry.user_message)
    return "\n".join(lines)


def event_time(instance: dg.DagsterInstance, run_id: str, event_type: dg.DagsterEventType) -> float:
    (record,) = instance.get_records_for_run(run_id, of_type=event_type).records
    return record.event_log_entry.timestamp


@pytest.mark.one_broker
def test_postgres_instance_separate_processes_train_serialized_and_retry(
    postgres_database, kafka_bootstrap, kafka_settings, tmp_path, monkeypatch
):
    started_at = time.monotonic()
    batch = {"rows": BATCH, "max_rows": BATCH, "max_wait_s": 3600, "sensor_interval_s": 1}
    spec = synthetic_spec(batch=batch)  # trained by the sensor
    broken = synthetic_spec(batch=batch)  # gets a batch that must fail, to be retried
    streams = tmp_path / "streams"
    streams.mkdir()
    for s in (spec, broken):
        (streams / f"{s.name}.yaml").write_text(yaml.safe_dump(s.model_dump(mode="json")))
    streamfit_home = tmp_path / "streamfit"
    registry = FilesystemRegistry(streamfit_home / "registry")
    # `broken` expects offset 0 next (an operator reset), so a batch starting at 10,000 is a gap.
    registry.set_pending_offsets(broken.name, {0: 0, 1: 0}, reason="test: expect offset 0", by="test")
    dagster_home = tmp_path / "dagster_home"
    config_path = write_postgres_instance_config(dagster_home)

    pg = postgres_database
    instance_env = {
        "DAGSTER_HOME": str(dagster_home),
        POSTGRES_ENV["hostname"]: pg["host"],
        POSTGRES_ENV["port"]: pg["port"],
        POSTGRES_ENV["username"]: pg["user"],
        POSTGRES_ENV["password"]: pg["password"],
        POSTGRES_ENV["db_name"]: pg["db"],
        STORAGE_DIR_ENV: str(tmp_path / "dagster_storage"),
        COMPUTE_LOGS_DIR_ENV: str(tmp_path / "dagster_compute_logs"),
    }
    assert pg["password"] not in config_path.read_text(), "credentials must come from the environment"
    env = (
        {k: v for k, v in os.environ.items() if k != "STREAMFIT_FAULT"}
        | instance_env
        | {
            BOOTSTRAP_ENV: kafka_bootstrap,
            "STREAMFIT_HOME": str(streamfit_home),
            "STREAMFIT_STREAMS": str(streams),
            "DAGSTER_DISABLE_TELEMETRY": "1",
        }
    )
    for key, value in instance_env.items():  # this process reads the same instance below
        monkeypatch.setenv(key, value)

    grpc_port, ui_port = free_port(), free_port()
    workspace = yaml.safe_load((ROOT / "deploy" / "workspace.yaml").read_text())
    (entry,) = workspace["load_from"]
    entry["grpc_server"].update(host="127.0.0.1", port=grpc_port)
    assert entry["grpc_server"]["location_name"] == LOCATION
    workspace_path = tmp_path / "workspace.yaml"
    workspace_path.write_text(yaml.safe_dump(workspace))
    ui = f"http://127.0.0.1:{ui_port}"

    processes = Processes(tmp_path / "logs", env)
    try:
        code_server = f"dagster code-server start -m dagster_project.definitions -h 127.0.0.1 -p {grpc_port}"
        processes.start("code-server", [*code_server.split(), "--location-name", LOCATION])
        # The compose init step, on the fresh database, while the code server loads.
        migrated = processes.run("init", ["streamfit", "instance", "migrate"], timeout=180)
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        health = ["dagster", "api", "grpc-health-check", "-p", str(grpc_port)]  # the compose healthcheck
        wait_for("the code server", lambda: processes.run("health", health, 60).returncode == 0, 120, processes, 1)
        processes.start("dagster-daemon", ["dagster-daemon", "run", "-w", str(workspace_path)])
        processes.start(
            "dagster-webserver", ["dagster-webserver", "-w", str(workspace_path), "-h", "127.0.0.1", "-p", str(ui_port)]
        )
        server_info = wait_for("the webserver", lambda: http_json(f"{ui}/server_info"), 120, processes)
        assert "dagster_webserver_version" in server_info, server_info
        located = http_json(
            f"{ui}/graphql",
            {
                "query": "{ workspaceOrError { ... on Workspace { locationEntries { name "
                "locationOrLoadError { __typename } } } } }"
            },
        )
        entries = located["data"]["workspaceOrError"]["locationEntries"]
        assert {e["name"]: e["locationOrLoadError"]["__typename"] for e in entries} == {LOCATION: "RepositoryLocation"}
        services_ready_s = time.monotonic() - started_at

        def graphql(query: str, **variables) -> dict:
            answer = http_json(f"{ui}/graphql", {"query": query, "variables": variables})
            assert answer and not answer.get("errors"), answer
            return answer["data"]

        # Pause the stream's Kafka sensor from the webserver while the test queues its own runs, so
        # the sensor cannot request batch 1 first; it is started again once they are queued.
        selector = {
            "repositoryLocationName": LOCATION,
            "repositoryName": "__repository__",
            "sensorName": f"{spec.name}_kafka_sensor",
        }
        sensor = graphql(
            "query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) "
            "{ __typename ... on Sensor { id sensorState { status } } } }",
            s=selector,
        )["sensorOrError"]
        assert sensor["sensorState"]["status"] == "RUNNING", sensor
        stopped = graphql(
            "mutation($id: String) { stopSensor(id: $id) { __typename "
            "... on StopSensorMutationResult { instigationState { status } } ... on PythonError { message } } }",
            id=sensor["id"],
        )["stopSensor"]
        assert stopped.get("instigationState", {}).get("status") == "STOPPED", stopped

        # A tick the daemon started before the stop still finishes: let it, before producing, or it
        # may see the new data and request batch 1 itself (and race the stop with its state write).
        def tick_in_progress() -> bool:
            state = graphql(
                "query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) "
                "{ ... on Sensor { sensorState { ticks(limit: 1) { status } } } } }",
                s=selector,
            )["sensorOrError"]["sensorState"]
            return any(t["status"] == "STARTED" for t in state["ticks"])

        time.sleep(1.0)  # a tick the daemon began just before the stop is recorded as STARTED by now
        wait_for("the Kafka sensor's last tick to finish", lambda: not tick_in_progress(), 60, processes)

        assert produce_synthetic(kafka_settings, spec, ROWS) == ROWS  # three batches waiting at once

        def plan(after: dict[int, int]) -> BatchPlan:  # what the sensor would plan after `after`
            states = probe_partitions(kafka_settings, spec.events_topic, after)
            planned = plan_batch(states, BATCH, BATCH, 3600, int(time.time() * 1000))
            assert isinstance(planned, BatchPlan), planned
            return planned

        batch1 = plan({})
        batch2 = plan({p: end for p, (_, end) in batch1.ranges.items()})
        gap = {0: (10_000, 10_010), 1: (10_000, 10_010)}

        # Through the webserver's GraphQL API, at once: batches 1 and 2 of `spec` (two runs of one
        # stream waiting together; batch 2 is only right after batch 1's version exists) and the gap
        # batch of `broken` (another stream, not held back by `spec`'s limit).
        from dagster_graphql import DagsterGraphQLClient

        from assets.training import batch_run_config

        client = DagsterGraphQLClient("127.0.0.1", port_number=ui_port)

        def submit(s, ranges) -> str:
            config = batch_run_config(s, ranges).to_config_dict()
            return client.submit_job_execution(f"{s.name}_training", LOCATION, "__repository__", config)

        first_id, second_id, gap_id = submit(spec, batch1.ranges), submit(spec, batch2.ranges), submit(broken, gap)
        started = graphql(
            "mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) { __typename "
            "... on Sensor { sensorState { status } } ... on PythonError { message } } }",
            s=selector,
        )["startSensor"]
        assert started.get("sensorState", {}).get("status") == "RUNNING", started

        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:

            def stream_runs(s) -> list[dg.DagsterRun]:
                return instance.get_runs(dg.RunsFilter(tags={STREAM_TAG: s.name}))

            def done() -> bool:
                retries = [r for r in stream_runs(broken) if r.tags.get("dagster/root_run_id") == gap_id]
                return (
                    len(registry.versions(spec.name)) >= ROWS // BATCH
                    and len(retries) >= instance.run_retries_max_retries
                    and all(r.is_finished for r in stream_runs(spec) + stream_runs(broken))
                )

            def describe() -> str:
                runs = {
                    s.name: [(r.job_name, r.status.value, r.tags.get("dagster/root_run_id")) for r in stream_runs(s)]
                    for s in (spec, broken)
                }
                ticks = graphql(
                    "query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor { sensorState "
                    "{ status ticks(limit: 5) { status timestamp skipReason runIds error { message } } } } } }",
                    s=selector,
                )["sensorOrError"]
                retrying = {  # the daemon's word on each failed run of `broken`: retried, or why not
                    r.run_id[:8]: [m for m in run_log_text(instance, r.run_id).splitlines() if "etry" in m][-3:]
                    for r in stream_runs(broken)
                    if r.status == dg.DagsterRunStatus.FAILURE
                }
                return (
                    f"versions {[v.name for v in registry.versions(spec.name)]}, runs {runs}, "
                    f"retry events {retrying}, kafka sensor {ticks}"
                )

            wait_for("three versions and the gap run's retries", done, DEADLINE_S, processes, 1, describe)
            records = {
                s.name: sorted(
                    instance.get_run_records(dg.RunsFilter(tags={STREAM_TAG: s.name})), key=lambda r: r.start_time
                )
                for s in (spec, broken)
            }
            by_id = {r.dagster_run.run_id: r for rs in records.values() for r in rs}
            t0 = min(r.create_timestamp.timestamp() for r in by_id.values())
            print(f"\nservices ready after {services_ready_s:.1f}s; runs: created, started, ended (s):")
            for r in sorted(by_id.values(), key=lambda r: r.create_timestamp):
                run = r.dagster_run
                print(
                    f"  {run.tags[STREAM_TAG][:12]:12} {run.run_id[:8]} {run.status.value:8} "
                    f"retry {run.tags.get('dagster/retry_number', '-')} {r.create_timestamp.timestamp() - t0:6.1f} "
                    f"{r.start_time - t0:6.1f} {r.end_time - t0:6.1f}"
                )

            # The instance, as loaded from Postgres, is the production one.
            from dagster._core.run_coordinator import QueuedRunCoordinator
            from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

            assert isinstance(instance.run_storage, PostgresRunStorage)
            assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
            assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
            assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
            limits = instance.run_coordinator.get_run_queue_config().tag_concurrency_limits
            assert [(x["key"], x["limit"]) for x in limits] == [(STREAM_TAG, 1)], limits

            # Every run went through the queue and was launched on the gRPC code server.
            for record in by_id.values():
                run = record.dagster_run
                origin = run.remote_job_origin.repository_origin.code_location_origin
                assert getattr(origin, "port", None) == grpc_port, origin
                assert instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_ENQUEUED).records

            # Never two runs of one stream at once (start/end times from the Postgres run records).
            for name, stream_records in records.items():
                spans = [(r.start_time, r.end_time, r.dagster_run.run_id[:8]) for r in stream_records]
                assert all(start and end for start, end, _ in spans), spans
                for (_, end, earlier), (start, _, later) in zip(spans, spans[1:], strict=False):
                    assert start >= end, f"runs {earlier} and {later} of {name} overlapped: {spans}"

            # Batches 1 and 2 waited together; the queue started batch 2 only after batch 1 finished, so
            # it trained on top of v1. (Had they overlapped, both would have started from no model.)
            versions = registry.versions(spec.name)
            assert versions[0].meta["run_id"] == first_id
            assert versions[1].meta["run_id"] == second_id and versions[1].parent == "v1"
            assert by_id[second_id].start_time >= by_id[first_id].end_time
            # The limit is per stream: the other stream's run was launched while batch 1 ran.
            assert event_time(instance, gap_id, dg.DagsterEventType.RUN_STARTING) < by_id[first_id].end_time

            # The failed run was retried by the daemon max_retries times; every attempt failed the same way.
            assert by_id[gap_id].dagster_run.status == dg.DagsterRunStatus.FAILURE
            assert "batch refused (gap)" in run_log_text(instance, gap_id)
            retries = [r for r in records[broken.name] if r.dagster_run.tags.get("dagster/root_run_id") == gap_id]
            assert [int(r.dagster_run.tags["dagster/retry_number"]) for r in retries] == [1, 2]
            assert retries[0].dagster_run.tags["dagster/parent_run_id"] == gap_id
            for retry in retries:
                assert retry.dagster_run.status == dg.DagsterRunStatus.FAILURE
                assert "batch refused (gap)" in run_log_text(instance, retry.dagster_run.run_id)
            assert not registry.versions(broken.name)

            # The sensor trained the rest: every version comes from a successful run stored in Postgres.
            assert [v.name for v in versions][:3] == ["v1", "v2", "v3"]
            assert versions[2].meta["rows_learned_total"] == ROWS
            assert by_id[versions[2].meta["run_id"]].dagster_run.tags.get("dagster/sensor_name")
            for version in versions:
                assert by_id[version.meta["run_id"]].dagster_run.status == dg.DagsterRunStatus.SUCCESS

            # The daemon's heartbeats are in Postgres too: sensors, the run queue, the retry consumer.
            heartbeats = instance.get_daemon_heartbeats()
            assert {"SENSOR", "QUEUED_RUN_COORDINATOR", "EVENT_LOG_CONSUMER"} <= set(heartbeats), sorted(heartbeats)
    finally:
        processes.stop()
    print(f"production-mode Dagster test took {time.monotonic() - started_at:.1f}s")
