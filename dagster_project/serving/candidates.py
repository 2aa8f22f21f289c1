"""Which registry versions a scorer may fall back to, and how to notice that a refused one changed.

A champion that fails verification must not leave a scorer with nothing to serve when an older
good version exists, so the watcher walks these candidates: the champion history newest first
(versions that were deliberately promoted), then every registered version newest first. A refused
version is re-verified only when its files change (`fingerprint`; on MLflow, whose artifacts cannot
be stat'ed, when a version is promoted again), so a repaired file is picked up on the next watch tick
without re-hashing every version on every tick.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dagster_project.registry.store import (
    FEATURES_FILE,
    META_FILE,
    ONNX_FILE,
    ChecksumMismatch,
    FilesystemRegistry,
    ModelRegistry,
)

log = logging.getLogger(__name__)

Fingerprint = tuple[Any, ...]


@dataclass(frozen=True)
class Refusal:
    """A version that could not be served, with what its files looked like when it was tried."""

    version: str
    reason: str  # a phrase completing "champion v3 ...", e.g. "failed its checksum (<path>)"
    fingerprint: Fingerprint | None
    at: float  # time.monotonic() of the attempt

    def worth_retrying(self, fingerprint: Fingerprint | None, retry_after_s: float) -> bool:
        """Retry when its fingerprint changed (files, or a new promotion), else after `retry_after_s`."""
        if fingerprint is not None and fingerprint != self.fingerprint:
            return True
        return time.monotonic() - self.at >= retry_after_s


def model_path(registry: ModelRegistry, stream: str, version: str) -> str | None:
    """Where the version's ONNX file lives, for messages an operator can act on (None if not known)."""
    try:
        return registry.location(stream, version)
    except Exception:  # a message helper: the registry may be what failed
        return None


def fingerprint(registry: ModelRegistry, stream: str, version: str) -> Fingerprint | None:
    """A cheap identity of what a refused version's retry depends on; None when the registry offers none.

    Filesystem: the version's files (stat only, no hashing). A rewrite changes mtime/ctime even at the
    same size, a replacement changes the inode, and a version directory appearing or disappearing
    changes the "missing" markers. Registries without files to stat (MLflow) offer `history_marker`,
    which changes when the operator promotes again after a repair, as the refusal asks them to.
    """
    if isinstance(registry, FilesystemRegistry):
        return _file_fingerprint(registry, stream, version)
    marker = getattr(registry, "history_marker", None)
    if marker is None:
        return None
    key = (id(registry), stream)
    cached = _MARKERS.get(key)
    if cached is not None and time.monotonic() - cached[0] < MARKER_TTL_S:
        return cached[1]  # one search per stream every MARKER_TTL_S, not one per refused version per tick
    try:
        found = ("champion history", marker(stream))
    except Exception as exc:  # unknown this tick: the refusal's timer decides (the next read reports the registry)
        log.debug("%s: no fingerprint for %s (%s)", stream, version, exc)
        return None
    _MARKERS[key] = (time.monotonic(), found)
    return found


# The MLflow marker is a search over the stream's bookkeeping tags: while a champion stays refused the
# watcher asks every 0.25 s, for it and each refused fallback. A promotion is seen within this long.
MARKER_TTL_S = 2.0
_MARKERS: dict[tuple[int, str], tuple[float, Fingerprint]] = {}


def _file_fingerprint(registry: FilesystemRegistry, stream: str, version: str) -> Fingerprint:
    directory = registry.root / stream / version
    parts: list[Any] = []
    for name in (ONNX_FILE, META_FILE, FEATURES_FILE):  # features.json: derived features start from it
        try:
            st = os.stat(directory / name)
        except OSError:
            parts.append((name, "missing"))
        else:
            parts.append((name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(parts)


def describe_failure(registry: ModelRegistry, stream: str, version: str, exc: BaseException) -> str:
    """Why a version cannot be served, phrased to follow "champion v3 ..."."""
    if isinstance(exc, ChecksumMismatch):
        if FEATURES_FILE in str(exc):  # its derived-feature state, not its model
            return f"failed its checksum ({exc})"
        return f"failed its checksum ({model_path(registry, stream, version) or exc})"
    return f"could not be loaded ({type(exc).__name__}: {exc})"


def history_newest_first(registry: ModelRegistry, stream: str) -> list[str]:
    """Versions that were champion, most recent first, each once (the history file is oldest first)."""
    read = getattr(registry, "champion_history", None)
    if read is None:
        return []
    try:
        records = read(stream)
    except Exception:
        log.exception("%s: could not read the champion history", stream)
        return []
    seen: dict[str, None] = {}
    for record in reversed(records):
        version = record.get("version") if isinstance(record, dict) else None
        if isinstance(version, str):
            seen.setdefault(version, None)
    return list(seen)


def fallback_candidates(registry: ModelRegistry, stream: str, exclude: str | None) -> Iterator[tuple[str, bool]]:
    """(version, in the champion history) to try in order when `exclude` (the champion) cannot be served,
    or when the alias names nothing (`exclude` None).

    Lazy: the walk usually stops at the first history entry, so every version's metadata is read
    only when no version in the history can be served.
    """
    history = [v for v in history_newest_first(registry, stream) if v != exclude]
    for version in history:
        yield version, True
    try:
        registered = [v.name for v in reversed(registry.versions(stream))]
    except Exception:
        log.exception("%s: could not list the registry's versions", stream)
        return
    tried = set(history) | {exclude}
    for version in registered:
        if version not in tried:
            yield version, False
