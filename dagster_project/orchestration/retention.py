"""Run retention: delete finished Dagster runs older than a retention period, and what they left on disk.

Dagster keeps every run and its event log for ever (its retention settings cover sensor and
schedule ticks only). A stream that registers a version every few minutes grows the instance by
about 330 KB a run on SQLite (the run's event log database and its compute logs; 33 MB per 100
versions in the demo's soak), so a year of it is tens of GB and a run list nobody can page
through. What a version learned is in the registry (offsets, metrics, decisions), not in the run,
so old runs can go. Never deleted: a run not finished yet, a run a halted stream names (re-executing
it is the fix), and the newest `keep` runs of every job (the Kafka sensor reads the newest run of
the head to recognise a failed batch, the drift sensor the newest batch's tags).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dagster as dg

RETENTION_DAYS_ENV = "STREAMFIT_RUN_RETENTION_DAYS"
DEFAULT_RETENTION_DAYS = 30.0
DEFAULT_KEEP_PER_JOB = 100
RETENTION_CRON = "23 3 * * *"  # daily, off the hour the full retrains run at
PAGE = 500  # runs read at a time


def retention_days(environ: dict[str, str] | None = None) -> float | None:
    """Days finished runs are kept (`STREAMFIT_RUN_RETENTION_DAYS`, default 30); None: for ever (0)."""
    raw = (environ if environ is not None else os.environ).get(RETENTION_DAYS_ENV, "").strip()
    if not raw:
        return DEFAULT_RETENTION_DAYS
    try:
        days = float(raw)
    except ValueError:
        raise ValueError(f"{RETENTION_DAYS_ENV}={raw!r} is not a number of days (0 keeps every run)") from None
    if not math.isfinite(days) or days < 0:
        raise ValueError(f"{RETENTION_DAYS_ENV}={raw!r} must be a positive number of days (0 keeps every run)")
    return None if days == 0 else days


@dataclass
class Pruned:
    """What a pass deleted (or would have, with dry_run) and what it kept among the old runs."""

    deleted: list[str] = field(default_factory=list)
    kept_halted: list[str] = field(default_factory=list)
    kept_newest: int = 0
    freed_bytes: int = 0

    def summary(self, dry_run: bool = False) -> str:
        verb = "would delete" if dry_run else "deleted"
        kept = f"; kept {self.kept_newest} among each job's newest runs"
        halted = f" and {len(self.kept_halted)} a halted stream needs (its run and group)" if self.kept_halted else ""
        return f"{verb} {len(self.deleted)} finished runs ({self.freed_bytes / 1e6:.1f} MB on disk){kept}{halted}"


def halted_runs(registry, streams: Iterable[str]) -> set[str]:
    """Runs a halted stream names: the fix is re-executing them, so they stay. The streams are the
    specs' and every stream the registry holds (a halted stream whose spec file no longer loads
    keeps its run too)."""
    held = registry.streams()
    found = set()
    for stream in {*streams, *held}:
        halt = registry.halt(stream)
        if halt and halt.get("run_id"):
            found.add(str(halt["run_id"]))
    return found


def with_run_groups(instance: dg.DagsterInstance, run_ids: set[str]) -> set[str]:
    """The runs and every run of their groups: a halted run is usually the daemon's last retry, and
    re-executing it from failure loads its parent and root runs (`Could not load ancestor run`)."""
    import dagster as dg

    kept = set(run_ids)
    for run_id in run_ids:
        run = instance.get_run_by_id(run_id)
        if run is None:
            continue
        try:
            group = instance.get_run_group(run_id)
        except dg.DagsterRunNotFoundError:  # its root is gone (pruned by an older release, or by hand)
            root = run.root_run_id or run_id
            group = (root, instance.get_runs(dg.RunsFilter(tags={"dagster/root_run_id": root})))
        if group:
            kept.update(r.run_id for r in group[1])
    return kept


def prune_runs(
    instance: dg.DagsterInstance,
    older_than: timedelta,
    *,
    keep: set[str] = frozenset(),  # type: ignore[assignment]
    keep_per_job: int = DEFAULT_KEEP_PER_JOB,
    dry_run: bool = False,
    now: datetime | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Pruned:
    """Delete finished runs created more than `older_than` ago, except those in `keep` and each job's
    newest `keep_per_job`, with their event logs, compute logs and op outputs."""
    import dagster as dg

    cutoff = (now or datetime.now(UTC)) - older_than
    keep = with_run_groups(instance, set(keep))
    finished = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
    newest: dict[str, set[str]] = {}
    result = Pruned()
    cursor = None  # paging by run id: read every page before deleting (a deleted cursor ends the paging)
    while records := instance.get_run_records(
        filters=dg.RunsFilter(statuses=finished, created_before=cutoff), limit=PAGE, cursor=cursor
    ):
        cursor = records[-1].dagster_run.run_id
        for record in records:
            run = record.dagster_run
            if run.job_name not in newest:  # (a limit of 0 would read every run)
                latest = instance.get_run_records(filters=dg.RunsFilter(job_name=run.job_name), limit=keep_per_job)
                newest[run.job_name] = {r.dagster_run.run_id for r in latest} if keep_per_job else set()
            if run.run_id in keep:
                result.kept_halted.append(run.run_id)
            elif run.run_id in newest[run.job_name]:
                result.kept_newest += 1
            else:
                result.deleted.append(run.run_id)
    for number, run_id in enumerate(result.deleted, 1):
        result.freed_bytes += _disk_bytes(instance, run_id)
        if not dry_run:
            _delete(instance, run_id)
        if number % PAGE == 0 or number == len(result.deleted):
            progress(f"{number:,} of {len(result.deleted):,} runs {'measured' if dry_run else 'deleted'}")
    return result


def _run_paths(instance: dg.DagsterInstance, run_id: str) -> list[Path]:
    """Files a run leaves on local disk: its SQLite event log shard and its storage directory (op
    outputs and compute logs). `delete_run` clears the rows but leaves these."""
    paths = []
    shard = getattr(instance.event_log_storage, "path_for_shard", None)
    if callable(shard):
        paths.append(Path(shard(run_id)))
    paths.append(Path(instance.storage_directory()) / run_id)
    base = getattr(instance.compute_log_manager, "_base_dir", None)  # LocalComputeLogManager's
    if base:
        paths.append(Path(base) / run_id)
    return list(dict.fromkeys(paths))


def _disk_bytes(instance: dg.DagsterInstance, run_id: str) -> int:
    total = 0
    for path in _run_paths(instance, run_id):
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return total


def _delete(instance: dg.DagsterInstance, run_id: str) -> None:
    instance.delete_run(run_id)  # the run and its events (materializations included)
    # SQLite's event storage remembers shards it created the tables of; one read after the file is
    # gone would open an empty file without them.
    getattr(instance.event_log_storage, "_initialized_dbs", set()).discard(run_id)
    for path in _run_paths(instance, run_id):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file():
            path.unlink(missing_ok=True)
