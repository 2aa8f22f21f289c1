"""The Dagster instance Streamfit runs on: SQLite in DAGSTER_HOME locally, Postgres in production.

Training runs of one stream are serialized by a run-queue tag limit (online learning is
order-dependent); failed runs are retried by the daemon; the queue is polled every second
because run start-up, not compute, dominates how fresh a model is.

`postgres_instance_config()` is the production variant (deploy/dagster.yaml is this, written
out): the same run queue and retries, Postgres run/event/schedule storage whose connection
settings are `env:` entries (never literals), and the artifact and compute-log directories
from the environment so every container that runs Dagster code can share one volume.
"""

from __future__ import annotations

import copy
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from dagster_project import names

INSTANCE_CONFIG: dict[str, Any] = {
    "run_coordinator": {
        "module": "dagster.core.run_coordinator",
        "class": "QueuedRunCoordinator",
        "config": {
            "dequeue_interval_seconds": 1,
            "tag_concurrency_limits": [
                {"key": names.STREAM_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
            ],
        },
    },
    "run_retries": {"enabled": True, "max_retries": 2},
    # Each stream has a Kafka and a drift sensor, and the daemon evaluated them one after another:
    # with 10 streams training, a stream's sensor ticked every 19 s (p50) instead of every 5 s, with
    # 30 every 64 s. A tick mostly waits on the broker, so threads overlap the waits.
    "sensors": {"use_threads": True, "num_workers": 4},
    # A run whose worker was killed (kill -9, OOM) would stay STARTED and hold its stream forever:
    # monitoring fails it once it outlives its `dagster/max_runtime_seconds` tag (the spec's
    # batch.max_run_seconds), and the retry above relaunches it from the failed step.
    "run_monitoring": {"enabled": True, "poll_interval_seconds": 5, "start_timeout_seconds": 180},
    "telemetry": {"enabled": False},
}


def write_instance_config(dagster_home: Path) -> Path:
    """Create DAGSTER_HOME with Streamfit's dagster.yaml (kept if the user already has one)."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    path = dagster_home / "dagster.yaml"
    if not path.exists():
        path.write_text(yaml.safe_dump(INSTANCE_CONFIG, sort_keys=False))
    return path


# Environment variables the production instance reads (every process that loads the instance:
# webserver, daemon, code server and the run workers it spawns).
POSTGRES_ENV: dict[str, str] = {
    "username": "DAGSTER_PG_USERNAME",
    "password": "DAGSTER_PG_PASSWORD",
    "hostname": "DAGSTER_PG_HOST",
    "port": "DAGSTER_PG_PORT",
    "db_name": "DAGSTER_PG_DB",
}
POSTGRES_SCHEME = "postgresql+psycopg2"
STORAGE_DIR_ENV = "DAGSTER_STORAGE_DIR"  # run artifacts (the default IO manager's files)
COMPUTE_LOGS_DIR_ENV = "DAGSTER_COMPUTE_LOGS_DIR"  # stdout/stderr of runs, shown in the UI


def postgres_instance_config() -> dict[str, Any]:
    """Streamfit's instance on Postgres: INSTANCE_CONFIG plus storage, monitoring and tick retention."""
    return {
        "storage": {
            "postgres": {
                "postgres_db": {
                    **{key: {"env": name} for key, name in POSTGRES_ENV.items()},
                    # The driver dagster-postgres installs (psycopg2-binary). Without it SQLAlchemy 2.1
                    # picks psycopg 3 for `postgresql://`, which is not installed.
                    "scheme": POSTGRES_SCHEME,
                }
            }
        },
        "local_artifact_storage": {
            "module": "dagster.core.storage.root",
            "class": "LocalArtifactStorage",
            "config": {"base_dir": {"env": STORAGE_DIR_ENV}},
        },
        "compute_logs": {
            "module": "dagster.core.storage.local_compute_log_manager",
            "class": "LocalComputeLogManager",
            "config": {"base_dir": {"env": COMPUTE_LOGS_DIR_ENV}},
        },
        **copy.deepcopy(INSTANCE_CONFIG),
        # A run stuck starting (its code server restarted mid-launch) fails instead of holding the
        # stream's queue slot forever; the retry above then relaunches it.
        "run_monitoring": {
            "enabled": True,
            "poll_interval_seconds": 5,
            "start_timeout_seconds": 180,
            "cancel_timeout_seconds": 180,
        },
        # The Kafka sensor ticks every few seconds per stream: keep skipped ticks for a day, not forever.
        "retention": {"sensor": {"purge_after_days": {"skipped": 1, "failure": 30, "success": -1}}},
    }


def write_postgres_instance_config(dagster_home: Path, overwrite: bool = False) -> Path:
    """Write the Postgres-backed dagster.yaml into `dagster_home` (an existing one is kept unless `overwrite`)."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    path = dagster_home / "dagster.yaml"
    if overwrite or not path.exists():
        path.write_text(yaml.safe_dump(postgres_instance_config(), sort_keys=False))
    return path


def initialize_storage(dagster_home: Path) -> None:
    """Create the instance's databases once, before several processes open them.

    The daemon, the web UI and the code server each migrate a fresh SQLite schema on start; when
    they start together they race and can leave two alembic heads, after which none can load.
    """
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.get_runs(limit=1)
        instance.all_instigator_state()
        instance.get_latest_materialization_events([])
        _start_run_retry_cursors(instance)


def open_instance() -> Any:
    """`DagsterInstance.get()`, with a missing environment variable of its dagster.yaml (the Postgres
    connection's `DAGSTER_PG_*`) named in one line instead of a 60-line configuration traceback."""
    import dagster as dg

    try:
        return dg.DagsterInstance.get()
    except dg.DagsterInvalidConfigError as exc:
        missing = sorted(set(re.findall(r'environment variable "(\w+)" which is not set', str(exc))))
        if not missing:
            raise
        home = os.environ.get("DAGSTER_HOME")
        raise RuntimeError(
            f"the Dagster instance in {home}/dagster.yaml reads {', '.join(missing)} from the environment, and "
            f"{'it is' if len(missing) == 1 else 'they are'} not set: set {'it' if len(missing) == 1 else 'them'} "
            "(the Postgres connection: deploy/README.md)"
        ) from None


def migrate(echo: Callable[[str], None] = print) -> None:
    """Create or migrate the tables of the instance in DAGSTER_HOME, as `dagster instance migrate`,
    and start the daemon's run-retry consumer at the event log's end.

    Without the cursors the consumer starts wherever the log ends on its first pass: a run that
    failed between the deployment's start and that pass (the daemon starts last, and slowly) was
    never retried. Cursors already there are kept, so a failure during an upgrade is still retried.
    """

    if not os.environ.get("DAGSTER_HOME"):
        raise RuntimeError("DAGSTER_HOME is not set: set it to the directory that holds the instance's dagster.yaml")
    with open_instance() as instance:
        instance.upgrade(echo)
        started = _start_run_retry_cursors(instance)
        cursors = instance.daemon_cursor_storage.get_cursor_values(set(run_retry_cursor_keys()))
    state = "started" if started else "kept"
    echo(f"run retries: the daemon retries runs that fail after event {min(map(int, cursors.values()))} ({state})")


def run_retry_cursor_keys() -> list[str]:
    """Where Dagster's run-retry consumer (EventLogConsumerDaemon) keeps its place in the event log."""
    import dagster as dg

    events = (dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.RUN_SUCCESS)
    return [f"EVENT_LOG_CONSUMER_CURSOR-{event.value}" for event in events]


def _start_run_retry_cursors(instance) -> set[str]:
    """Start the daemon's run-retry consumer at the event log's end now, not at its first pass.

    Without cursors the consumer warns "No cursor for event type ..., ignoring older events" and
    starts wherever the log ends when it first runs, skipping runs that failed before (they are
    never retried). Returns the keys it set; cursors already there are kept.
    """
    keys = set(run_retry_cursor_keys())
    storage = instance.daemon_cursor_storage
    missing = keys - set(storage.get_cursor_values(keys))
    if missing:
        end = instance.event_log_storage.get_maximum_record_id() or 0
        storage.set_cursor_values({key: str(end) for key in missing})
    return missing


# How long a failed run marked for retry may wait for its retry before the sensor asks again. The
# daemon's run-retry consumer passes every few seconds; a minute is many passes on a loaded machine.
LOST_RETRY_S = 60.0


def lost_retry(instance: Any, run: Any) -> bool:
    """Whether a run Dagster marked `dagster/will_retry` failed over `LOST_RETRY_S` ago with no retry.

    Dagster's run-retry consumer can read a run's failure event before the run's own status says
    FAILURE (two writes; on SQLite two files): it then decides not to retry and moves its cursor
    past the event for good. The run keeps `will_retry: true` and the Kafka sensor waited for that
    retry for ever (a test's daemon run, once in a few full suites on a loaded machine)."""
    if run.tags.get("dagster/will_retry") != "true":
        return False
    record = instance.get_run_record_by_id(run.run_id)
    ended = record.end_time if record is not None else None
    if ended is None or time.time() - ended < LOST_RETRY_S:
        return False
    group = instance.get_run_group(run.run_id)
    return not any(r.parent_run_id == run.run_id for r in (group[1] if group else []))


def ask_retry_again(instance: Any, run: Any) -> bool:
    """Move the run-retry consumer's failure cursor back to just before `run`'s failure event, so
    its next pass reads it again (now with the run's status FAILURE) and retries the run. Dagster
    retries a run once whatever reads it twice. True when the cursor was moved."""
    import dagster as dg

    changes = instance.fetch_run_status_changes(  # the job's newest failures first: the lost one is recent
        dg.RunStatusChangeRecordsFilter(event_type=dg.DagsterEventType.RUN_FAILURE, job_names=[run.job_name]),
        limit=100,
    ).records
    failure = next((c.storage_id for c in changes if c.run_id == run.run_id), None)
    key = run_retry_cursor_keys()[0]  # RUN_FAILURE's
    current = instance.daemon_cursor_storage.get_cursor_values({key}).get(key)
    if failure is None or current is None or int(current) < failure:
        return False
    instance.daemon_cursor_storage.set_cursor_values({key: str(failure - 1)})
    return True
