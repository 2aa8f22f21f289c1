"""The model being served: watch the registry's `champion` alias and hot-swap onnxruntime sessions.

A background thread reads the alias every `interval_s` (0.25 s by default). When it names another
version, that version's model.onnx is loaded through the registry (which verifies its sha256),
checked against the stream's spec, warmed up, and only then published by replacing one attribute:
an atomic reference swap. Readers take `watcher.current` once per Kafka batch or HTTP request and
use that snapshot to the end, so a swap never fails or mixes a request; the old session is freed
when the last request holding it finishes.

A version that cannot be served (checksum mismatch, unreadable file, a model that does not fit the
spec) is refused loudly and counted in `streamfit_model_load_failures_total`. The scorer then
serves the newest valid version of the champion history (else the newest valid version at all),
says so in `status.degraded` and `streamfit_serving_fallback`, and re-checks the refused version on
every tick, cheaply: it is loaded again only when its files change (on MLflow, when a version is
promoted again; else every `retry_refused_s`), so a repaired file or a newly promoted version is
served within a tick.

A registry that cannot be reached (an MLflow server down or failing: `RegistryUnavailable`, or any
error reading the alias) refuses nothing: the last good model keeps serving, `status.registry_error`
and /healthz say why, `streamfit_registry_up` drops to 0, and the next tick tries again. A registry
that answers with a broken alias (`BrokenRegistryFile`: a damaged alias file, an MLflow alias on a
version Streamfit never committed) is not an outage: the last good model keeps serving, and
`status.degraded` carries the error, which names the repair.

The served version's files are watched too (`served_files`): deleted or damaged while it serves from
memory, `status.unloadable` says so (with the repair), and `streamfit_served_model_unloadable` is 1,
because the next scorer to start could not load it. The model in memory keeps serving.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from dagster_project.features.checkpoint import state_after
from dagster_project.ingest.categories import encoding_signature
from dagster_project.onnx.export import OnnxModel
from dagster_project.registry.contract import spec_changed
from dagster_project.registry.store import BrokenRegistryFile, ModelRegistry, RegistryUnavailable
from dagster_project.serving.candidates import Refusal, describe_failure, fallback_candidates, fingerprint
from dagster_project.serving.metrics import ScorerMetrics
from dagster_project.serving.served_files import ServedFiles
from dagster_project.spec import StreamSpec

log = logging.getLogger(__name__)

_VERSION_NUMBER = re.compile(r"(\d+)$")


class IncompatibleModel(ValueError):
    """The model loads but does not fit the stream's spec (feature count, category encoding, task or classes)."""


def version_number(version: str) -> int:
    """`v12` -> 12; 0 for names without a trailing number (other registries may name versions freely)."""
    match = _VERSION_NUMBER.search(version)
    return int(match.group(1)) if match else 0


