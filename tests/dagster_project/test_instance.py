"""The Dagster instance Streamfit writes into DAGSTER_HOME, as Dagster loads it."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from dagster_project.instance import write_instance_config
from tests.helpers import failing_job


def test_the_daemon_evaluates_sensors_in_threads(tmp_path: Path) -> None:
    """Two sensors a stream: evaluated one after another, a stream's Kafka sensor ticked every 19 s
    (p50) instead of 5 s with 10 streams training, every 64 s with 30; in 4 threads, 24 s at 30."""
    write_instance_config(tmp_path)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.get_settings("sensors") == {"use_threads": True, "num_workers": 4}


def test_a_failure_the_run_retry_consumer_skipped_is_read_again(tmp_path: Path, monkeypatch) -> None:
    """Dagster's run-retry consumer can read a failure event before the run's status says FAILURE:
    it does not retry, and its cursor moves past the event for good. The run kept `will_retry: true`
    and the Kafka sensor waited for that retry for ever (a daemon test timed out so, on a loaded
    machine). Past LOST_RETRY_S the cursor goes back to just before the failure, once."""
    from dagster_project import instance as streamfit_instance
    from dagster_project.instance import ask_retry_again, initialize_storage, lost_retry, run_retry_cursor_keys

    write_instance_config(tmp_path)
    initialize_storage(tmp_path)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        run_id = failing_job.execute_in_process(instance=instance, raise_on_error=False).run_id
        run = instance.get_run_by_id(run_id)
        assert run.status == dg.DagsterRunStatus.FAILURE and run.tags.get("dagster/will_retry") == "true"
        failure_key = run_retry_cursor_keys()[0]
        end = instance.event_log_storage.get_maximum_record_id()
        instance.daemon_cursor_storage.set_cursor_values({failure_key: str(end)})  # what the race leaves

        assert not lost_retry(instance, run), "a fresh failure is the daemon's to retry"
        monkeypatch.setattr(streamfit_instance, "LOST_RETRY_S", 0.0)
        assert lost_retry(instance, run)
        assert ask_retry_again(instance, run)
        cursor = int(instance.daemon_cursor_storage.get_cursor_values({failure_key})[failure_key])
        changes = instance.fetch_run_status_changes(
            dg.RunStatusChangeRecordsFilter(event_type=dg.DagsterEventType.RUN_FAILURE), limit=10
        ).records
        (failure,) = [c.storage_id for c in changes if c.run_id == run_id]
        assert cursor == failure - 1
        assert not ask_retry_again(instance, run), "already before it: nothing to move"
