"""MLflow as Streamfit's model registry (`STREAMFIT_REGISTRY=mlflow`, `MLFLOW_TRACKING_URI=http://...`).

Where each Streamfit record lives (the README's "Registry" section has the same table):

| Streamfit | MLflow |
|---|---|
| a stream | registered model `<stream>`; its runs in experiment `streamfit/<stream>` (namespace: below) |
| version `v<N>` | a model version tagged `streamfit.version=v<N>` (MLflow's own number may differ) |
| meta.json without the profile | model version tag `streamfit.meta` (JSON) |
| batch ranges, learned offsets, parent | model version tags `streamfit.batch`, `.learned`, `.parent` |
| sha256 of both files | model version tags `streamfit.sha256.model.onnx`, `.sha256.estimator.joblib` |
| offset reset / replay / retrain recorded | model version tags `streamfit.offset_reset`, `.replay`, `.retrain` |
| model.onnx | a LoggedModel (`onnx` flavor, with a signature): the version's source |
| estimator.joblib, profile, meta.json | artifacts of the version's source run |
| metrics, parity, timings, rows | source run metrics `prequential.*`, `parity.*`, `timings.*`, `rows.*` |
| the `champion` alias | the registered model's alias `champion` (`models:/<stream>@champion`) |
| champion history, decisions | tags `history/<ns>-<id>`, `decision/<ns>-<id>` of the bookkeeping run |
| halt, offset resets | tags `state/halt`, `state/offset_reset`, `offset_reset_applied/<vN>` of that run |

**Names.** Streamfit's `v<N>` is the head's number plus one, exactly as on the filesystem. MLflow
numbers every model version it creates, including attempts that crashed before their commit and
were discarded, so MLflow's number can run ahead of N; the tag `streamfit.version` is the mapping,
and each Version's `meta["mlflow"]` names its MLflow number, run and URLs.

**Namespaces.** Deployments that share one MLflow server (a team's test and production, two teams)
each set `STREAMFIT_MLFLOW_NAMESPACE`: registered model `<namespace>.<stream>` and experiment
`streamfit/<namespace>/<stream>` then keep them apart, so same-named streams never share versions,
champion or bookkeeping, and each deployment lists only its own streams.

**Commit point.** A registration logs the source run and the ONNX model, then creates the model
version with every tag above staged except `streamfit.version`, re-reads the registry, and sets
`streamfit.version` last, alone: that one tag write is the commit point. Readers see only model
versions carrying `streamfit.version` (and not `streamfit.discarded`), so a crash between any two
MLflow calls leaves either no visible version or a complete one. Each staged version carries
`streamfit.attempt`, a digest of (stream, parent, name, batch, learned offsets, kind); a retry of the
same batch on the same parent finds its staged version and only sets the commit tag, so a batch never
gets two versions. Runs of attempts that crashed before their model version existed are marked FAILED.

**Concurrent writers** (one training run per stream is the rule; this is the defence behind it). The
re-read before the commit refuses (StaleParent) when the head moved, and when an older staged version
on the same parent is still in flight (MLflow's version numbers order the attempts: the lower wins). A
staged version older than `pending_timeout_s` (measured on the server's clock, between the two
versions' creation times) is abandoned and discarded by the next writer.

**Bookkeeping.** Champion history, decisions, halts and offset resets are written to one run per
stream tagged `streamfit.bookkeeping=true`: each record is its own tag (one MLflow call, no
read-modify-write, so concurrent writers never lose a record), and one `search_runs` reads them all
back. Records longer than a run tag allows are logged as an artifact that the tag points to.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from dagster_project.names import is_version_name, version_name, version_number
from dagster_project.registry.store import (
    ESTIMATOR_FILE,
    FEATURES_FILE,
    META_FILE,
    ONNX_FILE,
    BrokenRegistryFile,
    BrokenVersion,
    ChecksumMismatch,
    ModelRegistry,
    RegistryError,
    RegistryUnavailable,
    StaleParent,
    Version,
    _checksums,
    _is_stored,
    _now,
    _sha256,
    unchanged_record,
    without_state,
)

log = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
EXPERIMENT_PREFIX = "streamfit/"

# Model version tags
VERSION_TAG = "streamfit.version"  # v<N>; written last, alone: the commit point
ATTEMPT_TAG = "streamfit.attempt"  # digest of what is being registered: a retry finds its staged version
DISCARDED_TAG = "streamfit.discarded"  # why a staged version will never be committed
META_TAG = "streamfit.meta"
PARENT_TAG = "streamfit.parent"
BATCH_TAG = "streamfit.batch"
LEARNED_TAG = "streamfit.learned"
TOPIC_TAG = "streamfit.topic"
SHA256_TAG = "streamfit.sha256."  # + file name
EXPERIMENT_TAG = "streamfit.experiment_id"
RUN_ARTIFACTS_TAG = "streamfit.run_artifacts"  # the source run's artifact URI (estimator, profile, meta)
MODEL_ARTIFACTS_TAG = "streamfit.model_artifacts"  # the LoggedModel's artifact URI (model.onnx, MLmodel)
PROFILE_TAG = "streamfit.profile"  # the profile artifact's name, when the version has one
RECORDED_EXTRAS = {  # meta key -> model version tag
    "offset_reset_applied": "streamfit.offset_reset",
    "replay": "streamfit.replay",
    "retrain": "streamfit.retrain",
}
STREAM_TAG = "streamfit.stream"
NAMESPACE_TAG = "streamfit.namespace"  # on a registered model created in a namespace
NAMESPACE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
NO_PARENT = "none"

# Run tags
BOOKKEEPING_TAG = "streamfit.bookkeeping"
ABANDONED_TAG = "streamfit.abandoned"
HISTORY, DECISION, APPLIED_RESET = "history", "decision", "offset_reset_applied"
REPROMOTED = "-repromoted"  # the key suffix of a re-promotion's decision (`history_marker`)
HALT_KEY, RESET_KEY = "state/halt", "state/offset_reset"

PROFILE_FILE = "profile.json"
MAX_RUN_TAG_CHARS = 7_500  # MLflow allows 8,000; longer records go to an artifact the tag points to
MAX_VERSION_TAG_CHARS = 95_000  # model version tags: 100,000
PENDING_TIMEOUT_S = 120.0  # a staged version lives two calls; one this old was abandoned

# MLflow's HTTP client retries a failing server for about 4 minutes by default; a registry that does
# not answer within seconds is reported as unavailable instead (a scorer says so on /healthz and keeps
# serving). Set the variables to override; the other two silence progress bars and "View run" lines.
CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
UNAVAILABLE_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"}


def check_namespace(namespace: str | None) -> str | None:
    """A deployment's namespace on a shared MLflow server (None or empty: none). MLflow refuses `/` and
    `:` in model names; a dot would make `<namespace>.<stream>` ambiguous."""
    namespace = (namespace or "").strip() or None
    if namespace is not None and not NAMESPACE_PATTERN.fullmatch(namespace):
        raise RegistryError(
            f"MLflow namespace {namespace!r}: use 1-63 letters, digits, '_' or '-', starting with a letter or "
            "digit (e.g. team-a)"
        )
    return namespace


def _unavailable(exc: BaseException) -> bool:
    """Whether `exc` means "the server did not answer (well)" rather than "the answer is no"."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(exc, requests.exceptions.HTTPError):
        response = exc.response
        return response is None or response.status_code >= 500
    if isinstance(exc, requests.exceptions.RequestException | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, MlflowException):
        text = str(exc)
        if "404 Client Error" in text or "RESOURCE_DOES_NOT_EXIST" in text:
            return False
        return exc.error_code in UNAVAILABLE_CODES or exc.get_http_status_code() >= 500
    return False


