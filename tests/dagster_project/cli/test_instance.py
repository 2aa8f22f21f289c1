"""`streamfit instance migrate`: the compose init step, on a real (SQLite) Dagster instance."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._daemon.auto_run_reexecution.event_log_consumer import (
    DAGSTER_EVENT_TYPES,
    _fetch_persisted_cursors,
)

from dagster_project.instance import run_retry_cursor_keys, write_instance_config, write_postgres_instance_config
from tests.helpers import failing_job, succeeding_job


def retry_cursors(instance: dg.DagsterInstance) -> dict[str, str]:
    return instance.daemon_cursor_storage.get_cursor_values(set(run_retry_cursor_keys()))


def test_a_run_that_fails_before_the_daemons_first_pass_is_still_read_by_run_retries(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    home = tmp_path / "dagster_home"
    write_instance_config(home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))

    migrated = cli("instance", "migrate")
    assert migrated.exit_code == 0, migrated.output
    assert "run retries: the daemon retries runs that fail after event 0 (started)" in migrated.output

    with dg.DagsterInstance.get() as instance:
        assert retry_cursors(instance) == {key: "0" for key in run_retry_cursor_keys()}
        # Read the way the daemon reads them (Dagster's private key format): if Dagster renames its
        # cursor keys or retries on other events, this fails instead of the retries going quiet.
        daemon_view = _fetch_persisted_cursors(instance, DAGSTER_EVENT_TYPES, logging.getLogger(__name__))
        assert daemon_view == {event_type: 0 for event_type in DAGSTER_EVENT_TYPES}
        # No daemon has run yet. Without the cursors its first pass would start at the log's end,
        # after this failure, and never retry it; with them the failure is where it reads from.
        result = failing_job.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        cursor = int(retry_cursors(instance)[f"EVENT_LOG_CONSUMER_CURSOR-{dg.DagsterEventType.RUN_FAILURE.value}"])
        unread = instance.event_log_storage.get_logs_for_all_runs_by_log_id(
            after_cursor=cursor, dagster_event_type={dg.DagsterEventType.RUN_FAILURE}
        )
        assert [e.run_id for e in unread.values()] == [result.run_id]

    # Migrating again (an upgrade) keeps the cursors: failures since are still retried.
    again = cli("instance", "migrate")
    assert again.exit_code == 0, again.output
    assert "after event 0 (kept)" in again.output
    with dg.DagsterInstance.get() as instance:
        assert retry_cursors(instance) == {key: "0" for key in run_retry_cursor_keys()}


def test_migrate_without_dagster_home_names_the_fix(cli, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    result = cli("instance", "migrate")
    assert result.exit_code != 0
    assert "DAGSTER_HOME is not set: set it to the directory that holds the instance's dagster.yaml" in result.output


@pytest.mark.parametrize("command", [("instance", "migrate"), ("instance", "prune-runs", "--dry-run")])
def test_a_postgres_instance_without_its_connection_settings_names_them(
    cli, command, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The production dagster.yaml reads its Postgres connection from DAGSTER_PG_*: without them the
    commands printed a 60-line configuration traceback with the variable's name buried in it."""
    home = tmp_path / "dagster_home"
    write_postgres_instance_config(home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    for name in ("DAGSTER_PG_DB", "DAGSTER_PG_HOST", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_PORT", "DAGSTER_PG_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    result = cli(*command)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert (
        f"the Dagster instance in {home}/dagster.yaml reads DAGSTER_PG_DB, DAGSTER_PG_HOST, DAGSTER_PG_PASSWORD, "
        "DAGSTER_PG_PORT, DAGSTER_PG_USERNAME from the environment, and they are not set" in result.output
    )


def test_prune_runs_deletes_old_finished_runs_but_those_a_halt_names(
    cli, registry, spec, specs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """`streamfit instance prune-runs` on DAGSTER_HOME: a dry run first, then the deletion, keeping the
    failed run a halted stream names; with retention 0 and no --older-than-days it refuses, saying why.
    Another stream's spec file that does not load stops nothing (it crashed the command)."""
    (specs_dir / "zz_broken.yaml").write_text("name: broken\ntask: classification\nfeaturez: []\n")
    home = tmp_path / "dagster_home"
    write_instance_config(home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        done = [succeeding_job.execute_in_process(instance=instance).run_id for _ in range(3)]
        halted = failing_job.execute_in_process(instance=instance, raise_on_error=False).run_id
    registry.set_halt(spec.name, {"kind": "failed_run", "summary": "a failing batch", "run_id": halted})
    time.sleep(0.5)  # older than the 0.09 s (1e-06 days) asked for below

    preview = cli("instance", "prune-runs", "--older-than-days", "0.000001", "--keep-per-job", "0", "--dry-run")
    assert preview.exit_code == 0, preview.output
    assert "would delete 3 finished runs" in preview.output
    assert "1 a halted stream needs (its run and group)" in preview.output
    pruned = cli("instance", "prune-runs", "--older-than-days", "0.000001", "--keep-per-job", "0")
    assert pruned.exit_code == 0, pruned.output
    assert "runs older than 1e-06 days: deleted 3 finished runs" in pruned.output
    with dg.DagsterInstance.get() as instance:
        assert [r.run_id for r in instance.get_runs()] == [halted] and not any(map(instance.get_run_by_id, done))

    monkeypatch.setenv("STREAMFIT_RUN_RETENTION_DAYS", "0")
    refused = cli("instance", "prune-runs")
    assert refused.exit_code != 0 and "keeps every run; pass --older-than-days" in refused.output
