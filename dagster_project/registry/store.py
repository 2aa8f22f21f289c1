"""The model registry: each version is a checkpoint of (model state, offsets learned).

A version directory is written in full under a temporary name and renamed into place, so a
version either exists completely or not at all; that rename is the commit point of exactly-once
learning. Aliases (`champion`) change by atomic replace. Checksums guard everything served.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import hashlib
import io
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from dagster_project.names import VERSION_NAME, is_version_name, version_name, version_number

ONNX_FILE = "model.onnx"
# How a champion-history reason says the alias moved other than by the gate (whose reason is its
# comparison): monitors.lineage reads these to tell a continuation from a new start.
FIRST_VERSION_REASON = "first version: nothing to compare against"
ROLLBACK_REASON = "rollback: "
MANUAL_REASON = "manual: "
log = logging.getLogger(__name__)
ESTIMATOR_FILE = "estimator.joblib"
# The derived-feature state after the version's learned offsets (dagster_project/features/), when
# the stream has derived features: part of the checkpoint, written and verified like the model.
FEATURES_FILE = "features.json"
META_FILE = "meta.json"
# An operator's pending offset reset names the head it was computed against (`set_pending_offsets`).
COMPUTED_AGAINST = "computed_against_head"
ANY_HEAD: Any = object()  # set_pending_offsets without a head to check (the trainer's, `batches skip`)
# A pending offset reset that skipped events it read carries the feature state after them.
RESET_STATE, RESET_STATE_SHA256 = "feature_state", "feature_state_sha256"


class RegistryError(RuntimeError):
    """A registry operation was refused; the message says why and what to do."""


class StaleReset(RegistryError):
    """An offset reset computed against a head that is no longer the head: nothing was written."""


class StaleParent(RegistryError):
    """Another version was registered since this one's parent: its offsets would be learned twice."""


class ChecksumMismatch(RegistryError):
    """A version's files do not match the checksums written with it: it must never be served."""


class BrokenRegistryFile(RegistryError):
    """A registry file cannot be read (truncated, edited, disk error); the message names it and the fix.

    `path` is the file, or for registries without files the object's URI (MLflow: `models:/<stream>/<n>`)."""

    def __init__(self, message: str, path: Path | str) -> None:
        super().__init__(message)
        self.path = path


class RegistryUnavailable(RegistryError):
    """The registry service cannot be reached (or keeps failing) right now: nothing was decided; retry later.

    The filesystem registry never raises it; a scorer keeps serving its last good model meanwhile."""


@dataclass(frozen=True)
class BrokenVersion:
    """A version directory whose meta.json cannot be read: listed, never loaded."""

    stream: str
    name: str
    path: Path | str
    error: str

    @property
    def number(self) -> int:
        return version_number(self.name)


def _read_json(path: Path, fix: str) -> dict[str, Any]:
    """One JSON object (every registry document is one), or BrokenRegistryFile naming the file and what to do."""
    try:
        document = orjson.loads(path.read_bytes())
    except (orjson.JSONDecodeError, OSError) as exc:
        raise BrokenRegistryFile(f"{path} cannot be read ({exc}): {fix}", path) from exc
    if not isinstance(document, dict):
        raise BrokenRegistryFile(f"{path} holds a JSON {type(document).__name__}, not an object: {fix}", path)
    return document


def _offsets_of(path: Path, ranges: Any, fix: str) -> dict[int, int]:
    """`{partition: offset}` from a record's `{"<p>": offset or [start, end]}`, or BrokenRegistryFile."""
    try:
        out = {int(p): int(v[1] if isinstance(v, list) else v) for p, v in ranges.items()}
    except (AttributeError, TypeError, ValueError, IndexError) as exc:
        raise BrokenRegistryFile(f"{path} holds no offsets ({exc!r}): {fix}", path) from exc
    if any(p < 0 or o < 0 for p, o in out.items()):
        raise BrokenRegistryFile(f"{path} holds a negative partition or offset {out}: {fix}", path)
    return out


def _read_jsonl(path: Path, fix: str) -> list[Any]:
    """Every record of an append-only log. A torn last line (a crash mid-append) is left out; a
    broken line before it means the file was damaged, which is an error naming the line."""
    if not path.exists():
        return []
    lines = path.read_bytes().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            if number == len(lines):
                log.warning("%s: ignoring a torn last line (%s)", path, exc)
                break
            raise BrokenRegistryFile(f"{path} line {number} is not valid JSON ({exc}): {fix}", path) from exc
        if not isinstance(record, dict):
            raise BrokenRegistryFile(
                f"{path} line {number} is a JSON {type(record).__name__}, not a record: {fix}", path
            )
        records.append(record)
    return records


