"""The joiner's durable files under `<registry>/<stream>/`: the commit log, state checkpoints, the lock.

`live_metrics.jsonl` gets one fsynced line per checkpoint and is the commit point; the line names
`labels_state/<seq>.json`, the whole join state at that checkpoint, written atomically beforehand.
A crash at any step therefore leaves the last complete line and its state file as the truth.
This module only reads and writes files; what the lines mean is the rest of the package's business.
"""

from __future__ import annotations

import fcntl
import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

LIVE_METRICS_FILE = "live_metrics.jsonl"
STATE_DIR = "labels_state"
LOCK_FILE = "labels.lock"


class LabelStoreError(RuntimeError):
    """The joiner's durable state is missing or inconsistent; the message says what to do."""


class JoinerBusy(LabelStoreError):
    """Another joiner holds this stream's lock."""


def live_metrics_path(registry_root: str | Path, stream: str) -> Path:
    """`<registry>/<stream>/live_metrics.jsonl`, the file every reader follows."""
    return Path(registry_root) / stream / LIVE_METRICS_FILE


def record_at(record: dict[str, Any]) -> float:
    """Epoch seconds of a commit-log line's `at` (written as ISO 8601, for people reading the file)."""
    return datetime.fromisoformat(record["at"]).timestamp()


def complete_lines(data: bytes) -> tuple[list[bytes], int]:
    """The non-blank complete lines of `data` and where they end: a torn last line is not a record yet."""
    end = data.rfind(b"\n") + 1
    return [line for line in data[:end].splitlines() if line.strip()], end


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class LiveStore:
    """`<registry>/<stream>/live_metrics.jsonl` (the commit log) and `labels_state/<seq>.json`."""

    def __init__(self, registry_root: str | Path, stream: str) -> None:
        self.path = live_metrics_path(registry_root, stream)
        self.directory = self.path.parent
        self.state_dir = self.directory / STATE_DIR

    def _state_path(self, seq: int) -> Path:
        return self.state_dir / f"{seq:012d}.json"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the stream's lock file: one joiner per stream and STREAMFIT_HOME, or `JoinerBusy`."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / LOCK_FILE, "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise JoinerBusy(
                    f"another label joiner is running for {self.directory.name} (lock {fh.name}); "
                    "run only one per stream"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def recover(self) -> tuple[int, bytes] | None:
        """(seq, state JSON) of the last committed checkpoint, or None on a first start.

        Cuts a torn last line (a crash during the append) and removes state files that never got
        their line. Call only while holding the lock.
        """
        if not self.path.exists():
            return None
        data = self.path.read_bytes()
        lines, end = complete_lines(data)
        if end < len(data):
            log.warning("%s: cutting a torn last line (%d bytes) left by a crash", self.path, len(data) - end)
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
                os.fsync(fh.fileno())
        if not lines:
            return None
        seq = int(orjson.loads(lines[-1])["seq"])
        path = self._state_path(seq)
        if not path.exists():
            raise LabelStoreError(
                f"{self.path} ends with checkpoint {seq} but {path} is missing; move {self.path.name} and "
                f"{STATE_DIR}/ aside to start the join afresh"
            )
        self.prune(seq)
        return seq, path.read_bytes()

    def write_state(self, seq: int, data: bytes) -> None:
        """Write checkpoint `seq`'s state file atomically (it counts only once its line is appended)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(self._state_path(seq), data)

    def append(self, record: dict[str, Any]) -> None:
        """Append and fsync one line: the commit point of a checkpoint."""
        with open(self.path, "ab") as fh:
            fh.write(orjson.dumps(record) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())

    def prune(self, keep: int) -> None:
        """Remove every state file but checkpoint `keep`'s (older ones and orphans of a crash)."""
        if self.state_dir.is_dir():
            for path in self.state_dir.glob("*.json"):
                if path.stem.isdigit() and int(path.stem) != keep:
                    path.unlink(missing_ok=True)


def read_records(registry_root: str | Path, stream: str, since: float | None = None) -> list[dict[str, Any]]:
    """Every complete live_metrics.jsonl line (one per checkpoint), optionally those `at` >= `since` (epoch s)."""
    path = live_metrics_path(registry_root, stream)
    if not path.exists():
        return []
    lines, _ = complete_lines(path.read_bytes())
    records = [orjson.loads(line) for line in lines]
    if since is not None:
        records = [r for r in records if record_at(r) >= since]
    return records


def last_record(registry_root: str | Path, stream: str, tail_bytes: int = 1 << 16) -> dict[str, Any] | None:
    """The newest complete live_metrics.jsonl line, read from the file's end (the exporter asks every
    scrape; the whole file is megabytes after months), or None before the joiner's first checkpoint."""
    path = live_metrics_path(registry_root, stream)
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            while True:
                start = max(0, size - tail_bytes)
                fh.seek(start)
                lines, _ = complete_lines(fh.read(size - start))
                if len(lines) > 1 or start == 0:  # the first line of a tail may be cut: it is not trusted
                    return orjson.loads(lines[-1]) if lines else None
                tail_bytes *= 4  # one line longer than the tail (thousands of versions in it)
    except FileNotFoundError:
        return None
