"""Run retention on a real SQLite instance: old finished runs go with their files, the rest stay."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from dagster_project.orchestration.retention import halted_runs, prune_runs, retention_days
from dagster_project.registry.store import FilesystemRegistry
from tests.helpers import failing_job, succeeding_job


def _files(instance: dg.DagsterInstance, run_id: str) -> list[Path]:
    """What a run leaves on disk: its event-log shard and its storage directory."""
    shard = Path(instance.event_log_storage.path_for_shard(run_id))
    storage = Path(instance.storage_directory()) / run_id
    return [p for p in (shard, storage) if p.exists()]


def test_old_finished_runs_go_with_their_files_and_the_rest_stay(instance: dg.DagsterInstance, tmp_path) -> None:
    """Six finished runs of one job: the three newest stay whatever their age (one is in flight), as does a failed run a
    halted stream names (re-executing it is the fix) and a run in flight; the others go, with
    their event logs, compute logs and outputs, and what they took on disk is reported."""
    finished = [succeeding_job.execute_in_process(instance=instance).run_id for _ in range(6)]
    halted = failing_job.execute_in_process(instance=instance, raise_on_error=False).run_id
    failed_too = failing_job.execute_in_process(instance=instance, raise_on_error=False).run_id
    running = instance.create_run_for_job(succeeding_job, status=dg.DagsterRunStatus.STARTED).run_id
    assert all(_files(instance, run_id) for run_id in finished)
    registry = FilesystemRegistry(tmp_path / "registry")
    registry.set_halt("clicks", {"kind": "failed_run", "summary": "a failing batch", "run_id": halted})
    keep = halted_runs(registry, ["clicks", "other"])
    later = datetime.now(UTC) + timedelta(seconds=1)

    preview = prune_runs(instance, timedelta(0), keep=keep, keep_per_job=3, dry_run=True, now=later)
    assert sorted(preview.deleted) == sorted(finished[:4]) and all(instance.get_run_by_id(r) for r in finished)
    assert preview.freed_bytes > 0 and "would delete 4 finished runs" in preview.summary(dry_run=True)

    messages: list[str] = []
    pruned = prune_runs(instance, timedelta(0), keep=keep, keep_per_job=3, now=later, progress=messages.append)

    assert sorted(pruned.deleted) == sorted(finished[:4]) and pruned.kept_halted == [halted]
    assert pruned.kept_newest == 3  # two finished among succeeding_job's newest three, and failing_job's newest
    assert pruned.freed_bytes == preview.freed_bytes and messages == ["4 of 4 runs deleted"]
    for run_id in finished[:4]:
        assert instance.get_run_by_id(run_id) is None and not _files(instance, run_id)
    for run_id in [*finished[4:], halted, failed_too]:
        assert instance.get_run_by_id(run_id) is not None and list(instance.all_logs(run_id))
    assert instance.get_run_by_id(running).status == dg.DagsterRunStatus.STARTED


def test_a_halted_run_keeps_its_run_group_and_a_halt_is_found_without_its_spec(
    instance: dg.DagsterInstance, tmp_path
) -> None:
    """A halted run is usually the daemon's last retry: re-executing it from failure loads its parent
    and root runs, so pruning them broke the fix the halt names (`Could not load ancestor run`). And
    a halted stream whose spec file no longer loads still has its runs kept (the registry holds it)."""
    root = failing_job.execute_in_process(instance=instance, raise_on_error=False).run_id

    def retry_of(parent: str) -> str:  # as the daemon's run retries are recorded
        tags = {"dagster/parent_run_id": parent, "dagster/root_run_id": root}
        failed = dg.DagsterRunStatus.FAILURE
        return instance.create_run_for_job(
            failing_job, parent_run_id=parent, root_run_id=root, tags=tags, status=failed
        ).run_id

    retry = retry_of(root)
    halted = retry_of(retry)
    other = failing_job.execute_in_process(instance=instance, raise_on_error=False).run_id
    registry = FilesystemRegistry(tmp_path / "registry")
    registry.set_halt("clicks", {"kind": "failed_run", "summary": "a failing batch", "run_id": halted})
    keep = halted_runs(registry, [])  # no spec loads: the registry's streams are read
    later = datetime.now(UTC) + timedelta(seconds=1)

    pruned = prune_runs(instance, timedelta(0), keep=keep, keep_per_job=0, now=later)

    assert pruned.deleted == [other] and sorted(pruned.kept_halted) == sorted([root, retry, halted])
    assert all(instance.get_run_by_id(r) for r in (root, retry, halted))
    assert "3 a halted stream needs (its run and group)" in pruned.summary()

    # A root already gone (an older release kept only the halted run): the rest is kept, no crash
    # (Dagster's run group lookup raises when the root is missing, which failed every daily prune).
    instance.delete_run(root)
    again = prune_runs(instance, timedelta(0), keep=keep, keep_per_job=0, now=later)
    assert again.deleted == [] and sorted(again.kept_halted) == sorted([retry, halted])


def test_runs_younger_than_the_retention_stay(instance: dg.DagsterInstance) -> None:
    runs = [succeeding_job.execute_in_process(instance=instance).run_id for _ in range(3)]

    pruned = prune_runs(instance, timedelta(days=30), keep_per_job=0)

    assert pruned.deleted == [] and all(instance.get_run_by_id(r) for r in runs)


@pytest.mark.parametrize(("value", "days"), [("", 30.0), ("0", None), ("7", 7.0), (" 0.5 ", 0.5)])
def test_the_retention_comes_from_the_environment(value: str, days: float | None) -> None:
    assert retention_days({"STREAMFIT_RUN_RETENTION_DAYS": value}) == days


@pytest.mark.parametrize("value", ["thirty", "-1", "nan", "inf"])
def test_a_retention_that_is_not_a_number_of_days_names_the_setting(value: str) -> None:
    with pytest.raises(ValueError, match=r"STREAMFIT_RUN_RETENTION_DAYS=.*\(0 keeps every run\)"):
        retention_days({"STREAMFIT_RUN_RETENTION_DAYS": value})


def test_the_daily_job_prunes_past_the_configured_retention(
    instance: dg.DagsterInstance, tmp_path, monkeypatch
) -> None:
    """The `run_retention` job the daily schedule launches: the retention from the environment, halted
    streams' runs kept; with 0 it deletes nothing and says why."""
    from dagster_project.orchestration.retention_schedule import RETENTION_JOB, build_retention_definitions
    from dagster_project.resources import RegistryResource

    old = [succeeding_job.execute_in_process(instance=instance).run_id for _ in range(3)]
    halted = failing_job.execute_in_process(instance=instance, raise_on_error=False).run_id
    registry = FilesystemRegistry(tmp_path / "registry")
    registry.set_halt("clicks", {"kind": "failed_run", "summary": "a failing batch", "run_id": halted})
    resources = dg.Definitions(resources={"registry": RegistryResource(root=str(registry.root))})
    job = dg.Definitions.merge(build_retention_definitions(["clicks"]), resources).resolve_job_def(RETENTION_JOB)
    config = {"ops": {"prune_finished_runs": {"config": {"keep_per_job": 0}}}}

    monkeypatch.setenv("STREAMFIT_RUN_RETENTION_DAYS", "0")
    kept_all = job.execute_in_process(instance=instance, run_config=config)
    assert kept_all.output_for_node("prune_finished_runs") == 0 and all(instance.get_run_by_id(r) for r in old)

    monkeypatch.setenv("STREAMFIT_RUN_RETENTION_DAYS", "0.00001")  # 0.86 s
    time.sleep(1.0)  # every run so far is older than that
    pruned = job.execute_in_process(instance=instance, run_config=config)

    assert pruned.output_for_node("prune_finished_runs") == 4  # three old runs and the first retention run
    assert not any(instance.get_run_by_id(r) for r in [*old, kept_all.run_id])
    assert instance.get_run_by_id(halted) is not None and instance.get_run_by_id(pruned.run_id) is not None
