"""The training benchmark's Streamfit batch does what a run does: the sensor's tail held out of
learning, the champion step's gate scoring the candidate and the champion on that tail (not on the
learned rows), and the rate counted on learned rows. Structure only, never speed."""

from __future__ import annotations

import pytest

from benchmarks.data import bench_spec, encode, event_ranges, events, produce_round_robin
from benchmarks.throughput import STAGES, streamfit_batch
from dagster_project.registry.promotion import spec_tail_split
from dagster_project.registry.store import FilesystemRegistry

WARMUP = 400
ROWS = 1_000


@pytest.mark.timeout(60)
def test_streamfit_batch_holds_out_the_tail_and_runs_the_champion_step(kafka_settings, tmp_path) -> None:
    spec = bench_spec("bench_train_fidelity")
    produce_round_robin(kafka_settings, spec, encode(events(WARMUP + ROWS)))
    registry_root, io_dir = tmp_path / "registry", tmp_path / "io"
    io_dir.mkdir()
    streamfit_batch(kafka_settings, spec, event_ranges(spec, 0, WARMUP), registry_root, io_dir, tail=False)

    ranges = event_ranges(spec, WARMUP, ROWS)
    stages, version = streamfit_batch(kafka_settings, spec, ranges, registry_root, io_dir)

    assert list(stages) == list(STAGES) and all(s >= 0 for s in stages.values())
    learn_ends = spec_tail_split(spec, ranges)
    tail = sum(end - learn_ends[p] for p, (_, end) in ranges.items())
    assert 0 < tail < ROWS
    assert version.meta["rows"]["trained"] == ROWS - tail
    assert version.learned == learn_ends  # the next batch starts at the tail

    registry = FilesystemRegistry(registry_root)
    (gate,) = [d for d in registry.decisions(spec.name) if d.get("kind") == "promotion_gate"]
    assert gate["candidate"] == version.name
    assert gate["rows"] == tail  # scored on the unseen tail only, as the champion step does
