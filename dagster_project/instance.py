"""The Dagster instance Streamfit runs on locally: SQLite storage in DAGSTER_HOME.

Training runs of one stream are serialized by a run-queue tag limit (online learning is
order-dependent); failed runs are retried by the daemon; the queue is polled every second
because run start-up, not compute, dominates how fresh a model is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

INSTANCE_CONFIG: dict[str, Any] = {
    "run_coordinator": {
        "module": "dagster.core.run_coordinator",
        "class": "QueuedRunCoordinator",
        "config": {
            "dequeue_interval_seconds": 1,
            "tag_concurrency_limits": [
                {"key": "streamfit/stream", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
            ],
        },
    },
    "run_retries": {"enabled": True, "max_retries": 2},
    "telemetry": {"enabled": False},
}


def write_instance_config(dagster_home: Path) -> Path:
    """Create DAGSTER_HOME with Streamfit's dagster.yaml (kept if the user already has one)."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    path = dagster_home / "dagster.yaml"
    if not path.exists():
        path.write_text(yaml.safe_dump(INSTANCE_CONFIG, sort_keys=False))
    return path