def _code(exc: BaseException) -> str | None:
    return getattr(exc, "error_code", None)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def without_credentials(uri: str) -> str:
    """`uri` without a user, password or query string (`https://u:token@host/x?sig=...` -> `https://host/x`)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri.partition("?")[0]
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query=""))


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS).decode()


def _attempt_key(stream: str, meta: dict[str, Any]) -> str:
    """What identifies one registration: a retry of the same batch on the same parent computes the same key."""
    offsets = meta.get("offsets") or {}
    identity = {
        "stream": stream,
        "parent": meta.get("parent"),
        "version": meta.get("version"),
        "batch": offsets.get("batch"),
        "learned": offsets.get("learned"),
        "kind": "retrain" if meta.get("retrain") else "replay" if meta.get("replay") else "batch",
    }
    return hashlib.sha256(_json(identity).encode()).hexdigest()[:32]


def _at_ns(at: Any) -> int:
    """A record's `at` (ISO 8601) as epoch nanoseconds, for ordering imported records among new ones."""
    try:
        return int(datetime.fromisoformat(str(at)).timestamp() * 1e9)
    except ValueError:
        return 0


def _finite(value: Any) -> bool:
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    return numeric and value == value and abs(value) != float("inf")


@dataclass(frozen=True)
class _Entry:
    """One MLflow model version as Streamfit sees it."""

    mv: Any  # mlflow.entities.model_registry.ModelVersion

    @property
    def number(self) -> int:
        return int(self.mv.version)

    @property
    def tags(self) -> dict[str, str]:
        return self.mv.tags or {}

    @property
    def discarded(self) -> bool:
        return DISCARDED_TAG in self.tags

    @property
    def committed(self) -> bool:
        return VERSION_TAG in self.tags and not self.discarded

    @property
    def staged(self) -> bool:
        """Created by Streamfit, not committed (yet), not discarded."""
        return ATTEMPT_TAG in self.tags and VERSION_TAG not in self.tags and not self.discarded

    @property
    def parent(self) -> str | None:
        parent = self.tags.get(PARENT_TAG, NO_PARENT)
        return None if parent == NO_PARENT else parent


