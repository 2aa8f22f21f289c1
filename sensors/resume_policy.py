"""When a halted stream resumes by itself, and when its halt pages: no Dagster, so the exporter reads it too.

The sensor side is `sensors/auto_resume.py`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

# The errors that say "the infrastructure did not answer", not "this batch cannot be learned": the
# broker unreachable or timing out (kafka/io.py wraps the clients' errors in these), a partition
# without a leader during a failover, and the MLflow registry unreachable. Their subclasses
# `NotAuthorized` (an ACL) and `RangeBeyondTopic` (retention deleted the batch) are not transient.
TRANSIENT_ERRORS = frozenset({"BrokerUnavailable", "PartitionsLeaderless", "RegistryUnavailable"})
# The halt is recorded on a tick whose probe the broker answered, so the first resume is not delayed;
# after an automatic resume that failed too: 1 min, then doubled up to 15 min.
RESUME_FIRST_WAIT_S = 60.0
RESUME_MAX_WAIT_S = 900.0
# After this many automatic resumes failed (about half an hour of backoff) the halt pages like any
# other: the outage is long or it was not transient after all (the exporter's streamfit_halt_auto_resuming).
RESUMES_BEFORE_PAGING = 4
RESUME_KEY = "#resume"


def resume_wait_s(failed: int) -> float:
    """Backoff before the next automatic resume, after `failed` automatic resumes failed: 0, 1, 2, 4 ... 15 min."""
    return 0.0 if failed <= 0 else min(RESUME_FIRST_WAIT_S * 2 ** (failed - 1), RESUME_MAX_WAIT_S)


def auto_resume_record(error: str, run_key: str, parent: str | None, failed: int = 0) -> dict[str, Any]:
    """The halt's `auto_resume` entry: what failed, the batch's key and head, when to try again."""
    base = run_key.split(RESUME_KEY)[0]
    record = {
        "error": error,
        "run_key": base,
        "parent": parent or "none",
        "attempt": failed,  # automatic resumes requested so far
        "failed": failed,  # of which failed
        "not_before": time.time() + resume_wait_s(failed),
    }
    return record | {"status": resuming_story(record)}


def resume_key(auto: dict[str, Any], attempt: int) -> str:
    return f"{auto['run_key']}{RESUME_KEY}{attempt}"


def resuming_story(auto: dict[str, Any]) -> str:
    """How the halt resumes itself, for the skip message, the halt's summary and the alert."""
    when = datetime.fromtimestamp(float(auto["not_before"]), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        f"the failure was transient ({auto['error']}): resuming automatically after the broker answers; "
        f"attempt {int(auto['attempt']) + 1}, not before {when}"
    )


def pages(halt: dict[str, Any] | None) -> bool:
    """Whether a halt should page: any halt, unless it resumes by itself and has not failed too often."""
    if not halt:
        return False
    auto = halt.get("auto_resume")
    return not auto or int(auto.get("failed", 0)) >= RESUMES_BEFORE_PAGING
