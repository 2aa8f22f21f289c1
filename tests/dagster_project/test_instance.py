"""The Dagster instance Streamfit writes into DAGSTER_HOME, as Dagster loads it."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from dagster_project.instance import write_instance_config


def test_the_daemon_evaluates_sensors_in_threads(tmp_path: Path) -> None:
    """Two sensors a stream: evaluated one after another, a stream's Kafka sensor ticked every 19 s
    (p50) instead of 5 s with 10 streams training, every 64 s with 30; in 4 threads, 24 s at 30."""
    write_instance_config(tmp_path)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.get_settings("sensors") == {"use_threads": True, "num_workers": 4}