def _translating(what: str) -> Callable:
    """Turn "MLflow did not answer" into RegistryUnavailable (the caller retries later; a scorer keeps serving)."""

    def decorate(method: Callable) -> Callable:
        @functools.wraps(method)
        def wrapper(self: MlflowRegistry, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except RegistryError:
                raise
            except Exception as exc:
                if _unavailable(exc):
                    raise RegistryUnavailable(
                        f"MLflow at {self.tracking_uri} is unreachable or failing while {what}: {_short(exc)}; "
                        "retry when it answers (a registration cut short is finished or discarded by its retry)"
                    ) from exc
                raise

        return wrapper

    return decorate


class MlflowRegistry(ModelRegistry):
    """Streamfit's registry on an MLflow tracking server (MLflow 3.x); see the module docstring."""

    def __init__(
        self,
        tracking_uri: str,
        root: str | Path | None = None,
        *,
        registry_uri: str | None = None,
        namespace: str | None = None,
        pending_timeout_s: float = PENDING_TIMEOUT_S,
    ) -> None:
        for name, value in CLIENT_DEFAULTS.items():
            os.environ.setdefault(name, value)
        from mlflow import MlflowClient

        if root is None:
            from dagster_project.settings import registry_root

            root = registry_root()
        self.root = Path(root)
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.namespace = check_namespace(namespace)
        self.pending_timeout_s = pending_timeout_s
        # Every call that writes to MLflow goes through this one client (tests inject faults here).
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=self.registry_uri)
        self._lock = threading.Lock()
        self._experiments: dict[str, str] = {}
        self._models: set[str] = set()
        self._writer_runs: dict[str, str] = {}
        self._profiles: dict[tuple[str, int], dict[str, Any]] = {}

    def __repr__(self) -> str:
        namespace = f", namespace={self.namespace!r}" if self.namespace else ""
        return f"MlflowRegistry({self.tracking_uri!r}, root={str(self.root)!r}{namespace})"

    def _model(self, stream: str) -> str:
        """The stream's registered model: `<namespace>.<stream>` in a namespace, else the stream's name.
        Stream names have no dot, so two deployments' names never meet."""
        return f"{self.namespace}.{stream}" if self.namespace else stream

    def registered_model(self, stream: str) -> str:
        """The name MLflow's UI and `models:/` URIs show for the stream (the namespace's, when set)."""
        return self._model(stream)

    def _experiment_name(self, stream: str) -> str:
        return EXPERIMENT_PREFIX + (f"{self.namespace}/{stream}" if self.namespace else stream)

    @property
    def address(self) -> str:
        """The registry's URI without credentials: it is shown on the scorer's open `/healthz`."""
        return f"MLflow at {without_credentials(self.registry_uri)}"

    # ------------------------------------------------------------------ reading versions

    def _search(self, filter_string: str) -> list[_Entry]:
        found: list[_Entry] = []
        token = None
        while True:
            page = self.client.search_model_versions(filter_string, page_token=token)
            found.extend(_Entry(mv) for mv in page)
            token = page.token
            if not token:
                break
        return sorted(found, key=lambda e: e.number)

    def _entries(self, stream: str) -> list[_Entry]:
        """Every model version of the stream's registered model, in MLflow's order."""
        return self._search(f"name = '{self._model(stream)}'")

    def _links(self, stream: str, entry: _Entry) -> dict[str, Any]:
        links: dict[str, Any] = {
            "model_version": entry.number,
            "model_uri": f"models:/{self._model(stream)}/{entry.number}",
            "run_id": entry.mv.run_id,
        }
        base = self.tracking_uri.rstrip("/") if self.tracking_uri.startswith(("http://", "https://")) else None
        if base:
            links["model_version_url"] = f"{base}/#/models/{quote(self._model(stream))}/versions/{entry.number}"
            experiment = entry.tags.get(EXPERIMENT_TAG)
            if experiment and entry.mv.run_id:
                links["run_url"] = f"{base}/#/experiments/{experiment}/runs/{entry.mv.run_id}"
        return links

    def _meta(self, stream: str, entry: _Entry) -> dict[str, Any]:
        uri = f"models:/{self._model(stream)}/{entry.number}"
        raw = entry.tags.get(META_TAG)
        try:
            meta = orjson.loads(raw) if raw is not None else None
        except orjson.JSONDecodeError as exc:
            meta = None
            error = f"its tag {META_TAG} is not valid JSON ({exc})"
        else:
            error = f"it has no tag {META_TAG}"
        if not isinstance(meta, dict):
            raise BrokenRegistryFile(
                f"{uri} ({entry.tags.get(VERSION_TAG)}) cannot be read: {error}; restore the tag from the source "
                f"run's {META_FILE} artifact, or set the tag {DISCARDED_TAG} on it to drop the version",
                uri,
            )
        meta["mlflow"] = self._links(stream, entry)
        return meta

    def _chain(self, stream: str, entries: list[_Entry]) -> tuple[list[Version], list[BrokenVersion]]:
        """The committed versions in order, and those that cannot be used (unreadable, or a duplicate name)."""
        valid: list[Version] = []
        broken: list[BrokenVersion] = []
        holder: dict[str, int] = {}
        for entry in (e for e in entries if e.committed):
            name, uri = entry.tags[VERSION_TAG], f"models:/{self._model(stream)}/{entry.number}"
            if not is_version_name(name):
                log.warning("%s: %s has %s=%r, not a version name; ignored", stream, uri, VERSION_TAG, name)
                continue
            if name in holder or (valid and version_number(name) <= valid[-1].number):
                first = holder.get(name)
                broken.append(
                    BrokenVersion(
                        stream,
                        name,
                        uri,
                        f"{uri} claims {name} out of order"
                        + (f" (MLflow version {first} holds it)" if first else "")
                        + f": set the tag {DISCARDED_TAG} on it",
                    )
                )
                continue
            holder[name] = entry.number
            try:
                valid.append(Version(stream, name, self._meta(stream, entry)))
            except BrokenRegistryFile as exc:
                broken.append(BrokenVersion(stream, name, uri, str(exc)))
        return valid, broken

    @staticmethod
    def _usable(stream: str, valid: list[Version], broken: list[BrokenVersion]) -> list[Version]:
        """The filesystem's rule: a broken newest version stops training (which offsets it learned is unknown)."""
        if broken and (not valid or broken[-1].number > valid[-1].number):
            newest = broken[-1]
            fallback = f"{valid[-1].name} becomes the head again" if valid else "the stream starts from scratch"
            raise BrokenRegistryFile(
                f"{stream}: the newest version {newest.name} is broken, so which offsets it learned is unknown and "
                f"training stops: {newest.error} (once it is discarded, {fallback} and its later batches are "
                "learned again)",
                newest.path,
            )
        return valid

    @_translating("listing streams")
    def streams(self) -> list[str]:
        """Every stream registered in this registry's namespace: the registered models Streamfit created
        (tagged with their stream) under this namespace's names, not a shared server's other models nor
        another deployment's streams."""
        names: list[str] = []
        token = None
        while True:  # filtered by the tag on the server: a shared server's other models cost no page
            page = self.client.search_registered_models(
                filter_string=f"tags.`{STREAM_TAG}` LIKE '%'", max_results=1000, page_token=token
            )
            for model in page:
                stream = (model.tags or {}).get(STREAM_TAG)
                if stream and model.name == self._model(stream):
                    names.append(stream)
            token = page.token
            if not token:
                break
        return sorted(names)

    @_translating("listing versions")
    def scan(self, stream: str) -> tuple[list[Version], list[BrokenVersion]]:
        return self._chain(stream, self._entries(stream))

    @_translating("listing versions")
    def versions(self, stream: str) -> list[Version]:
        return self._usable(stream, *self._chain(stream, self._entries(stream)))

    def _entry(self, stream: str, version: str) -> _Entry:
        if is_version_name(version):
            for entry in self._search(f"name = '{self._model(stream)}' and tags.`{VERSION_TAG}` = '{version}'"):
                if entry.committed:
                    return entry
        raise RegistryError(f"{stream} has no version {version!r}; `streamfit models list {stream}` shows them")

    @_translating("reading a version")
    def get(self, stream: str, version: str) -> Version:
        return Version(stream, version, self._meta(stream, self._entry(stream, version)))

    @_translating("reading a version")
    def location(self, stream: str, version: str) -> str | None:
        entry = self._entry(stream, version)
        return f"models:/{self._model(stream)}/{entry.number} ({entry.tags.get(MODEL_ARTIFACTS_TAG)}/{ONNX_FILE})"

    def _download(self, uri: str, what: str) -> bytes:
        import mlflow.artifacts

        with tempfile.TemporaryDirectory(prefix="streamfit-mlflow-") as directory:
            try:
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=uri, dst_path=directory, tracking_uri=self.tracking_uri
                )
            except Exception as exc:
                if _unavailable(exc):
                    raise
                raise BrokenRegistryFile(f"{what}: {uri} cannot be read ({_short(exc)})", uri) from exc
            return Path(local).read_bytes()

    def _read_verified(self, stream: str, version: str, file_name: str) -> bytes:
        entry = self._entry(stream, version)
        meta = self._meta(stream, entry)
        base = entry.tags.get(MODEL_ARTIFACTS_TAG if file_name == ONNX_FILE else RUN_ARTIFACTS_TAG)
        where = f"{stream}/{version}/{file_name}"
        if not base:
            raise BrokenRegistryFile(
                f"{where}: models:/{self._model(stream)}/{entry.number} names no artifact location", where
            )
        data = self._download(f"{base}/{file_name}", where)
        if _sha256(data) != meta["sha256"][file_name]:
            raise ChecksumMismatch(
                f"{where} does not match its sha256 ({base}/{file_name}, MLflow version {entry.number}); "
                "refusing to load it"
            )
        return data

    @_translating("loading an estimator")
    def load_estimator(self, stream: str, version: str) -> Any:
        import joblib

        return joblib.load(io.BytesIO(self._read_verified(stream, version, ESTIMATOR_FILE)))

    @_translating("loading a model")
    def load_onnx(self, stream: str, version: str) -> bytes:
        return self._read_verified(stream, version, ONNX_FILE)

    @_translating("reading a data profile")
    def profile(self, stream: str, version: str) -> dict[str, Any]:
        entry = self._entry(stream, version)
        key = (stream, entry.number)
        if key not in self._profiles:  # a committed version never changes
            name, base = entry.tags.get(PROFILE_TAG), entry.tags.get(RUN_ARTIFACTS_TAG)
            if not name or not base:
                return {}
            raw = self._download(f"{base}/{name}", f"{stream}/{version}/{name}")
            try:
                self._profiles[key] = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                where = f"{stream}/{version}/{name}"
                raise BrokenRegistryFile(f"{where} is not valid JSON ({exc})", f"{base}/{name}") from exc
        return self._profiles[key]

    # ------------------------------------------------------------------ registering

    @_translating("registering a version")
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
        """Stage everything, re-check, then commit with one tag; refuse if `parent` is no longer the head."""
        import joblib

        buffer = io.BytesIO()
        joblib.dump(estimator, buffer)
        estimator_bytes = buffer.getvalue()
        entries = self._entries(stream)
        head = self._head(stream, entries)
        head_name = head.name if head else None
        if head_name != parent:
            raise StaleParent(f"{stream}: head is {head_name}, not {parent}; this batch was built on a stale model")
        full_meta = {
            **meta,
            "stream": stream,
            "version": version_name(max(head.number if head else 0, number_after) + 1),
            "parent": parent,
            "created_at": _now(),
            "sha256": _checksums(onnx_bytes, estimator_bytes, feature_state),
        }
        return self._stage_and_commit(
            stream, entries, full_meta, onnx_bytes, estimator_bytes, feature_state=feature_state
        )

    def _head(self, stream: str, entries: list[_Entry]) -> Version | None:
        found = self._usable(stream, *self._chain(stream, entries))
        return found[-1] if found else None

    def _stage_and_commit(
        self,
        stream: str,
        entries: list[_Entry],
        meta: dict[str, Any],
        onnx_bytes: bytes,
        estimator_bytes: bytes,
        check_parent: bool = True,
        feature_state: bytes | None = None,
    ) -> Version:
        attempt = _attempt_key(stream, meta)
        for entry in entries:
            if entry.staged and entry.tags.get(ATTEMPT_TAG) == attempt:
                log.warning(
                    "%s: an earlier attempt staged %s as MLflow version %s and stopped before its commit: committing",
                    stream,
                    meta["version"],
                    entry.number,
                )
                return self._commit(stream, entry, check_parent)
        summary = {k: v for k, v in meta.items() if k != "profile"}
        summary_json = _json(summary)
        if len(summary_json) > MAX_VERSION_TAG_CHARS:
            raise RegistryError(
                f"{stream}: {meta['version']}'s metadata is {len(summary_json):,} characters, more than an MLflow "
                f"model version tag holds ({MAX_VERSION_TAG_CHARS:,}); nothing was registered"
            )
        experiment_id = self._experiment(stream, create=True)
        self._ensure_model(stream)
        self._abandon_runs(stream, experiment_id, attempt)
        run_id, run_artifacts = self._log_run(stream, experiment_id, meta, estimator_bytes, attempt, feature_state)
        model_id, model_artifacts = self._log_onnx(stream, experiment_id, run_id, meta["version"], onnx_bytes)
        self.client.set_terminated(run_id, "FINISHED")
        offsets = meta.get("offsets") or {}
        tags = {
            STREAM_TAG: stream,
            ATTEMPT_TAG: attempt,
            PARENT_TAG: meta.get("parent") or NO_PARENT,
            META_TAG: summary_json,
            BATCH_TAG: _json(offsets.get("batch") or {}),
            LEARNED_TAG: _json(offsets.get("learned") or {}),
            TOPIC_TAG: str(offsets.get("topic") or ""),
            SHA256_TAG + ONNX_FILE: meta["sha256"][ONNX_FILE],
            SHA256_TAG + ESTIMATOR_FILE: meta["sha256"][ESTIMATOR_FILE],
            EXPERIMENT_TAG: experiment_id,
            RUN_ARTIFACTS_TAG: run_artifacts,
            MODEL_ARTIFACTS_TAG: model_artifacts,
        }
        if meta.get("profile") is not None:
            tags[PROFILE_TAG] = PROFILE_FILE
        for key, tag in RECORDED_EXTRAS.items():
            if meta.get(key):
                tags[tag] = _json(meta[key])
        mv = self.client.create_model_version(
            self._model(stream),
            f"models:/{model_id}",
            run_id=run_id,
            tags=tags,
            description=f"Streamfit {meta['version']} of {stream} (parent {meta.get('parent') or 'none'})",
            await_creation_for=0,
            model_id=model_id,
        )
        return self._commit(stream, _Entry(mv), check_parent)

    def _commit(self, stream: str, staged: _Entry, check_parent: bool = True) -> Version:
        """Re-read the registry, then set `streamfit.version`: the commit point."""
        entries = self._entries(stream)
        mine = next((e for e in entries if e.number == staged.number), None)
        if mine is None or mine.discarded:
            why = mine.tags.get(DISCARDED_TAG) if mine else "it was deleted"
            raise StaleParent(f"{stream}: the staged MLflow version {staged.number} cannot be committed: {why}")
        meta = orjson.loads(mine.tags[META_TAG])
        name, parent = meta["version"], meta.get("parent")
        head = self._head(stream, entries)
        if check_parent and (head.name if head else None) != parent:
            self._discard(stream, mine, f"its parent {parent} is no longer the head ({head.name if head else None})")
            raise StaleParent(f"{stream}: head is {head.name if head else None}, not {parent}; nothing was registered")
        if not check_parent and head is not None and version_number(name) <= head.number:
            self._discard(stream, mine, f"{head.name} is already the head")
            raise StaleParent(f"{stream}: {name} is not newer than the head {head.name}")
        for rival in entries:
            if rival.number >= mine.number or not rival.staged or rival.parent != mine.parent:
                continue
            waited_s = (mine.mv.creation_timestamp - rival.mv.creation_timestamp) / 1000
            if waited_s > self.pending_timeout_s:
                self._discard(stream, rival, f"abandoned: staged {waited_s:.0f}s before MLflow version {mine.number}")
                continue
            self._discard(stream, mine, f"MLflow version {rival.number}, staged earlier on {parent}, goes first")
            raise StaleParent(
                f"{stream}: another registration on top of {parent} (MLflow version {rival.number}) is in flight; "
                "nothing was registered"
            )
        for stale in entries:  # staged on a parent that is no longer the head: they can never commit
            if stale.staged and stale.number != mine.number and stale.parent != mine.parent:
                self._discard(stream, stale, f"its parent {stale.parent} is no longer the head")
        self.client.set_model_version_tag(self._model(stream), str(mine.number), VERSION_TAG, name)  # THE COMMIT POINT
        meta["mlflow"] = self._links(stream, mine)
        log.info("%s: committed %s as MLflow version %s", stream, name, mine.number)
        return Version(stream, name, meta)

    def _discard(self, stream: str, entry: _Entry, why: str) -> None:
        self.client.set_model_version_tag(self._model(stream), str(entry.number), DISCARDED_TAG, why)
        log.warning("%s: discarded the staged MLflow version %s: %s", stream, entry.number, why)

    def _experiment(self, stream: str, create: bool = False) -> str | None:
        if stream in self._experiments:
            return self._experiments[stream]
        from mlflow.exceptions import MlflowException

        name = self._experiment_name(stream)
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            if not create:
                return None
            try:
                self.client.create_experiment(name, tags={STREAM_TAG: stream})
            except MlflowException as exc:
                if _code(exc) != "RESOURCE_ALREADY_EXISTS":
                    raise
            experiment = self.client.get_experiment_by_name(name)
        if experiment.lifecycle_stage == "deleted":
            raise RegistryError(
                f"{stream}: the MLflow experiment {name!r} was deleted; restore it "
                f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) or purge it"
            )
        with self._lock:
            self._experiments[stream] = experiment.experiment_id
        return experiment.experiment_id

    def _ensure_model(self, stream: str) -> None:
        if stream in self._models:
            return
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(
                self._model(stream),
                tags={STREAM_TAG: stream} | ({NAMESPACE_TAG: self.namespace} if self.namespace else {}),
                description=f"Streamfit stream {stream}: one version per batch",
            )
        except MlflowException as exc:
            if _code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise
        with self._lock:
            self._models.add(stream)

    def _abandon_runs(self, stream: str, experiment_id: str, attempt: str) -> None:
        """Runs of earlier attempts at this registration that died before their model version existed."""
        for run in self.client.search_runs([experiment_id], f"tags.`{ATTEMPT_TAG}` = '{attempt}'"):
            run_id = run.info.run_id
            self.client.set_tag(run_id, ABANDONED_TAG, "an attempt that stopped before its model version existed")
            if run.info.status != "FAILED":
                self.client.set_terminated(run_id, "FAILED")
            log.warning("%s: marked the run %s of an attempt that stopped early as FAILED", stream, run_id)

    def _log_run(
        self,
        stream: str,
        experiment_id: str,
        meta: dict[str, Any],
        estimator_bytes: bytes,
        attempt: str,
        feature_state: bytes | None = None,
    ) -> tuple[str, str]:
        """The version's source run: metrics, params, estimator, profile, meta.json; returns (run id, artifact URI)."""
        from mlflow.entities import Metric, Param

        name = meta["version"]
        run = self.client.create_run(
            experiment_id,
            run_name=f"{stream} {name}",
            tags={
                STREAM_TAG: stream,
                ATTEMPT_TAG: attempt,
                "streamfit.intended_version": name,
                PARENT_TAG: meta.get("parent") or NO_PARENT,
                "streamfit.dagster_run_id": str(meta.get("run_id") or ""),
            },
        )
        run_id = run.info.run_id
        now_ms = int(time.time() * 1000)
        metrics: dict[str, float] = {}
        params: dict[str, str] = {}
        for prefix, values in (
            ("prequential", meta.get("metrics")),
            ("parity", meta.get("parity")),
            ("timings", meta.get("timings")),
            ("rows", meta.get("rows")),
        ):
            for key, value in (values or {}).items():
                if isinstance(value, bool):
                    metrics[f"{prefix}.{key}"] = float(value)
                elif _finite(value):
                    metrics[f"{prefix}.{key}"] = float(value)
                elif value is not None and not isinstance(value, dict | list):
                    params[f"{prefix}.{key}"] = str(value)[:500]
        if _finite(meta.get("rows_learned_total")):
            metrics["rows_learned_total"] = float(meta["rows_learned_total"])
        for key in ("estimator", "task", "parent", "version", "run_id"):
            if meta.get(key) is not None:
                params[key] = str(meta[key])[:500]
        if meta.get("features"):
            params["features"] = ",".join(map(str, meta["features"]))[:5000]
        if meta.get("classes") is not None:
            params["classes"] = _json(meta["classes"])[:500]
        for key in RECORDED_EXTRAS:
            if meta.get(key):
                params[key] = _json(meta[key])[:5000]
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, v, now_ms, 0) for k, v in metrics.items()],
            params=[Param(k, v) for k, v in params.items()],
        )
        with tempfile.TemporaryDirectory(prefix="streamfit-mlflow-") as directory:
            full = orjson.dumps(meta, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
            files = {ESTIMATOR_FILE: estimator_bytes, META_FILE: full}
            if feature_state is not None:  # the version's derived-feature state, checksummed in meta
                files[FEATURES_FILE] = feature_state
            if meta.get("profile") is not None:
                files[PROFILE_FILE] = orjson.dumps(meta["profile"], option=orjson.OPT_NON_STR_KEYS)
            for file_name, data in files.items():
                Path(directory, file_name).write_bytes(data)
            self.client.log_artifacts(run_id, directory)
        return run_id, run.info.artifact_uri

    def _log_onnx(self, stream: str, experiment_id: str, run_id: str, name: str, onnx_bytes: bytes) -> tuple[str, str]:
        """model.onnx as a LoggedModel in MLflow's onnx flavor, with a signature; returns (model id, artifact URI).

        The same steps as `mlflow.onnx.log_model`, through this registry's client instead of the
        process-global tracking URI and active run. The file logged is the exact bytes the checksum covers.
        """
        import mlflow.onnx
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus
        from mlflow.models import Model

        proto = _parse_onnx(onnx_bytes, f"{stream} {name}")
        model = self.client.create_logged_model(
            experiment_id,
            name="model",
            source_run_id=run_id,
            tags={STREAM_TAG: stream, "streamfit.intended_version": name},
            model_type="onnx",
        )
        with tempfile.TemporaryDirectory(prefix="streamfit-mlflow-") as directory:
            path = os.path.join(directory, "model")
            mlflow.onnx.save_model(
                proto,
                path,
                signature=_signature(proto),
                pip_requirements=_pip_requirements(),
                save_as_external_data=False,
                mlflow_model=Model(artifact_path=model.artifact_location, run_id=run_id, model_id=model.model_id),
            )
            Path(path, ONNX_FILE).write_bytes(onnx_bytes)  # save_model re-serializes; keep the checksummed bytes
            self.client.log_model_artifacts(model.model_id, path)
        self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        return model.model_id, model.artifact_location

    # ------------------------------------------------------------------ champion

    def _alias_entry(self, stream: str) -> _Entry | None:
        """The model version the alias names, committed or not; None when there is no alias (or no model)."""
        from mlflow.exceptions import MlflowException

        try:
            return _Entry(self.client.get_model_version_by_alias(self._model(stream), CHAMPION_ALIAS))
        except MlflowException as exc:
            if _code(exc) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") and not _unavailable(exc):
                return None  # no registered model yet, or no alias yet
            raise

    @_translating("reading the champion alias")
    def champion(self, stream: str) -> str | None:
        return self._champion_of(stream, self._alias_entry(stream))

    def _champion_of(self, stream: str, entry: _Entry | None) -> str | None:
        """The version the alias names; when MLflow dropped the alias, the version it last named.

        Deleting a model version deletes its aliases too, where the filesystem's alias file keeps
        naming the deleted version: the history's last record stands in for it, so scorers fall back
        to the newest valid champion and `models rollback` works, as on the filesystem."""
        if entry is None:
            history = self._records(stream, HISTORY)
            last = history[-1].get("version") if history else None
            return last if isinstance(last, str) else None
        if not entry.committed:
            uri = f"models:/{self._model(stream)}@{CHAMPION_ALIAS}"
            raise BrokenRegistryFile(
                f"{uri} points at MLflow version {entry.number}, which is not a committed Streamfit version: "
                f"point the alias again with `streamfit models promote {stream} <version>` (see the champion history)",
                uri,
            )
        return entry.tags[VERSION_TAG]

    @_translating("moving the champion alias")
    def set_champion(self, stream: str, version: str, reason: str, evidence: dict[str, Any] | None = None) -> bool:
        """Point `champion` at the version's MLflow number, then append the change to the history.

        An error means nothing changed: a history write that fails puts the alias back, so no scorer
        serves a champion the audit history lacks. The champion promoted again moves nothing: its
        decision's key (`...-repromoted`) is what `history_marker` shows scorers that refused it."""
        entry = self._entry(stream, version)
        before = self._alias_entry(stream)
        try:
            previous = self._champion_of(stream, before)
        except BrokenRegistryFile:  # this write is the repair the error message names
            previous = None
        if previous == version:
            key = f"{DECISION}/{time.time_ns():020d}-{uuid.uuid4().hex[:8]}{REPROMOTED}"
            self._append(stream, DECISION, {"at": _now(), **unchanged_record(version, reason, evidence)}, key)
            return False
        record: dict[str, Any] = {"version": version, "previous": previous, "reason": reason, "at": _now()}
        if evidence:
            record["evidence"] = evidence
        self.client.set_registered_model_alias(self._model(stream), CHAMPION_ALIAS, str(entry.number))
        try:
            self._append(stream, HISTORY, record)
        except Exception:
            self._restore_alias(stream, before, previous)
            raise
        return True

    def _restore_alias(self, stream: str, before: _Entry | None, previous: str | None) -> None:
        """Put the alias back where it was (delete it if there was none) after a failed history write."""
        try:
            if before is None:
                self.client.delete_registered_model_alias(self._model(stream), CHAMPION_ALIAS)
            else:
                self.client.set_registered_model_alias(self._model(stream), CHAMPION_ALIAS, str(before.number))
        except Exception:
            log.exception(
                "%s: the champion history was not written and the alias could not be put back on %s: "
                "run `streamfit models promote %s %s` once MLflow answers",
                stream,
                previous or "no version",
                stream,
                previous or "<version>",
            )

    @_translating("reading the champion history")
    def champion_history(self, stream: str) -> list[dict[str, Any]]:
        return self._records(stream, HISTORY)

    @_translating("reading the champion history")
    def history_marker(self, stream: str) -> str | None:
        """The newest champion-history record's key (None without one): one call, no decoding.

        Every promotion adds a record, and a re-promotion of the champion a decision whose key says so,
        whereas MLflow changes nothing on the model version itself; a scorer that refused a champion
        re-checks it when this changes (the artifact store offers nothing cheap to stat)."""
        tags = [key for run in self._bookkeeping_runs(stream) for key in run.data.tags]
        promoted = max((key for key in tags if key.startswith(HISTORY + "/")), default=None)
        repromoted = max((key for key in tags if key.endswith(REPROMOTED)), default=None)
        return None if promoted is None and repromoted is None else f"{promoted}|{repromoted}"

    # ------------------------------------------------------------------ bookkeeping run

    def _bookkeeping_runs(self, stream: str) -> list[Any]:
        """The stream's bookkeeping runs, oldest first (two only if two processes created one at once)."""
        experiment_id = self._experiment(stream)
        if experiment_id is None:
            return []
        return list(
            self.client.search_runs(
                [experiment_id], f"tags.`{BOOKKEEPING_TAG}` = 'true'", order_by=["attributes.start_time ASC"]
            )
        )

    def _writer_run(self, stream: str) -> str:
        if stream in self._writer_runs:
            return self._writer_runs[stream]
        runs = self._bookkeeping_runs(stream)
        if runs:
            run_id = runs[0].info.run_id
        else:
            experiment_id = self._experiment(stream, create=True)
            run = self.client.create_run(
                experiment_id,
                run_name=f"{stream} bookkeeping",
                tags={
                    BOOKKEEPING_TAG: "true",
                    STREAM_TAG: stream,
                    "mlflow.note.content": "Streamfit's champion history, decisions, halts and offset resets "
                    "of this stream: one tag per record (history/..., decision/..., state/...).",
                },
            )
            run_id = run.info.run_id
            self.client.set_terminated(run_id, "FINISHED")
        with self._lock:
            self._writer_runs[stream] = run_id
        return run_id

    def _set_record(self, stream: str, run_id: str, key: str, record: dict[str, Any]) -> None:
        value = _json(record)
        if len(value) > MAX_RUN_TAG_CHARS:
            path = f"records/{key}.json"
            self.client.log_text(run_id, value, path)
            value = _json({"$artifact": path})
        self.client.set_tag(run_id, key, value)

    def _append(self, stream: str, kind: str, record: dict[str, Any], key: str | None = None) -> None:
        run_id = self._writer_run(stream)
        self._set_record(stream, run_id, key or f"{kind}/{time.time_ns():020d}-{uuid.uuid4().hex[:8]}", record)

    def _decode(self, stream: str, run: Any, key: str, value: str) -> dict[str, Any]:
        where = f"tag {key!r} of the bookkeeping run {run.info.run_id} (experiment {self._experiment_name(stream)})"
        try:
            record = orjson.loads(value)
            if isinstance(record, dict) and set(record) == {"$artifact"}:
                raw = self._download(f"{run.info.artifact_uri}/{record['$artifact']}", where)
                record = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BrokenRegistryFile(
                f"{where} is not valid JSON ({exc}): delete that tag; the other records are unaffected", where
            ) from exc
        return record

    def _records(self, stream: str, kind: str, runs: list[Any] | None = None) -> list[dict[str, Any]]:
        found: list[tuple[str, Any, str]] = []
        for run in runs if runs is not None else self._bookkeeping_runs(stream):
            for key, value in run.data.tags.items():
                if key.startswith(kind + "/"):
                    found.append((key, run, value))
        return [self._decode(stream, run, key, value) for key, run, value in sorted(found, key=lambda f: f[0])]

    def _state(self, stream: str, key: str) -> dict[str, Any] | None:
        for run in self._bookkeeping_runs(stream):
            if key in run.data.tags:
                return self._decode(stream, run, key, run.data.tags[key])
        return None

    def _clear_state(self, stream: str, key: str) -> None:
        for run in self._bookkeeping_runs(stream):
            if key in run.data.tags:
                self.client.delete_tag(run.info.run_id, key)

    @_translating("recording a decision")
    def record_decision(self, stream: str, record: dict[str, Any]) -> None:
        self._append(stream, DECISION, {"at": _now(), **record})

    @_translating("reading decisions")
    def decisions(self, stream: str) -> list[dict[str, Any]]:
        return self._records(stream, DECISION)

    @_translating("recording a halt")
    def set_halt(self, stream: str, record: dict[str, Any]) -> None:
        self._set_record(stream, self._writer_run(stream), HALT_KEY, {"at": _now(), **record})

    @_translating("reading the halt")
    def halt(self, stream: str) -> dict[str, Any] | None:
        return self._state(stream, HALT_KEY)

    @_translating("clearing the halt")
    def clear_halt(self, stream: str, resolution: dict[str, Any]) -> None:
        halt = self.halt(stream)
        if halt is not None:
            self.record_decision(stream, {"kind": "halt_cleared", "halt": without_state(halt), **resolution})
            self._clear_state(stream, HALT_KEY)

    @_translating("recording an offset reset")
    def _store_offset_reset(self, stream: str, record: dict[str, Any]) -> None:
        self._set_record(stream, self._writer_run(stream), RESET_KEY, record)  # a long one goes to an artifact

    @_translating("reading the pending offset reset")
    def _stored_offset_reset(self, stream: str) -> dict[str, Any] | None:
        return self._state(stream, RESET_KEY)

    @_translating("clearing the offset reset")
    def clear_offset_reset(self, stream: str, applied_by_version: str, applied: dict[str, Any] | None = None) -> None:
        pending = self._state(stream, RESET_KEY)
        if not _is_stored(pending, applied):
            return
        self._set_record(stream, self._writer_run(stream), f"{APPLIED_RESET}/{applied_by_version}", pending)
        self._clear_state(stream, RESET_KEY)

    @_translating("dropping a stale offset reset")
    def _drop_offset_reset(self, stream: str, stored: dict[str, Any]) -> None:
        if _is_stored(self._state(stream, RESET_KEY), stored):
            self._clear_state(stream, RESET_KEY)

    @_translating("reading applied offset resets")
    def _kept_applied_resets(self, stream: str) -> dict[str, dict[str, Any]]:
        runs = self._bookkeeping_runs(stream)
        return {
            key.split("/", 1)[1]: self._decode(stream, run, key, value)
            for run in runs
            for key, value in run.data.tags.items()
            if key.startswith(APPLIED_RESET + "/")
        }

    # ------------------------------------------------------------------ migration (streamfit registry migrate)

    @_translating("importing a version")
    def import_version(
        self,
        stream: str,
        version: Version,
        onnx_bytes: bytes,
        estimator_bytes: bytes,
        feature_state: bytes | None = None,
    ) -> str:
        """Copy one version with its own name, parent, created_at and checksums (and its
        features.json, when it has one); 'copied' or 'present'.

        Idempotent: a version already committed with the same checksums is left alone, so an
        interrupted migration is simply run again."""
        meta = {k: v for k, v in version.meta.items() if k != "mlflow"}
        meta.update(stream=stream, version=version.name, parent=version.parent)
        meta["sha256"] = _checksums(onnx_bytes, estimator_bytes, feature_state)
        entries = self._entries(stream)
        for entry in entries:
            if entry.committed and entry.tags.get(VERSION_TAG) == version.name:
                held = self._meta(stream, entry).get("sha256") or {}
                if held == meta["sha256"]:
                    return "present"
                missing = FEATURES_FILE in meta["sha256"] and FEATURES_FILE not in held
                raise RegistryError(
                    f"{stream}: MLflow already holds a different {version.name} "
                    f"(models:/{self._model(stream)}/{entry.number})"
                    + (
                        f" without its {FEATURES_FILE} (copied by an older Streamfit): delete that model version "
                        "and its successors in MLflow, then migrate again"
                        if missing
                        else "; refusing to overwrite it"
                    )
                )
        self._stage_and_commit(
            stream, entries, meta, onnx_bytes, estimator_bytes, check_parent=False, feature_state=feature_state
        )
        return "copied"

    @_translating("importing records")
    def import_records(
        self,
        stream: str,
        history: list[dict[str, Any]],
        decisions: list[dict[str, Any]],
        halt: dict[str, Any] | None,
        pending_reset: dict[str, Any] | None,
        applied_resets: dict[str, dict[str, Any]],
    ) -> None:
        """Write the filesystem's records under keys made from their position: a re-run overwrites, never duplicates."""
        run_id = self._writer_run(stream)
        for kind, records in ((HISTORY, history), (DECISION, decisions)):
            for index, record in enumerate(records):
                self._set_record(stream, run_id, f"{kind}/{_at_ns(record.get('at')):020d}-i{index:07d}", record)
        for version, record in applied_resets.items():
            self._set_record(stream, run_id, f"{APPLIED_RESET}/{version}", record)
        if halt is not None:
            self._set_record(stream, run_id, HALT_KEY, halt)
        if pending_reset is not None:
            self._set_record(stream, run_id, RESET_KEY, pending_reset)

    @_translating("pointing the champion alias")
    def import_champion(self, stream: str, version: str) -> None:
        """Point the alias without adding a history record (the history was copied as it was)."""
        number = str(self._entry(stream, version).number)
        self.client.set_registered_model_alias(self._model(stream), CHAMPION_ALIAS, number)


def _parse_onnx(onnx_bytes: bytes, what: str) -> Any:
    import onnx

    try:
        return onnx.load_from_string(onnx_bytes)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise RegistryError(f"{what}: the model is not ONNX ({_short(exc)}); nothing was registered") from exc


def _signature(proto: Any) -> Any:
    """The model's tensor inputs and outputs as an MLflow signature (-1 for dynamic dimensions)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec
    from onnx import helper

    def specs(values: Iterator[Any]) -> list[Any]:
        found = []
        for value in values:
            tensor = value.type.tensor_type if value.type.HasField("tensor_type") else None
            if tensor is None:
                continue  # sequences and maps (ZipMap) have no tensor spec
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
            found.append(TensorSpec(dtype, shape, value.name))
        return found

    inputs = specs(iter(proto.graph.input))
    outputs = specs(iter(proto.graph.output))
    return ModelSignature(inputs=Schema(inputs) if inputs else None, outputs=Schema(outputs) if outputs else None)


@functools.cache
def _pip_requirements() -> list[str]:
    """The runtime the model needs, pinned to what exported it (MLflow would otherwise spend seconds inferring it)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    found = []
    for package in ("onnx", "onnxruntime"):
        try:
            found.append(f"{package}=={installed(package)}")
        except PackageNotFoundError:
            found.append(package)
    return found
