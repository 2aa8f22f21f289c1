"""The model being served: watch the registry's `champion` alias and hot-swap onnxruntime sessions.

A background thread reads the alias every `interval_s` (0.25 s by default). When it names another
version, that version's model.onnx is loaded through the registry (which verifies its sha256),
checked against the stream's spec, warmed up, and only then published by replacing one attribute:
an atomic reference swap. Readers take `watcher.current` once per Kafka batch or HTTP request and
use that snapshot to the end, so a swap never fails or mixes a request; the old session is freed
when the last request holding it finishes.

A version that cannot be served (checksum mismatch, unreadable file, a model that does not fit the
spec) is refused loudly, counted in `streamfit_model_load_failures_total`, and the last good model
keeps serving. The refused version is retried every `retry_refused_s` while the alias still names it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dagster_project.onnx.export import OnnxModel
from dagster_project.registry.store import ChecksumMismatch, ModelRegistry
from dagster_project.serving.metrics import ScorerMetrics
from dagster_project.spec import StreamSpec

log = logging.getLogger(__name__)

_VERSION_NUMBER = re.compile(r"(\d+)$")


class IncompatibleModel(ValueError):
    """The model loads but does not fit the stream's spec (feature count, task or classes)."""


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
        width = len(spec.features)
        if model.n_features is not None and model.n_features != width:
            raise IncompatibleModel(f"{version} takes {model.n_features} features, the spec of {spec.name} has {width}")
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
        out = self.model.predict(X)
        if self.classes is not None:
            classes = self.classes
            return [classes[i] for i in out.labels.astype(np.int64).tolist()], out.scores.tolist()
        return out.values.tolist(), None


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
        self._loaded = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refused: str | None = None
        self._refused_at = 0.0
        self._lock = threading.Lock()  # serializes check(): the thread and direct callers (tests)

    @property
    def current(self) -> ServedModel | None:
        """The model to use now; take it once per batch or request and keep that reference."""
        return self._current

    @property
    def refused(self) -> str | None:
        """The last version refused while the alias still names it (None once a good one loads)."""
        return self._refused

    def wait_for_model(self, timeout_s: float | None = None) -> ServedModel | None:
        """Block until a model is loaded (or the timeout passes); returns it, or None."""
        self._loaded.wait(timeout_s)
        return self._current

    def check(self) -> bool:
        """Read the alias once and load the champion if it changed; True when the model was swapped."""
        with self._lock:
            return self._check()

    def _check(self) -> bool:
        stream = self.spec.name
        try:
            name = self.registry.champion(stream)
        except Exception:
            log.exception("%s: could not read the champion alias; still serving %s", stream, self._served_name())
            return False
        current = self._current
        if name is None or (current is not None and current.version == name):
            if name is not None:
                self._refused = None
            return False
        if name == self._refused and time.monotonic() - self._refused_at < self.retry_refused_s:
            return False
        try:
            served = ServedModel.load(self.spec, name, self.registry.load_onnx(stream, name))
        except Exception as exc:
            self._refused, self._refused_at = name, time.monotonic()
            self.metrics.model_load_failures.labels(stream, name).inc()
            what = "checksum mismatch" if isinstance(exc, ChecksumMismatch) else type(exc).__name__
            log.error(
                "REFUSED champion %s/%s (%s): %s -- still serving %s; fix or replace the version and move the alias",
                stream,
                name,
                what,
                exc,
                self._served_name(),
            )
            return False
        self._current = served  # the swap: one reference assignment
        self._refused = None
        self.metrics.model_version.labels(stream).set(served.number)
        if current is None:
            log.info("%s: serving %s", stream, name)
        else:
            self.metrics.model_swaps.labels(stream).inc()
            log.warning("%s: champion swapped %s -> %s", stream, current.version, name)
        self._loaded.set()
        return True

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