@dataclass(frozen=True)
class Version:
    """A registered version's metadata (meta.json), with convenient accessors."""

    stream: str
    name: str
    meta: dict[str, Any]

    @property
    def number(self) -> int:
        return version_number(self.name)

    @property
    def learned(self) -> dict[int, int]:
        """Next offset to learn per partition, after this version."""
        return {int(p): int(o) for p, o in self.meta["offsets"]["learned"].items()}

    @property
    def parent(self) -> str | None:
        return self.meta.get("parent")

    @property
    def misplaced(self) -> str | None:
        """Why this entry is not what its place says (a copy of another stream's version, or of another
        version of this one: a restore into the wrong directory), or None. Its checksums cannot tell:
        they were copied with it."""
        stream, name = self.meta.get("stream", self.stream), self.meta.get("version", self.name)
        if (stream, name) == (self.stream, self.name):
            return None
        copy = "another version" if stream == self.stream else "another stream's version"
        return (
            f"{self.stream}/{self.name} records that it is {stream}/{name} (its meta.json): a copy of {copy}, "
            f"not what {self.stream} registered as {self.name}; move it out of the registry and restore the right one"
        )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _checksums(onnx_bytes: bytes, estimator_bytes: bytes, feature_state: bytes | None) -> dict[str, str]:
    """meta.json's `sha256`: every file of the version, the feature state only when there is one."""
    sums = {ONNX_FILE: _sha256(onnx_bytes), ESTIMATOR_FILE: _sha256(estimator_bytes)}
    if feature_state is not None:
        sums[FEATURES_FILE] = _sha256(feature_state)
    return sums


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _not_written(what: str, root: Path, exc: OSError, then: str = "then run it again") -> RegistryError:
    """A registry write the disk refused, named with its fix (a raw PermissionError named none)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        cause, fix = "is out of space", "Free space on that disk"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        cause, fix = "is not writable", f"Make it writable by this process (user id {os.getuid()})"
    else:
        cause, fix = "failed a write", "Check that disk"
    return RegistryError(f"{what}: the registry at {root} {cause} ({exc.strerror}: {exc.filename}). {fix}: {then}")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_synced(directory: Path, files: list[tuple[str, bytes]]) -> None:
    """Write each file and return once all of them are on disk. The fsyncs run side by side: one
    after another each waited for its own journal commit (3 files: ~7-10 ms on this VM's disk
    under load, side by side ~1-2 ms), and the version's commit point (the rename) follows either way."""
    from concurrent.futures import ThreadPoolExecutor

    handles = []
    try:
        for file_name, data in files:
            fh = open(directory / file_name, "wb")  # noqa: SIM115 - closed below, after every fsync
            handles.append(fh)
            fh.write(data)
            fh.flush()
        with ThreadPoolExecutor(max_workers=len(handles), thread_name_prefix="registry-fsync") as pool:
            for done in [pool.submit(os.fsync, fh.fileno()) for fh in handles]:
                done.result()  # an fsync's error (a full disk) is raised here, before any rename
    except BaseException:
        for fh in handles:
            with contextlib.suppress(OSError):  # the error being raised is the one that says why
                fh.close()
        raise
    for fh in handles:
        fh.close()


