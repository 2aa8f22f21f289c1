"""Whether the version a scorer serves from memory could still be loaded from the registry.

A scorer reads a version's files once and then serves it from memory, so deleting or damaging them
(model.onnx, meta.json) changes nothing it does, and nothing said so: the next scorer to start (a
restart, a rollout, a scale-up) cannot load that version and falls back to an older one. The
watcher asks on every tick, cheaply: the files are stat'ed (`candidates.fingerprint`) and verified
again (read and hashed, `ModelRegistry.unservable`) only when that changes.

Filesystem registries only: MLflow's artifacts cannot be stat'ed, re-downloading the model on every
tick would cost more than the risk, and deleting an MLflow version deletes its alias with it, which
the watcher already follows.
"""

from __future__ import annotations

from dagster_project.registry.store import FilesystemRegistry, ModelRegistry
from dagster_project.serving.candidates import Fingerprint, fingerprint


class ServedFiles:
    """The last verdict on one version's files, with the fingerprint it was reached on."""

    def __init__(self) -> None:
        self._version: str | None = None
        self._seen: Fingerprint | None = None
        self._problem: str | None = None

    def loaded(self, version: str, seen: Fingerprint | None) -> None:
        """`version` was just read and verified from files that looked like `seen`."""
        self._version, self._seen, self._problem = version, seen, None

    def problem(self, registry: ModelRegistry, stream: str, version: str) -> str | None:
        """Why `version` could not be loaded from `registry` now (None when it could, or nobody can tell)."""
        if not isinstance(registry, FilesystemRegistry):
            return None
        seen = fingerprint(registry, stream, version)
        if version == self._version and seen == self._seen:
            return self._problem
        problem = registry.unservable(stream, version)
        self._version, self._seen, self._problem = version, seen, problem
        return problem
