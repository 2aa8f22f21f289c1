"""Names that tie things together, defined and parsed in one place.

Dagster finds jobs, ops and runs by name and tag; the registry finds versions by `v<N>`. A name
built in one module and matched in another must not be typed twice, so both sides call these.
Imports no Dagster (the scorer and CLI use the version helpers).
"""

from __future__ import annotations

import re
from typing import Any

# Run tags
STREAM_TAG = "streamfit/stream"  # the instance's run queue allows one run per value (instance.py)
ACTION_TAG = "streamfit/action"
RANGES_TAG = "streamfit/ranges"
PARENT_TAG = "streamfit/parent"
LAG_AFTER_BATCH_TAG = "streamfit/lag_after_batch"
EARLY_CUT_TAG = "streamfit/early_cut"  # "first" or "second": the batch was cut short (batch.early_cut)
CUT_REASON_TAG = "streamfit/cut_reason"  # why it was cut, with the numbers
RELEARNS_TAG = "streamfit/relearns_run"  # the run whose version of this batch left the registry (a restore)
RESUMES_TAG = "streamfit/resumes_run"  # the failed run whose halted batch this run resumes (sensors/auto_resume.py)
RETRIED_RESOLUTION = "retried in a new run"  # `streamfit batches retry`'s halt resolution

# Run states in which a stream's run still holds its turn (the sensors skip while one exists)
IN_FLIGHT_STATES = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")


def in_flight_statuses() -> list[Any]:
    """`IN_FLIGHT_STATES` as Dagster run statuses (Dagster is imported only by its callers)."""
    import dagster as dg

    return [dg.DagsterRunStatus[state] for state in IN_FLIGHT_STATES]


# Jobs and ops of one stream
def training_job(stream: str) -> str:
    return f"{stream}_training"


def micro_batch_op(stream: str) -> str:
    """The op name Dagster gives the `[stream, "micro_batch"]` asset (its run config goes here)."""
    return f"{stream}__micro_batch"


def read_plan_op(stream: str) -> str:
    """The op that splits a scaled-out stream's batch by partition group (its run config goes here)."""
    return f"{stream}__read_plan"


def read_group_op(stream: str) -> str:
    return f"{stream}__read_group"


def merge_reads_op(stream: str) -> str:
    return f"{stream}__merge_reads"


def rollback_job(stream: str) -> str:
    return f"{stream}_rollback"


def rollback_op(stream: str) -> str:
    return f"{stream}_rollback_champion"


def retrain_job(stream: str) -> str:
    return f"{stream}_retrain"


def retrain_op(stream: str) -> str:
    return f"{stream}_retrain_model"


def full_retrain_schedule(stream: str) -> str:
    return f"{stream}_full_retrain"


# Registry versions
VERSION_NAME = re.compile(r"^v(\d+)$")


def version_name(number: int) -> str:
    return f"v{number}"


def version_number(name: str) -> int:
    """`v7` -> 7, with an error that names the expected form."""
    match = VERSION_NAME.match(name)
    if not match:
        raise ValueError(f"{name!r} is not a version name (expected v<N>, such as v7)")
    return int(match.group(1))


def is_version_name(name: str) -> bool:
    return VERSION_NAME.match(name) is not None
