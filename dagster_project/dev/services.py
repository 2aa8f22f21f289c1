"""Start and stop the Dagster daemon and web UI as child processes (demo and end-to-end tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _script(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


class DagsterServices:
    """One code server, dagster-daemon (sensors, run queue, retries) and optionally dagster-webserver.

    The daemon and the web UI both load the code from one long-lived code server (`dagster api
    grpc`, a workspace entry of type `grpc_server`) instead of spawning their own: a daemon-spawned
    server is replaced whenever the daemon reloads its workspace, and the old one logs "No
    heartbeat received in 20 seconds, shutting down" on its way out, over and over.
    """

    def __init__(self, env: dict[str, str], log_dir: Path, ui_port: int | None = None) -> None:
        self.env = env
        self.log_dir = log_dir
        self.ui_port = ui_port
        self.processes: list[subprocess.Popen[bytes]] = []

    def _spawn(self, name: str, args: list[str], script: str | None = None) -> None:
        log = open(self.log_dir / f"{name}.log", "ab")
        self.processes.append(
            subprocess.Popen(
                [_script(script or name), *args],
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        )

    def start(self) -> DagsterServices:
        from dagster_project.instance import initialize_storage

        self.log_dir.mkdir(parents=True, exist_ok=True)
        initialize_storage(Path(self.env["DAGSTER_HOME"]))
        workspace = self._code_server()
        self._spawn("dagster-daemon", ["run", "-w", workspace])
        if self.ui_port:
            self._spawn("dagster-webserver", ["-w", workspace, "-h", "127.0.0.1", "-p", str(self.ui_port)])
        return self

    def _code_server(self, timeout_s: float = 120.0) -> str:
        """Start the code server, wait until it answers, and return a workspace file naming it."""
        from dagster_project.kafka.brokers.tansu import free_port

        port = free_port()
        self._spawn(
            "dagster-code-server",
            ["code-server", "-d", str(PROJECT_ROOT), "-p", str(port)],
            script="streamfit",
        )
        workspace = self.log_dir / "workspace.yaml"
        entry = {"grpc_server": {"host": "127.0.0.1", "port": port, "location_name": "streamfit"}}
        workspace.write_text(yaml.safe_dump({"load_from": [entry]}))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            try:  # the server listens once it has loaded the definitions
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return str(workspace)
            except OSError:
                time.sleep(0.25)
        raise RuntimeError(f"the Dagster code server did not answer within {timeout_s:.0f}s; see {self.log_dir}")

    @property
    def ui_url(self) -> str | None:
        return f"http://127.0.0.1:{self.ui_port}" if self.ui_port else None

    def wait_for_ui(self, timeout_s: float = 60.0) -> bool:
        if not self.ui_url:
            return False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()  # a webserver that exited (its port taken since) is not waited for
            try:
                with urllib.request.urlopen(f"{self.ui_url}/server_info", timeout=2):
                    return True
            except OSError:
                time.sleep(0.5)
        return False

    def check_alive(self) -> None:
        for process in self.processes:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{process.args[0]} exited with code {process.returncode}; see its log in {self.log_dir}"
                )

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15  # one deadline for all: a stop takes at most 15 s, not 15 s per process
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def __enter__(self) -> DagsterServices:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
