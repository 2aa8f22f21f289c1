"""`streamfit demo` stops everything it started, on Ctrl-C and on SIGTERM alike."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

STREAMFIT = str(Path(sys.executable).parent / "streamfit")


def _processes_with(marker: str) -> list[int]:
    """PIDs whose environment carries `marker` (this demo's STREAMFIT_HOME)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().split(")")[-1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_demo_stops_everything_it_started(tmp_path, stop):
    home = tmp_path / "home"
    marker = f"STREAMFIT_HOME={home}"
    env = {k: v for k, v in os.environ.items() if k not in ("STREAMFIT_KAFKA_BOOTSTRAP", "DAGSTER_HOME")}
    env["STREAMFIT_HOME"] = str(home)
    demo = subprocess.Popen(
        [STREAMFIT, "demo", "--rows", "300", "--rate", "100"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        seen = []
        for line in demo.stdout:
            seen.append(line)
            if line.startswith("replaying"):
                break
            assert time.monotonic() < deadline, "".join(seen)
        assert len(_processes_with(marker)) >= 3, "broker, daemon and web UI should be running"
        demo.send_signal(stop)
        assert demo.wait(timeout=60) is not None
    finally:
        if demo.poll() is None:
            demo.kill()
    deadline = time.monotonic() + 20
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_with(marker) == [], "the demo left processes running"
