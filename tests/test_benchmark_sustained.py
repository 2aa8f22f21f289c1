"""`python -m benchmarks --quick --sections sustained` runs end to end and reports every field.

Only the shape of the report is checked, never a speed: these machines' speed moves 2-3x between
runs, and whether a rate holds depends on the load other sessions put on the cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.sustained import covered_events

ROOT = Path(__file__).resolve().parent.parent
PHASE_FIELDS = {
    "rate",
    "produced_events",
    "produced_per_s",
    "learned_rows_per_s",
    "learned_vs_produced",
    "lag_mid",
    "lag_end",
    "lag_slope_rows_per_s",
    "holds",
}
FRESHNESS_FIELDS = {"p50", "p95", "max", "n", "censored"}


def test_covered_events_is_the_prefix_every_partition_has_reached():
    assert covered_events({0: 3, 1: 3}, 2) == 6  # events 0..5: offsets 0..2 on both partitions
    assert covered_events({0: 3, 1: 2}, 2) == 5  # event 5 (partition 1, offset 2) is not covered yet
    assert covered_events({0: 4}, 2) == 1  # nothing read on partition 1: only event 0
    assert covered_events({}, 2) == 0


# The section's broker code is the freshness section's; `python -m benchmarks --broker kafka` runs it on Kafka.
@pytest.mark.one_broker
@pytest.mark.timeout(900)
def test_quick_sustained_section_reports_each_rate_for_both_systems(kafka_bootstrap, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--sections",
            "sustained",
            "--sustained-rates",
            "2000",
            "--sustained-seconds",
            "20",  # the report's shape needs a few batch cycles, not the quick mode's 40 s per phase
            "--out",
            str(tmp_path),
            "--bootstrap",
            kafka_bootstrap,
            "--no-chart",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "7. Sustained load" in done.stdout and "highest rate that holds" in done.stdout, done.stdout
    assert "sustained: streamfit @" in done.stderr and "sustained: river_loop @" in done.stderr  # progress lines

    section = json.loads((tmp_path / "latest.json").read_text())["sustained"]
    assert "error" not in section, section.get("error")
    assert set(section["rates"]) == {"2000"}
    for rate in section["rates"].values():
        streamfit, river = rate["streamfit"], rate["river_loop"]
        assert PHASE_FIELDS <= set(streamfit) and PHASE_FIELDS <= set(river)
        assert streamfit["produced_events"] > 0 and river["produced_events"] > 0
        assert FRESHNESS_FIELDS <= set(streamfit["freshness_served_s"]) and streamfit["freshness_served_s"]["n"] > 0
        assert FRESHNESS_FIELDS <= set(river["freshness_learned_s"])
        assert {"batch_rows", "waiting_s", "launch_s", "compute_s", "cycle_s"} <= set(streamfit["cycles"])
        assert streamfit["versions"] >= 1
        assert "streamfit_vs_river_learned" in rate
    assert set(section["highest_holding_rate"]) == {"streamfit", "river_loop"}
    assert section["batch"]["max_rows"] >= section["batch"]["rows"]
