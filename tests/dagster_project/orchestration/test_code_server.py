"""`streamfit code-server` stops on SIGTERM, also when its parent left SIGINT ignored."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from dagster_project.kafka.brokers.tansu import free_port

ROOT = Path(__file__).resolve().parents[3]
STREAMFIT = str(Path(sys.executable).parent / "streamfit")


def _ignore_sigint() -> None:
    """What a background job of a non-interactive shell (`cmd &`) starts with."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_a_code_server_started_with_sigint_ignored_stops_on_sigterm(tmp_path: Path) -> None:
    """Dagster maps SIGTERM to SIGINT's handler; inherited SIG_IGN made the server ignore SIGTERM and
    DagsterServices.stop wait 15 s for each daemon it stopped before killing the server."""
    port = free_port()
    env = os.environ | {"DAGSTER_HOME": str(tmp_path), "STREAMFIT_STREAMS": str(tmp_path / "streams")}
    (tmp_path / "streams").mkdir()
    with open(tmp_path / "code-server.log", "wb") as log:
        server = subprocess.Popen(
            [STREAMFIT, "code-server", "-d", str(ROOT), "-p", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_ignore_sigint,
        )
    try:
        deadline = time.monotonic() + 120
        while True:  # it listens once the definitions are loaded
            assert server.poll() is None, (tmp_path / "code-server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the code server did not listen within 120 s"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.25)
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)  # it stops in about a second
        except subprocess.TimeoutExpired:
            raise AssertionError("the code server ignored SIGTERM") from None
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
