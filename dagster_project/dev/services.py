"""Start and stop the Dagster daemon and web UI as child processes (demo and end-to-end tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _script(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


class DagsterServices:
    """dagster-daemon (sensors, run queue, retries) and optionally dagster-webserver."""

    def __init__(self, env: dict[str, str], log_dir: Path, ui_port: int | None = None) -> None:
        self.env = env
        self.log_dir = log_dir
        self.ui_port = ui_port
        self.processes: list[subprocess.Popen[bytes]] = []

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.log_dir / f"{name}.log", "ab")
        self.processes.append(
            subprocess.Popen(
                [_script(name), *args],
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
        workspace = str(PROJECT_ROOT / "workspace.yaml")
        self._spawn("dagster-daemon", ["run", "-w", workspace])
        if self.ui_port:
            self._spawn("dagster-webserver", ["-w", workspace, "-h", "127.0.0.1", "-p", str(self.ui_port)])
        return self

    @property
    def ui_url(self) -> str | None:
        return f"http://127.0.0.1:{self.ui_port}" if self.ui_port else None

    def wait_for_ui(self, timeout_s: float = 60.0) -> bool:
        if not self.ui_url:
            return False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
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
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def __enter__(self) -> DagsterServices:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
