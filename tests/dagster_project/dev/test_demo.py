"""`streamfit demo` stops everything it started, on Ctrl-C and on SIGTERM alike, and says what it did."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
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
    env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT dumps every thread's stack: what a stuck stop was waiting on
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
            if "replaying" in line:  # lines carry their time: "[ 12.3s] replaying ..."
                break
            assert time.monotonic() < deadline, "".join(seen)
        assert len(_processes_with(marker)) >= 3, "broker, daemon and web UI should be running"
        demo.send_signal(stop)
        # keep reading: a demo blocked on a full stdout pipe could not stop
        rest = threading.Thread(target=lambda: seen.extend(demo.stdout), daemon=True)
        rest.start()
        try:
            demo.wait(timeout=60)
        except subprocess.TimeoutExpired:
            demo.send_signal(signal.SIGABRT)
            rest.join(10)
            raise AssertionError("the demo did not stop within 60 s:\n" + "".join(seen)) from None
        rest.join(10)
        out = "".join(seen)
        assert "stopping..." in out and "summary after" in out, f"a stop should end with a summary:\n{out}"
    finally:
        if demo.poll() is None:
            demo.kill()
    deadline = time.monotonic() + 20
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_with(marker) == [], "the demo left processes running"


@pytest.mark.timeout(600)
def test_the_demo_shows_a_promotion_a_drift_action_and_served_predictions(tmp_path):
    """A shortened mission (the concept change at row 2,500 instead of 10,000), stdin closed: the
    output names a promotion with its numbers, the drift action, the scorer following the champion,
    and a summary with the predictions served and their live accuracy."""
    env = {k: v for k, v in os.environ.items() if k not in ("STREAMFIT_KAFKA_BOOTSTRAP", "DAGSTER_HOME")}
    env["STREAMFIT_HOME"] = str(tmp_path / "home")
    args = ["--rows", "4500", "--change-at", "2500", "--rate", "300", "--batch-rows", "500", "--max-rows", "1200"]
    demo = subprocess.run(
        [STREAMFIT, "demo", *args, "--until-recovered", "--timeout", "480"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=560,
    )
    out = demo.stdout + demo.stderr
    assert demo.returncode == 0, out
    assert "Traceback" not in out and "Warning" not in out, out
    assert " promoted: roc_auc " in out and " unseen rows" in out, out
    assert "drift at row" in out and "-> retrain from row" in out, out
    assert "scorer now serves v" in out, out
    served = [line for line in out.splitlines() if "predictions served:" in line]
    assert served and int(served[0].split("predictions served:")[1].split(",")[0].strip()) > 0, out
    assert "live accuracy" in served[0] and "dead letters: 0" in out and "Dagster UI: http://127.0.0.1:" in out


def test_the_summary_says_which_part_failed_or_hung_instead_of_stopping_the_stop() -> None:
    """A stop prints its summary within a bound: a part that raises or hangs is named, the rest still prints."""
    from dagster_project.dev.demo import bounded

    def broken() -> str:
        raise ConnectionError("registry unreachable")

    hung = threading.Event()
    assert bounded(lambda: "12 versions", 1, "registry") == "12 versions"
    assert bounded(broken, 1, "registry") == "(registry failed: ConnectionError('registry unreachable'); skipped)"
    started = time.monotonic()
    assert "did not answer within 0 s" in bounded(lambda: str(hung.wait(5)), 0.2, "scorer")
    assert time.monotonic() - started < 2
    hung.set()


def test_the_demo_tells_the_scheduled_full_retrain_from_the_drift_s_retrain(capsys) -> None:
    """The daily full retrain (03:00 UTC) can fire during a demo: it was printed and timed as the
    retrain that answered the concept change."""
    from types import SimpleNamespace

    from dagster_project.dev.demo import Watcher

    def retrained(name: str, reason: str) -> SimpleNamespace:
        meta = {"offsets": {"batch": {"0": [0, 500]}}, "rows": {"trained": 500}}
        return SimpleNamespace(name=name, meta=meta | {"retrain": {"mode": "fresh", "reasons": [reason]}})

    versions: list[SimpleNamespace] = []
    registry = SimpleNamespace(versions=lambda _: versions, decisions=lambda _: [])
    watcher = Watcher(registry, SimpleNamespace(name="s"), "http://127.0.0.1:9", time.monotonic(), change_at=10**9)
    watcher.live_printed = time.monotonic() + 3600  # no live-quality lookup: this registry has no files

    versions.append(retrained("v3", "scheduled full retrain on the last 500 rows (counters slow drift)"))
    watcher.poll()
    assert "scheduled_retrain_s" in watcher.timings and "first_retrain_s" not in watcher.timings
    assert "v3 retrained (on schedule, fresh) on 500 rows" in capsys.readouterr().out

    versions.append(retrained("v4", "concept drift: adwin on the error rate"))
    watcher.poll()
    assert "first_retrain_s" in watcher.timings
    assert "v4 retrained (fresh) on 500 rows" in capsys.readouterr().out
