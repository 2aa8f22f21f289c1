"""Test helpers that talk to the real broker."""

from __future__ import annotations

import dagster as dg

from assets.training import batch_run_config
from dagster_project.datasets import synthetic_events
from dagster_project.events import make_event
from dagster_project.kafka_config import KafkaSettings
from dagster_project.offsets import Ranges
from dagster_project.producer import produce
from dagster_project.spec import StreamSpec


def produce_synthetic(settings: KafkaSettings, spec: StreamSpec, rows: int, start: int = 0, seed: int = 7) -> int:
    """Send synthetic rows [start, start+rows) keyed round-robin over the spec's partitions."""
    events = list(synthetic_events(rows=start + rows, change_at=10**9, seed=seed))[start:]
    pairs = ((e.event_id.encode(), make_event(e.event_id, e.features, e.label, 0.0)) for e in events)
    return produce(settings, spec, pairs)


def run_batch(defs: dg.Definitions, spec: StreamSpec, ranges: Ranges, instance: dg.DagsterInstance, **kwargs):
    job = defs.resolve_job_def(f"{spec.name}_training")
    return job.execute_in_process(run_config=batch_run_config(spec, ranges), instance=instance, **kwargs)
