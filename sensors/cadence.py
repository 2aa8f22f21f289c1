"""How often the Dagster daemon really evaluates a sensor, and the setting that gets the cadence asked for.

Dagster's sensor daemon runs one evaluation loop every 5 s (`MIN_INTERVAL_LOOP_TIME`) and
evaluates a sensor when the time since its last tick is at least `minimum_interval_seconds`.
With an interval equal to a multiple of the loop (the natural 5 s or 10 s), the loop's jitter
puts that elapsed time a hair under the interval every other loop, and the sensor skips a whole
loop: a 5 s Kafka sensor ran every 10 s about half the time (measured: produce -> run enqueued
spread over 1-10 s). Asking for a little less than a whole number of loops keeps the cadence.
"""

from __future__ import annotations

DAEMON_LOOP_S = 5  # dagster._daemon.sensor.MIN_INTERVAL_LOOP_TIME in Dagster 1.13
LOOP_JITTER_MARGIN_S = 2


def minimum_interval_for(wanted_s: int) -> int:
    """`minimum_interval_seconds` that makes the daemon evaluate every `wanted_s` seconds, rounded to
    the nearest whole number of daemon loops (at least one: nothing is evaluated more often)."""
    loops = max(1, round(wanted_s / DAEMON_LOOP_S))
    return max(1, loops * DAEMON_LOOP_S - LOOP_JITTER_MARGIN_S)
