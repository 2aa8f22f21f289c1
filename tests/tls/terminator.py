"""A TLS terminator (Debian's stunnel4) in front of the plaintext embedded broker.

Tansu 0.6.0 cannot serve TLS itself (see dagster_project/embedded_broker.py), so the tests run
stunnel on a TLS port, forwarding to Tansu's plaintext port, and start Tansu advertising the TLS
port: clients bootstrap on TLS and metadata only ever sends them back to TLS.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from dagster_project.kafka.brokers.tansu import port_open

REQUIRE_ENV = "STREAMFIT_REQUIRE_SYSTEM_DEPS"


def system_binary(names: tuple[str, ...], apt_package: str) -> str:
    """Path of the first of `names` on PATH; skip the test without it (fail if STREAMFIT_REQUIRE_SYSTEM_DEPS=1)."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    message = f"needs {' or '.join(names)}: apt-get install -y {apt_package}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1 makes a missing system dependency a failure)")
    pytest.skip(message)


@dataclass(frozen=True)
class TlsService:
    name: str
    accept_port: int
    connect_port: int
    cert: Path
    key: Path
    ca: Path | None = None  # set: clients must present a certificate signed by this CA (mutual TLS)


class Stunnel:
    """stunnel in the foreground with one section per service; a context manager."""

    def __init__(self, binary: str, services: list[TlsService], directory: Path) -> None:
        self.binary = binary
        self.services = services
        self.directory = directory
        self.config = directory / "stunnel.conf"
        self.log = directory / "stunnel.log"
        self.process: subprocess.Popen[bytes] | None = None

    def _config_text(self) -> str:
        lines = ["foreground = yes", "pid =", "debug = 5", f"output = {self.log}", ""]
        for s in self.services:
            lines += [
                f"[{s.name}]",
                f"accept = 127.0.0.1:{s.accept_port}",
                f"connect = 127.0.0.1:{s.connect_port}",
                f"cert = {s.cert}",
                f"key = {s.key}",
            ]
            if s.ca:
                lines += [f"CAfile = {s.ca}", "verifyChain = yes", "requireCert = yes"]
            lines.append("")
        return "\n".join(lines)

    def start(self, timeout_s: float = 10.0) -> Stunnel:
        self.config.write_text(self._config_text())
        self.process = subprocess.Popen(
            [self.binary, str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while not all(port_open(s.accept_port) for s in self.services):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.log.read_text() if self.log.exists() else "(no log)"
                self.stop()
                raise RuntimeError(f"stunnel did not start: {log[-2000:]}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def accepted_tls(self) -> int:
        """How many TLS sessions stunnel has accepted (from its log)."""
        text = self.log.read_text() if self.log.exists() else ""
        return text.count("accepted connection from")

    def __enter__(self) -> Stunnel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