@dataclass(frozen=True)
class ServedModel:
    """One loaded, verified version; immutable, so any thread may use a reference it holds."""

    stream: str
    version: str
    model: OnnxModel = field(repr=False)
    classes: tuple[Any, ...] | None
    loaded_at: float

    @property
    def number(self) -> int:
        return version_number(self.version)

    @classmethod
    def load(cls, spec: StreamSpec, version: str, onnx_bytes: bytes) -> ServedModel:
        """Build the session and check it against the spec on one row before anyone can use it."""
        model = OnnxModel(onnx_bytes)
        width = len(spec.inputs)
        if model.n_features is not None and model.n_features != width:
            raise IncompatibleModel(f"{version} takes {model.n_features} features, the spec of {spec.name} has {width}")
        expected = encoding_signature(spec)
        if model.encoding != expected:
            raise IncompatibleModel(
                f"{version} encodes category features as {model.encoding or 'nothing'} but the spec of {spec.name} "
                f"says {expected or 'none'}: serve a version trained with this spec's categories, or restore them"
            )
        expects_classifier = spec.task == "classification"
        if model.is_classifier != expects_classifier:
            kind = "a classifier" if model.is_classifier else "a regressor"
            raise IncompatibleModel(f"{version} is {kind} but {spec.name} is a {spec.task} stream")
        classes = tuple(spec.label.classes) if expects_classifier and spec.label.classes else None
        served = cls(spec.name, version, model, classes, time.time())
        warm = model.predict(np.zeros((1, width), dtype=np.float32))  # also warms the session up
        if classes is not None:
            columns = warm.scores.shape[1] if warm.scores is not None and warm.scores.ndim == 2 else None
            if columns != len(classes):
                raise IncompatibleModel(
                    f"{version} outputs {columns} class scores, the spec lists {len(classes)} classes"
                )
        return served

    def score(self, X: np.ndarray) -> tuple[list[Any], list[list[float]] | None]:
        """Predictions and per-row scores for float32 rows.

        Classification: the spec's class values (the model predicts class indices) and the class
        probabilities, or decision scores for models without predict_proba (hinge loss).
        Regression: the predicted values, and no scores (None).
        """
        return self.as_lists(*self.outputs(X))

    def outputs(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The model's raw outputs for float32 rows: class indices and scores, or values and None.

        Arrays, so a batch of several requests can be split into views without making Python
        objects that outlive one request (the garbage collector would promote them to its oldest
        generation and then scan the whole heap: ~70 ms pauses measured at 100-row requests).
        """
        out = self.model.predict(X)
        if self.classes is not None:
            return out.labels, out.scores
        return out.values, None

    def as_lists(self, labels: np.ndarray, scores: np.ndarray | None) -> tuple[list[Any], list[list[float]] | None]:
        """`outputs` as `score` answers them: class values (or values) and score lists."""
        # float32 -> float64 is exact, and float64's tolist() is 3-4x faster than float32's (same Python floats)
        if self.classes is not None:
            classes = self.classes
            return [classes[i] for i in labels.astype(np.int64).tolist()], scores.astype(np.float64).tolist()
        return labels.astype(np.float64).tolist(), None


@dataclass(frozen=True)
class WatchStatus:
    """What the watcher knows beyond the served model; replaced whole, so readers see one state."""

    alias: str | None = None  # the version the champion alias names
    refused: str | None = None  # that version, while it cannot be served
    degraded: str | None = None  # why the served version is not the alias's, for /healthz and logs
    registry_error: str | None = None  # why the last read of the registry failed (the last good model serves)
    unloadable: str | None = None  # why the served version's files could no longer be loaded (it serves from memory)

    @property
    def problem(self) -> str | None:
        """Everything /healthz should say is wrong, in one line (None when nothing is)."""
        parts = [self.degraded] if self.degraded else []
        if self.registry_error:
            parts.append(f"registry unreachable or failing ({self.registry_error})")
        if self.unloadable:
            parts.append(self.unloadable)
        return "; ".join(parts) or None


class ChampionWatcher:
    """Follows `registry.champion(stream)` and publishes the served model as `current`."""

    def __init__(
        self,
        registry: ModelRegistry,
        spec: StreamSpec,
        metrics: ScorerMetrics,
        interval_s: float = 0.25,
        retry_refused_s: float = 30.0,
    ) -> None:
        self.registry = registry
        self.spec = spec
        self.metrics = metrics
        self.interval_s = interval_s
        self.retry_refused_s = retry_refused_s
        self._current: ServedModel | None = None
        self._status = WatchStatus()
        self._refusals: dict[str, Refusal] = {}
        self._served_files = ServedFiles()
        self._unloadable: str | None = None  # stamped on every status (see _files_gone)
        self._loaded = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # serializes check(): the thread and direct callers (tests)

    @property
    def current(self) -> ServedModel | None:
        """The model to use now; take it once per batch or request and keep that reference."""
        return self._current

    @property
    def status(self) -> WatchStatus:
        return self._status

    @property
    def refused(self) -> str | None:
        """The version the alias names while it cannot be served (None once it, or another champion, loads)."""
        return self._status.refused

    @property
    def degraded(self) -> str | None:
        """Why the served version may not be the champion's (a refused champion, an unreachable registry)."""
        return self._status.problem

    def wait_for_model(self, timeout_s: float | None = None) -> ServedModel | None:
        """Block until a model is loaded (or the timeout passes); returns it, or None."""
        self._loaded.wait(timeout_s)
        return self._current

    def check(self) -> bool:
        """Read the alias once and load what should be served; True when the served model changed."""
        with self._lock:
            return self._check()

    def _check(self) -> bool:
        try:
            self._unloadable = self._files_gone()
            return self._follow()
        except Exception as exc:  # reading the alias, or RegistryUnavailable while loading: nothing is refused
            self._registry_failed(exc)
            return False

    def _registry_failed(self, exc: BaseException) -> None:
        stream = self.spec.name
        reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        self.metrics.registry_errors.labels(stream).inc()
        self.metrics.registry_up.labels(stream).set(0)
        if self._status.registry_error is None:
            log.error(
                "%s: the registry cannot be read (%s); still serving %s, retrying every tick",
                stream,
                reason,
                self._served_name(),
                exc_info=not isinstance(exc, RegistryUnavailable),
            )
        self._set_status(replace(self._status, registry_error=f"{reason}; still serving {self._served_name()}"))

    def _files_gone(self) -> str | None:
        """Why the served version could not be loaded again from the registry (None when it could)."""
        current, stream = self._current, self.spec.name
        if current is None:
            return None
        why = self._served_files.problem(self.registry, stream, current.version)
        if why is None:
            return None
        version = current.version
        return (
            f"{version}'s files in the registry are missing or damaged ({' '.join(why.split())[:300]}): this scorer "
            f"serves {version} from memory, but a scorer started now cannot load it and serves an older version. "
            f"Restore the files from a backup, or move the champion: `streamfit models rollback {stream}` or "
            f"`streamfit models promote {stream} <version>` (`streamfit models list {stream}`)"
        )

    def _alias_broken(self, exc: BrokenRegistryFile) -> bool:
        """The registry answered, but its alias names nothing servable: keep serving, say what to repair.

        A scorer that starts (or restarts) meanwhile has nothing to keep, so it serves what a refused
        champion would leave it: the newest valid version of the champion history.
        """
        return self._alias_unusable(f"the champion alias is broken ({' '.join(str(exc).split())[:500]})")

    def _alias_unusable(self, problem: str) -> bool:
        """`_alias_broken`, and a missing alias whose champion history names versions (the filesystem's
        `champion` file deleted: MLflow's alias falls back to the history itself)."""
        self.metrics.registry_up.labels(self.spec.name).set(1)
        if self._current is None:
            return self._serve_instead(problem, exclude=None, alias=None)
        said = (self._status.degraded or "").startswith(f"{problem}; ")  # what it serves was said already
        if not said:
            self._set_status(WatchStatus(degraded=f"{problem}; still serving {self._served_name()}"))
        elif self._status.registry_error is not None:  # the registry answered this time
            self._set_status(replace(self._status, registry_error=None))
        return False

    def _follow(self) -> bool:
        stream = self.spec.name
        try:
            name = self.registry.champion(stream)
        except BrokenRegistryFile as exc:  # answered, so not an outage (registry_up stays 1)
            return self._alias_broken(exc)
        if name is None and (missing := self._alias_missing()) is not None:
            return self._alias_unusable(missing)
        self.metrics.registry_up.labels(stream).set(1)
        current = self._current
        if name is None or (current is not None and current.version == name):
            if name is not None:
                self._refusals.pop(name, None)
            self._set_status(WatchStatus(alias=name))
            return False
        refusal = self._refusals.get(name)
        if refusal is None or refusal.worth_retrying(fingerprint(self.registry, stream, name), self.retry_refused_s):
            served = self._load(name)
            if served is not None:
                self._publish(served, WatchStatus(alias=name))
                return True
            refusal = self._refusals[name]
        return self._fall_back(refusal)

    def _alias_missing(self) -> str | None:
        """Why no alias is wrong when the champion history records promotions (None when it has none)."""
        stream = self.spec.name
        try:
            history = self.registry.champion_history(stream)
        except BrokenRegistryFile:
            return None  # nothing to fall back on: wait for a champion, as before any promotion
        last = next((r.get("version") for r in reversed(history) if isinstance(r, dict)), None)
        if last is None:
            return None
        return (
            f"the champion alias is missing, though the champion history's last promotion named {last}: "
            f"point it again with `streamfit models promote {stream} <version>` (see champion_history.jsonl)"
        )

    def _load(self, version: str) -> ServedModel | None:
        """Verify and load one version; on failure record why (with its files' fingerprint) and return None."""
        stream = self.spec.name
        # Taken before reading, so a file rewritten during the read is seen as changed and tried again.
        seen = fingerprint(self.registry, stream, version)
        try:
            found = self.registry.get(stream, version)
            if found.misplaced:  # another stream's model would serve under this name, unseen
                raise IncompatibleModel(found.misplaced)
            changed = spec_changed(self.spec, found)
            if changed:  # same width, other meanings: the ONNX checks below cannot see it
                raise IncompatibleModel(changed)
            served = ServedModel.load(self.spec, version, self.registry.load_onnx(stream, version))
            # Derived features start from the version's saved state: one that cannot be read (damaged,
            # missing) would fail every request and every Kafka batch after the swap, so refuse it now.
            state_after(self.registry, self.spec, found)
        except RegistryUnavailable:
            raise  # not the version's fault: refuse nothing, keep serving, try again next tick
        except Exception as exc:
            reason = describe_failure(self.registry, stream, version, exc)
            self._refusals[version] = Refusal(version, reason, seen, time.monotonic())
            self.metrics.model_load_failures.labels(stream, version).inc()
            log.error(
                "REFUSED %s/%s: it %s -- %s; fix or replace the version and move the alias",
                stream,
                version,
                reason,
                "serving " + self._served_name(),
            )
            return None
        self._refusals.pop(version, None)
        self._served_files.loaded(version, seen)  # every version loaded is published (see _follow, _serve_instead)
        return served

    def _fall_back(self, refusal: Refusal) -> bool:
        """Serve the newest valid version of the champion history (else of the registry) instead."""
        problem = f"champion {refusal.version} {refusal.reason}"
        return self._serve_instead(problem, exclude=refusal.version, alias=refusal.version)

    def _serve_instead(self, problem: str, exclude: str | None, alias: str | None) -> bool:
        """The newest valid version other than `exclude`, published with `problem` as why (True if it changed).

        `alias` is the version the alias names (the refused one), None when the alias names nothing.
        """
        stream, current = self.spec.name, self._current
        chosen: ServedModel | None = None
        from_history = False
        for version, in_history in fallback_candidates(self.registry, stream, exclude=exclude):
            from_history = in_history
            if current is not None and version == current.version:
                chosen = current  # already loaded and verified: nothing newer in the list is valid
                break
            known = self._refusals.get(version)
            if known is not None and not known.worth_retrying(
                fingerprint(self.registry, stream, version), self.retry_refused_s
            ):
                continue
            chosen = self._load(version)
            if chosen is not None:
                break
        if chosen is None:
            kept = f"still serving {current.version}" if current else "nothing to serve"
            self._set_status(WatchStatus(alias, alias, f"{problem}; no other valid version; {kept}"))
            return False
        where = (
            "the newest valid version in the champion history"
            if from_history
            else "the newest valid version (none in the champion history is valid)"
        )
        status = WatchStatus(alias, alias, f"{problem}; serving {chosen.version}, {where}")
        if chosen is current:
            self._set_status(status)
            return False
        self._publish(chosen, status)
        return True

    def _publish(self, served: ServedModel, status: WatchStatus) -> None:
        stream = self.spec.name
        previous = self._current
        self._current = served  # the swap: one reference assignment
        self._unloadable = None  # just read and verified
        self.metrics.model_version.labels(stream).set(served.number)
        if previous is None:
            log.info("%s: serving %s", stream, served.version)
        else:
            self.metrics.model_swaps.labels(stream).inc()
            # A newer version is the normal course (every promotion); going back is worth a look.
            backwards = served.number < previous.number
            log.log(
                logging.WARNING if backwards else logging.INFO,
                "%s: swapped %s -> %s%s",
                stream,
                previous.version,
                served.version,
                " (an older version: a rollback or a fallback)" if backwards else "",
            )
        self._set_status(status)
        self._loaded.set()

    def _set_status(self, status: WatchStatus) -> None:
        before = self._status
        status = replace(status, unloadable=self._unloadable)
        self._status = status
        self.metrics.serving_fallback.labels(self.spec.name).set(1 if status.degraded else 0)
        self.metrics.served_unloadable.labels(self.spec.name).set(1 if status.unloadable else 0)
        if status.unloadable and status.unloadable != before.unloadable:
            log.error("%s: %s", self.spec.name, status.unloadable)
        elif before.unloadable and not status.unloadable:
            log.warning("%s: the files of %s load again", self.spec.name, self._served_name())
        if status.degraded and status.degraded != before.degraded:
            log.warning("%s: DEGRADED: %s", self.spec.name, status.degraded)
        elif before.degraded and not status.degraded:
            log.warning("%s: serving the champion %s again", self.spec.name, self._served_name())
        if before.registry_error and not status.registry_error:
            log.warning("%s: the registry answers again; serving %s", self.spec.name, self._served_name())

    def _served_name(self) -> str:
        current = self._current
        return current.version if current else "nothing (no model loaded yet)"

    def start(self) -> ChampionWatcher:
        """Check once now, then every `interval_s` in a daemon thread."""
        if self._thread is not None:
            return self
        self.check()
        self._thread = threading.Thread(target=self._loop, name=f"champion-{self.spec.name}", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # never let the watcher die: the last good model keeps serving
                log.exception("%s: champion check failed", self.spec.name)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