class ModelRegistry(abc.ABC):
    """What Streamfit needs from a registry: the filesystem (`FilesystemRegistry`) and MLflow
    (`dagster_project.registry.mlflow_store.MlflowRegistry`) implement it; `registry_from_env`
    (`dagster_project.registry.backends`) picks one.

    `root` is a local directory either way: state that is not registry data (the label joiner's
    live metrics) is kept there.
    """

    root: Path

    @property
    def address(self) -> str:
        """Where versions are read from, for messages: a scorer waiting for a champion that another
        registry holds must say which one it reads (`STREAMFIT_HOME` defaults to `./.streamfit`)."""
        return str(self.root.resolve())

    # Versions
    @abc.abstractmethod
    def versions(self, stream: str) -> list[Version]:
        """The readable versions in order; raises BrokenRegistryFile when the newest cannot be read."""

    @abc.abstractmethod
    def scan(self, stream: str) -> tuple[list[Version], list[BrokenVersion]]:
        """Every version in order, and those that cannot be read (listed, never loaded)."""

    @abc.abstractmethod
    def get(self, stream: str, version: str) -> Version:
        """One version; RegistryError naming `streamfit models list` when there is none of that name."""

    @abc.abstractmethod
    def register(
        self,
        stream: str,
        parent: str | None,
        onnx_bytes: bytes,
        estimator: Any,
        meta: dict[str, Any],
        feature_state: bytes | None = None,
        number_after: int = 0,
    ) -> Version:
        """Commit a new version atomically (with its feature state, if any), or raise StaleParent
        when `parent` is no longer the head. It is numbered after the head, and after `number_after`
        (the highest name already given elsewhere) when that is higher: a name is never given twice."""

    @abc.abstractmethod
    def _read_verified(self, stream: str, version: str, file_name: str) -> bytes: ...

    def load_feature_state(self, stream: str, version: str) -> bytes | None:
        """The version's derived-feature state (`features.json`), checksum-verified; None if it has none."""
        if FEATURES_FILE not in (self.get(stream, version).meta.get("sha256") or {}):
            return None
        return self._read_verified(stream, version, FEATURES_FILE)

    @abc.abstractmethod
    def load_estimator(self, stream: str, version: str) -> Any: ...

    @abc.abstractmethod
    def load_onnx(self, stream: str, version: str) -> bytes: ...

    @abc.abstractmethod
    def streams(self) -> list[str]:
        """Every stream the registry holds, with a spec or not (retention keeps a halted stream's run,
        `streamfit check` names a served stream whose spec is gone)."""

    def version_names(self, stream: str) -> list[str]:
        """Every version's name in order, broken ones included, reading as little as the backend allows."""
        valid, broken = self.scan(stream)
        return [v.name for v in sorted([*valid, *broken], key=lambda v: v.number)]

    def profile(self, stream: str, version: str) -> dict[str, Any]:
        """The data profile of the batch a version learned (drift references); {} when it has none.

        The filesystem keeps it in meta.json; MLflow keeps it as a run artifact, read on demand."""
        return self.get(stream, version).meta.get("profile") or {}

    def location(self, stream: str, version: str) -> str | None:
        """Where a version's model file lives, for messages an operator can act on (None: not known)."""
        return None

    def head(self, stream: str) -> Version | None:
        """The newest version: training continues from it."""
        found = self.versions(stream)
        return found[-1] if found else None

    # The champion alias and its history
    @abc.abstractmethod
    def champion(self, stream: str) -> str | None: ...

    @abc.abstractmethod
    def set_champion(self, stream: str, version: str, reason: str, evidence: dict[str, Any] | None = None) -> bool:
        """Point the alias at `version` and append the change to the champion history; True.

        `version` already the champion: nothing moves and the history is not written (an entry would
        name the champion as its own predecessor, and a rollback or the drift monitor's comparison
        would read it as a promotion); the re-promotion is kept as a decision
        (`champion_unchanged`) instead, and False is returned."""

    @abc.abstractmethod
    def champion_history(self, stream: str) -> list[dict[str, Any]]:
        """Every alias change, oldest first: {version, previous, reason, at[, evidence]}."""

    def rollback(self, stream: str, reason: str, evidence: dict[str, Any] | None = None) -> str:
        """Return the champion alias to the version it replaced; returns that version.

        A version whose model file is gone or damaged is passed over: scorers would refuse it and
        keep serving the version being rolled back from, while the alias said otherwise."""
        current = self.champion(stream)
        if current is None:
            raise RegistryError(f"{stream} has no champion to roll back")
        history = self.champion_history(stream)
        changes = alias_changes(history)
        # Never return to a version that was itself rolled back from, unless it was chosen again since
        # (promoted by hand or by the gate after that rollback).
        rejected: set[str] = set()
        for change in changes:
            if str(change.get("reason", "")).startswith("rollback"):
                rejected.add(change["previous"])
            else:
                rejected.discard(change["version"])
        rejected.add(current)
        passed_over: dict[str, str] = {}
        for entry in reversed(changes):
            version = entry["version"]
            if version in rejected or version in passed_over:
                continue
            problem = self.unservable(stream, version)
            if problem is None:
                if passed_over:
                    evidence = {**(evidence or {}), "passed_over": passed_over}
                self.set_champion(stream, version, reason=ROLLBACK_REASON + reason, evidence=evidence)
                return version
            passed_over[version] = problem
        damaged = "".join(f"; {v} cannot be served: {why}" for v, why in passed_over.items())
        raise RegistryError(
            f"{stream}: no earlier good champion to roll back to (history: {len(history)} changes{damaged}); "
            f"`streamfit models promote {stream} <version>` names one (`streamfit models list {stream}`)"
        )

    def unservable(self, stream: str, version: str) -> str | None:
        """Why scorers would refuse `version` (its model file, or the derived-feature state scorers start
        from, is missing or fails its checksum), or None."""
        try:
            if misplaced := self.get(stream, version).misplaced:
                return misplaced
            self.load_onnx(stream, version)
            self.load_feature_state(stream, version)
        except RegistryUnavailable:
            raise
        except (RegistryError, OSError) as exc:
            return str(exc)
        return None

    # Decisions (the audit log) and data-quality halts
    @abc.abstractmethod
    def record_decision(self, stream: str, record: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def decisions(self, stream: str) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def set_halt(self, stream: str, record: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def halt(self, stream: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def clear_halt(self, stream: str, resolution: dict[str, Any]) -> None:
        """Record the halt and its resolution as a decision, then lift it (no-op when not halted)."""

    # Offset resets: an operator's decision, applied by the next version and recorded in it
    def set_pending_offsets(
        self,
        stream: str,
        offsets: dict[int, int],
        reason: str,
        by: str,
        feature_state: bytes | None = None,
        details: dict[str, Any] | None = None,
        head: Any = ANY_HEAD,
    ) -> dict[str, Any]:
        """Make the next version start at `offsets`. `feature_state` is the derived-feature state
        after them when the skipped events were read (a quarantine, a batch with nothing to learn):
        kept in the same record, so the offsets and the state move together or not at all.
        `details` (JSON) are kept with the reason, for the version that applies it to record.

        `head`: the head's name (None: no version yet) the offsets were computed against. When
        another version is the head now, StaleReset is raised and nothing is written; and as a
        version can still be registered between that check and the write, the record keeps it
        (`COMPUTED_AGAINST`): a reset whose head is no longer the head is never applied
        (`stale_offset_reset`), and the operator is told to run it again."""
        self.settle_offset_reset(stream)  # an applied one not yet kept as applied must not be overwritten
        if head is not ANY_HEAD:
            self._check_head(stream, head)
            details = {**(details or {}), COMPUTED_AGAINST: head}
        record = reset_record(offsets, reason, by, feature_state, details)
        self._store_offset_reset(stream, record)
        return record

    def _check_head(self, stream: str, head: str | None) -> None:
        current = self.head(stream)
        if (current.name if current else None) != head:
            raise StaleReset(stale_message(stream, head, current.name if current else None, "nothing was written"))

    def stale_offset_reset(self, stream: str, stored: dict[str, Any] | None = None) -> str | None:
        """Why the stored reset must not be applied (it was computed against a head that is no longer
        the head: a version registered meanwhile, and where it learned up to was not considered), or None."""
        stored = self._stored_offset_reset(stream) if stored is None else stored
        if stored is None or COMPUTED_AGAINST not in stored:
            return None  # set by the trainer or `batches skip`, or before resets recorded their head
        current = self.head(stream)
        if (current.name if current else None) == stored[COMPUTED_AGAINST] or self._applier(stream, stored):
            return None  # the head it was computed against, or a version applied it (its clearing interrupted)
        return stale_message(
            stream, stored[COMPUTED_AGAINST], current.name if current else None, "it is not applied", stored
        )

    @abc.abstractmethod
    def _store_offset_reset(self, stream: str, record: dict[str, Any]) -> None: ...

    def pending_offset_reset(self, stream: str) -> dict[str, Any] | None:
        """The reset the next version applies: the stored one, unless a version already recorded
        applying it (the process died between that version's commit and `clear_offset_reset`)."""
        stored = self._stored_offset_reset(stream)
        if stored is None:
            return None
        applier = self._applier(stream, stored)
        if applier is not None:
            log.warning("%s: the pending offset reset was already applied by %s; ignoring it", stream, applier)
            return None
        stale = self.stale_offset_reset(stream, stored)
        if stale is not None:
            log.warning("%s", stale)
            return None
        return stored

    def applied_offset_resets(self, stream: str) -> dict[str, dict[str, Any]]:
        """Resets applied so far, by the version that applied them, including one whose clearing a
        crash interrupted (its record, with the feature state it carries, is still the stored one)."""
        applied = self._kept_applied_resets(stream)
        stored = self._stored_offset_reset(stream)
        applier = self._applier(stream, stored) if stored is not None else None
        if applier is not None and applier not in applied:
            applied[applier] = stored
        return applied

    def settle_offset_reset(self, stream: str) -> None:
        """Finish what a crash interrupted: a stored reset a version already applied is kept as applied by it."""
        stored = self._stored_offset_reset(stream)
        applier = self._applier(stream, stored) if stored is not None else None
        if applier is not None:
            self.clear_offset_reset(stream, applier, applied=stored)
        elif stored is not None and (stale := self.stale_offset_reset(stream, stored)) is not None:
            # Never applied (nor applicable): dropped, and kept in the decision log.
            discarded = {"kind": "offset_reset_discarded", "reset": without_state(stored), "why": stale}
            self.record_decision(stream, discarded)
            self._drop_offset_reset(stream, stored)

    def _applier(self, stream: str, stored: dict[str, Any]) -> str | None:
        """The version whose meta.json records applying `stored` (its `at` makes it unique), if any."""
        recorded = without_state(stored)
        return next(
            (v.name for v in reversed(self.versions(stream)) if v.meta.get("offset_reset_applied") == recorded), None
        )

    @abc.abstractmethod
    def _stored_offset_reset(self, stream: str) -> dict[str, Any] | None:
        """The reset as last set and not yet cleared, applied or not."""

    @abc.abstractmethod
    def clear_offset_reset(self, stream: str, applied_by_version: str, applied: dict[str, Any] | None = None) -> None:
        """Keep the stored reset as applied by `applied_by_version`, then drop it (a crash between the
        two leaves it stored, and `pending_offset_reset` sees it was applied). With `applied` (the
        reset the version applied), only if the stored one is still that: an operator's newer reset,
        set meanwhile, stays pending."""

    @abc.abstractmethod
    def _drop_offset_reset(self, stream: str, stored: dict[str, Any]) -> None:
        """Delete the stored reset if it still is `stored` (one set since stays)."""

    @abc.abstractmethod
    def _kept_applied_resets(self, stream: str) -> dict[str, dict[str, Any]]:
        """The resets `clear_offset_reset` kept, by the version that applied them."""


# Each stream directory's version metas without their profiles, by version name, with the (inode,
# size, mtime) they were read at: the Kafka and drift sensors, the exporter and every training run
# list a stream's versions, and reading every meta.json took 0.4 s at 2,000 versions of the soak's
# 5-feature stream; a profile is most of a meta.json and they rarely need one.
_SUMMARIES: dict[Path, dict[str, tuple[tuple[int, int, int], dict[str, Any]]]] = {}
RACY_S = 2.0  # a meta.json modified less than this before it was read is not trusted to the cache


class FilesystemRegistry(ModelRegistry):
    """`<root>/<stream>/v<N>/{model.onnx, estimator.joblib, meta.json}` plus alias files."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"FilesystemRegistry({str(self.root)!r})"

    def _stream_dir(self, stream: str) -> Path:
        return self.root / stream

    def scan(self, stream: str, *, profiles: bool = True) -> tuple[list[Version], list[BrokenVersion]]:
        """Every version in order, and the version directories whose meta.json cannot be read.

        Without `profiles`, each meta.json leaves out its data profile (as MLflow's versions do) and
        is read only when it changed since this process last read it (`_summary`, `_SUMMARIES`)."""
        directory = self._stream_dir(stream)
        if not directory.is_dir():
            return [], []
        numbered = sorted(
            (int(m.group(1)), entry) for entry in directory.iterdir() if (m := VERSION_NAME.match(entry.name))
        )
        cached = _SUMMARIES.get(directory, {})
        summaries: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}
        valid: list[Version] = []
        broken: list[BrokenVersion] = []
        for _, entry in numbered:
            try:
                if profiles:
                    meta = self._read_meta(stream, entry.name)
                else:
                    summaries[entry.name] = self._summary(stream, entry.name, cached.get(entry.name))
                    meta = summaries[entry.name][1]
                valid.append(Version(stream, entry.name, meta))
            except BrokenRegistryFile as exc:
                broken.append(BrokenVersion(stream, entry.name, entry / META_FILE, str(exc)))
        if not profiles:
            _SUMMARIES[directory] = summaries  # versions moved aside leave the cache with their directory
        return valid, broken

    def _summary(
        self, stream: str, version: str, cached: tuple[tuple[int, int, int], dict[str, Any]] | None
    ) -> tuple[tuple[int, int, int], dict[str, Any]]:
        """A version's meta.json without its profile, read again only when the file changed."""
        try:
            stat = os.stat(os.path.join(self.root, stream, version, META_FILE))  # pathlib costs more than the stat
        except OSError:
            stat = None
        identity = (stat.st_ino, stat.st_size, stat.st_mtime_ns) if stat else (0, -1, 0)
        if cached is not None and cached[0] == identity:
            return cached
        meta = self._read_meta(stream, version)  # a missing or broken file raises here, naming it
        if stat is not None and time.time() - stat.st_mtime < RACY_S:
            # Written so recently that a rewrite of the same size could keep this mtime on a coarse
            # clock (git's "racy clean"): read it again next time.
            identity = (0, -1, 0)
        return identity, {key: value for key, value in meta.items() if key != "profile"}

    def version_names(self, stream: str) -> list[str]:
        """Every version directory's name in order, without reading any meta.json."""
        directory = self._stream_dir(stream)
        if not directory.is_dir():
            return []
        return sorted((p.name for p in directory.iterdir() if VERSION_NAME.match(p.name)), key=version_number)

    def location(self, stream: str, version: str) -> str | None:
        return str(self._stream_dir(stream) / version / ONNX_FILE)

    def versions(self, stream: str) -> list[Version]:
        """The readable versions, without their data profiles (`profile()` reads one). A broken newest
        version stops here: which offsets it learned is unknown, so guessing (from its parent) could
        learn a batch twice."""
        valid, broken = self.scan(stream, profiles=False)
        if broken and (not valid or broken[-1].number > valid[-1].number):
            newest = broken[-1]
            fallback = f"{valid[-1].name} becomes the head again" if valid else "the stream starts from scratch"
            raise BrokenRegistryFile(
                f"{stream}: the newest version {newest.name} is broken, so which offsets it learned is unknown and "
                f"training stops: {newest.error} (after a move, {fallback} and its later batches are learned again)",
                newest.path,
            )
        return valid

    def head(self, stream: str) -> Version | None:
        """The newest version, reading its meta.json alone: the Kafka sensor asks every tick, and
        reading every version's took 2 s at 2,000 versions (more than the tick's interval)."""
        names = self.version_names(stream)
        if not names:
            return None
        try:
            return self.get(stream, names[-1])
        except BrokenRegistryFile:
            return super().head(stream)  # the whole scan says which version is broken and what follows

    def _read_meta(self, stream: str, version: str) -> dict[str, Any]:
        path = self._stream_dir(stream) / version / META_FILE
        if not path.exists():
            raise BrokenRegistryFile(f"{path} is missing: restore it from a backup, or move {path.parent} aside", path)
        fix = f"restore it from a backup, or move {path.parent} out of the registry"
        meta = _read_json(path, fix)
        offsets = meta.get("offsets", {})
        if not isinstance(offsets, dict) or not isinstance(offsets.get("learned", {}), dict):
            raise BrokenRegistryFile(f"{path} records no learned offsets (offsets.learned): {fix}", path)
        _offsets_of(path, offsets.get("learned", {}), fix)
        return meta

    def get(self, stream: str, version: str) -> Version:
        if not is_version_name(version):  # never a path: "v2/", "../other/v1"
            raise RegistryError(f"{version!r} is not a version name (v1, v2, ...); `streamfit models list {stream}`")
        if not (self._stream_dir(stream) / version).is_dir():
            raise RegistryError(f"{stream} has no version {version!r}; `streamfit models list {stream}` shows them")
        return Version(stream, version, self._read_meta(stream, version))

    def register(
        self,
        stream: str,
        parent: str | None,
        onnx_bytes: bytes,
        estimator: Any,
        meta: dict[str, Any],
        feature_state: bytes | None = None,
        number_after: int = 0,
    ) -> Version:
        """Write a new version atomically; refuse if `parent` is no longer the head."""
        import joblib

        head = self.head(stream)
        head_name = head.name if head else None
        if head_name != parent:
            raise StaleParent(f"{stream}: head is {head_name}, not {parent}; this batch was built on a stale model")
        name = version_name(max(head.number if head else 0, number_after) + 1)
        buffer = io.BytesIO()
        joblib.dump(estimator, buffer)
        estimator_bytes = buffer.getvalue()
        full_meta = {
            **meta,
            "stream": stream,
            "version": name,
            "parent": parent,
            "created_at": _now(),
            "sha256": _checksums(onnx_bytes, estimator_bytes, feature_state),
        }
        stream_dir = self._stream_dir(stream)
        tmp = stream_dir / f".tmp-{name}-{uuid.uuid4().hex}"
        try:
            stream_dir.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            _write_synced(
                tmp,
                [
                    (ONNX_FILE, onnx_bytes),
                    (ESTIMATOR_FILE, estimator_bytes),
                    *([(FEATURES_FILE, feature_state)] if feature_state is not None else []),
                    (META_FILE, orjson.dumps(full_meta, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)),
                ],
            )
            try:
                os.rename(tmp, stream_dir / name)  # the commit point; fails if the name was taken
            except OSError as exc:
                raise StaleParent(f"{stream}: version {name} appeared while registering ({exc})") from exc
        except OSError as exc:
            raise _not_written(
                f"{stream}: nothing was registered", self.root, exc, "the run's retry (or a re-execution) registers it"
            ) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return Version(stream, name, full_meta)

    def read_verified(self, stream: str, version: str, file_name: str) -> bytes:
        """The bytes of one of a version's files (ONNX_FILE or ESTIMATOR_FILE), after checking their sha256."""
        return self._read_verified(stream, version, file_name)

    def _kept_applied_resets(self, stream: str) -> dict[str, dict[str, Any]]:
        """offset_reset.applied-<version>.json"""
        found = {}
        for path in sorted(self._stream_dir(stream).glob("offset_reset.applied-*.json")):
            version = path.name.removeprefix("offset_reset.applied-").removesuffix(".json")
            found[version] = _read_json(path, "it is an audit record: restore it from a backup or move it aside")
        return found

    def streams(self) -> list[str]:
        """Every stream with a directory in the registry."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []

    def _read_verified(self, stream: str, version: str, file_name: str) -> bytes:
        meta = self.get(stream, version).meta
        data = (self._stream_dir(stream) / version / file_name).read_bytes()
        if _sha256(data) != meta["sha256"][file_name]:
            raise ChecksumMismatch(f"{stream}/{version}/{file_name} does not match its sha256; refusing to load it")
        return data

    def load_estimator(self, stream: str, version: str) -> Any:
        import joblib

        return joblib.load(io.BytesIO(self._read_verified(stream, version, ESTIMATOR_FILE)))

    def load_onnx(self, stream: str, version: str) -> bytes:
        return self._read_verified(stream, version, ONNX_FILE)

    def champion(self, stream: str) -> str | None:
        path = self._stream_dir(stream) / "champion"
        if not path.exists():
            return None
        fix = f"point the alias again with `streamfit models promote {stream} <version>` (see champion_history.jsonl)"
        record = _read_json(path, fix)
        if not isinstance(record, dict) or not isinstance(record.get("version"), str):
            raise BrokenRegistryFile(f"{path} names no version: {fix}", path)
        return record["version"]

    def set_champion(self, stream: str, version: str, reason: str, evidence: dict[str, Any] | None = None) -> bool:
        """Point the alias at `version` (atomic replace) and append the decision to the history."""
        self.get(stream, version)
        try:
            previous = self.champion(stream)
        except BrokenRegistryFile:  # this write is the repair the error message names
            previous = None
        if previous == version:
            self.record_decision(stream, unchanged_record(version, reason, evidence))
            return False
        record = {"version": version, "previous": previous, "reason": reason, "at": _now()}
        if evidence:
            record["evidence"] = evidence
        alias, history = self._stream_dir(stream) / "champion", self._stream_dir(stream) / "champion_history.jsonl"
        before = alias.read_bytes() if alias.exists() else None
        try:
            _write_atomic(alias, orjson.dumps(record))
            size = history.stat().st_size if history.exists() else 0
            try:
                with open(history, "ab") as fh:
                    fh.write(orjson.dumps(record) + b"\n")
            except OSError:  # an error means nothing changed: no served champion the audit history lacks
                if history.is_file():
                    os.truncate(history, size)  # no torn line for the next promotion to append onto
                if before is None:
                    alias.unlink(missing_ok=True)
                else:
                    _write_atomic(alias, before)
                raise
        except OSError as exc:
            raise _not_written(f"{stream}: the champion stays {previous or '-'}", self.root, exc) from exc
        return True

    def record_decision(self, stream: str, record: dict[str, Any]) -> None:
        """Append a gate or monitor decision (with its numbers) to decisions.jsonl."""
        self._stream_dir(stream).mkdir(parents=True, exist_ok=True)
        with open(self._stream_dir(stream) / "decisions.jsonl", "ab") as fh:
            fh.write(orjson.dumps({"at": _now(), **record}) + b"\n")

    def decisions(self, stream: str) -> list[dict[str, Any]]:
        path = self._stream_dir(stream) / "decisions.jsonl"
        return _read_jsonl(path, "it is an audit log: move the damaged file aside; new decisions start a new one")

    # Data-quality halt: the stream stops advancing until an operator re-runs or skips the batch.
    def set_halt(self, stream: str, record: dict[str, Any]) -> None:
        self._stream_dir(stream).mkdir(parents=True, exist_ok=True)
        _write_atomic(self._stream_dir(stream) / "halt.json", orjson.dumps({"at": _now(), **record}))

    def halt(self, stream: str) -> dict[str, Any] | None:
        path = self._stream_dir(stream) / "halt.json"
        fix = f"check the failed run in the Dagster UI, then delete {path} or run `streamfit batches skip {stream}`"
        if not path.exists():
            return None
        halt = _read_json(path, fix)
        _offsets_of(path, halt.get("ranges") or {}, fix)  # what `batches skip` moves past (none: not a batch's)
        _offsets_of(path, halt.get("learned_ends") or {}, fix)
        return halt

    def clear_halt(self, stream: str, resolution: dict[str, Any]) -> None:
        halt = self.halt(stream)
        if halt is not None:
            self.record_decision(stream, {"kind": "halt_cleared", "halt": without_state(halt), **resolution})
            (self._stream_dir(stream) / "halt.json").unlink(missing_ok=True)

    def champion_history(self, stream: str) -> list[dict[str, Any]]:
        path = self._stream_dir(stream) / "champion_history.jsonl"
        return _read_jsonl(path, "move the damaged file aside; the current alias (`champion`) is unaffected")

    # Offset resets: an operator's decision, applied by the next version and recorded in it.
    def _store_offset_reset(self, stream: str, record: dict[str, Any]) -> None:
        self._stream_dir(stream).mkdir(parents=True, exist_ok=True)
        _write_atomic(self._stream_dir(stream) / "offset_reset.json", orjson.dumps(record))

    def _stored_offset_reset(self, stream: str) -> dict[str, Any] | None:
        path = self._stream_dir(stream) / "offset_reset.json"
        fix = f"delete it and run `streamfit offsets reset {stream} --to earliest|latest` again"
        return _read_json(path, fix) if path.exists() else None

    def _drop_offset_reset(self, stream: str, stored: dict[str, Any]) -> None:
        path = self._stream_dir(stream) / "offset_reset.json"
        if _is_stored(self._stored_offset_reset(stream), stored):
            path.unlink(missing_ok=True)

    def clear_offset_reset(self, stream: str, applied_by_version: str, applied: dict[str, Any] | None = None) -> None:
        path = self._stream_dir(stream) / "offset_reset.json"
        if not path.exists() or not _is_stored(self._stored_offset_reset(stream), applied):
            return
        try:
            os.replace(path, self._stream_dir(stream) / f"offset_reset.applied-{applied_by_version}.json")
        except FileNotFoundError:  # another writer kept it as applied just now
            pass


def alias_changes(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The champion history's records that moved the alias: a record naming the champion it replaced
    as its own predecessor (a re-promotion of the champion, written before those became decisions)
    changed nothing, so no rollback returns "to" it and no comparison is made against it."""
    return [h for h in history if h.get("version") != h.get("previous")]


def last_promotion(history: list[dict[str, Any]], champion: str | None) -> dict[str, Any] | None:
    """The record that made `champion` the champion (its predecessor is `previous`), or None when the
    history's last alias change is not to it."""
    changes = alias_changes(history)
    return changes[-1] if changes and champion is not None and changes[-1]["version"] == champion else None


def unchanged_record(version: str, reason: str, evidence: dict[str, Any] | None) -> dict[str, Any]:
    """The decision kept for a promotion of the version that already is the champion."""
    return {
        "kind": "champion_unchanged",
        "version": version,
        "reason": reason,
        **({"evidence": evidence} if evidence else {}),
    }


def stale_message(
    stream: str, against: str | None, head: str | None, outcome: str, stored: dict[str, Any] | None = None
) -> str:
    """Why an offset reset computed against `against` is refused now that `head` is the head."""
    what = (
        f"the offset reset to {stored['offsets']} ({stored.get('reason')}, by {stored.get('by')})"
        if stored
        else ("this offset reset")
    )
    return (
        f"{stream}: {what} was computed against head {against or 'none'}, but {head or 'no version'} is the head "
        f"now (a training run registered it meanwhile, and the rows it learned were not considered): {outcome}. "
        f"Run `streamfit offsets reset {stream} ...` again"
    )


def _is_stored(stored: dict[str, Any] | None, applied: dict[str, Any] | None) -> bool:
    """Whether `stored` is the reset a version applied (`applied`; None: whichever is stored)."""
    return stored is not None and (applied is None or without_state(stored) == without_state(applied))


def with_state(record: dict[str, Any], feature_state: bytes | None) -> dict[str, Any]:
    """`record` (a pending offset reset, a data-quality halt) carrying the derived-feature state after
    the events it skips, as text with its sha256; unchanged without one."""
    if feature_state is None:
        return record
    return {**record, RESET_STATE: feature_state.decode(), RESET_STATE_SHA256: _sha256(feature_state)}


def reset_record(
    offsets: dict[int, int], reason: str, by: str, feature_state: bytes | None, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A pending offset reset as both backends store it."""
    record = {"offsets": {str(p): o for p, o in offsets.items()}, "reason": reason, "by": by, "at": _now()}
    record.update(details or {})
    return with_state(record, feature_state)


def carried_state(stream: str, record: dict[str, Any] | None) -> bytes | None:
    """The derived-feature state a pending reset or halt carries (checksum-verified); None when it carries none."""
    if not record or RESET_STATE not in record:
        return None
    data = record[RESET_STATE].encode()
    if _sha256(data) != record.get(RESET_STATE_SHA256):
        raise ChecksumMismatch(
            f"{stream}: the feature state carried by {record.get('reason') or record.get('summary')!r} does not match "
            "its sha256: re-run the batch it came from, or reset the offsets with `streamfit offsets reset`"
        )
    return data


def without_state(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The record without its feature state (a version stores that as features.json): what meta.json
    and the decision log keep."""
    return None if record is None else {k: v for k, v in record.items() if k != RESET_STATE}


def expected_offsets(registry: ModelRegistry, stream: str) -> tuple[Version | None, dict[int, int], dict | None]:
    """Where the next batch must start: the head's learned offsets, overridden by a pending reset."""
    head = registry.head(stream)
    learned = dict(head.learned) if head else {}
    reset = registry.pending_offset_reset(stream)
    if reset:
        learned.update({int(p): int(o) for p, o in reset["offsets"].items()})
    return head, learned, reset
