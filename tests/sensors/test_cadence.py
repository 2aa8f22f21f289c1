"""The sensors' real cadence under Dagster's 5 s daemon loop."""

from __future__ import annotations

import random

import pytest
from dagster._daemon.sensor import MIN_INTERVAL_LOOP_TIME

from sensors.cadence import DAEMON_LOOP_S, minimum_interval_for
from tests.conftest import synthetic_spec


def simulated_gaps(minimum_interval_s: int, loops: int = 2000, seed: int = 0) -> list[float]:
    """Gaps between ticks of a daemon that loops every 5 s and starts each evaluation 0-0.4 s late."""
    rng = random.Random(seed)
    last_tick: float | None = None
    gaps = []
    for k in range(loops):
        now = k * DAEMON_LOOP_S + rng.uniform(0.0, 0.4)
        if last_tick is None or now - last_tick >= minimum_interval_s:
            if last_tick is not None:
                gaps.append(now - last_tick)
            last_tick = now
    return gaps


def test_the_daemon_loop_is_still_five_seconds() -> None:
    """The mapping below assumes Dagster's loop time; an upgrade that changes it must be noticed."""
    assert MIN_INTERVAL_LOOP_TIME == DAEMON_LOOP_S


@pytest.mark.parametrize("wanted", [5, 10, 30])
def test_naive_interval_skips_loops(wanted: int) -> None:
    """Why the mapping exists: asking for exactly the wanted interval often waits a whole extra loop."""
    assert max(simulated_gaps(wanted)) > wanted + DAEMON_LOOP_S - 1


@pytest.mark.parametrize(("wanted", "expected"), [(1, 5), (5, 5), (7, 5), (8, 10), (10, 10), (30, 30), (60, 60)])
def test_mapped_interval_keeps_the_wanted_cadence(wanted: int, expected: int) -> None:
    """Every gap is the wanted interval rounded to whole daemon loops, give or take the jitter."""
    gaps = simulated_gaps(minimum_interval_for(wanted))
    assert expected - 0.5 < min(gaps) <= max(gaps) < expected + 0.5


def test_default_kafka_sensor_is_evaluated_every_daemon_loop(tmp_path) -> None:
    from dagster_project.factory import build_stream_definitions

    spec = synthetic_spec()
    sensors = {s.name: s for s in build_stream_definitions(spec).sensors}
    assert sensors[f"{spec.name}_kafka_sensor"].minimum_interval_seconds < DAEMON_LOOP_S
