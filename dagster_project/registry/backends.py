"""Which model registry a process uses: the one place that reads the choice.

`STREAMFIT_REGISTRY=filesystem` (the default) keeps versions under `$STREAMFIT_HOME/registry`;
`STREAMFIT_REGISTRY=mlflow` keeps them on the MLflow tracking server named by `STREAMFIT_MLFLOW_URI`,
else `MLFLOW_TRACKING_URI` (the MLflow client is the `mlflow` extra: `pip install 'streamfit[mlflow]'`),
in the namespace `STREAMFIT_MLFLOW_NAMESPACE` when deployments share the server.
The Dagster resource, the CLI, the scorer and the exporter all build their registry here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from dagster_project.registry.store import FilesystemRegistry, ModelRegistry, RegistryError

REGISTRY_ENV = "STREAMFIT_REGISTRY"
MLFLOW_URI_ENV = "STREAMFIT_MLFLOW_URI"
MLFLOW_TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
MLFLOW_NAMESPACE_ENV = "STREAMFIT_MLFLOW_NAMESPACE"
BACKENDS = ("filesystem", "mlflow")


def backend_from_env(env: Mapping[str, str] | None = None) -> str:
    """`filesystem` or `mlflow`, from $STREAMFIT_REGISTRY (unset or empty: filesystem)."""
    env = os.environ if env is None else env
    backend = env.get(REGISTRY_ENV, "").strip().lower() or "filesystem"
    if backend not in BACKENDS:
        raise RegistryError(f"{REGISTRY_ENV}={env.get(REGISTRY_ENV)!r}: expected one of {', '.join(BACKENDS)}")
    return backend


def mlflow_uri_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """$STREAMFIT_MLFLOW_URI, else $MLFLOW_TRACKING_URI (None when neither is set)."""
    env = os.environ if env is None else env
    return (env.get(MLFLOW_URI_ENV) or "").strip() or (env.get(MLFLOW_TRACKING_URI_ENV) or "").strip() or None


def registry_from_env(
    root: str | Path | None = None,
    *,
    backend: str | None = None,
    mlflow_uri: str | None = None,
    mlflow_namespace: str | None = None,
    env: Mapping[str, str] | None = None,
) -> ModelRegistry:
    """The registry this process uses. `root` is the local registry directory (default
    $STREAMFIT_HOME/registry): the filesystem registry itself, or, on MLflow, where local state such
    as the label joiner's live metrics stays. `backend`, `mlflow_uri` and `mlflow_namespace` override
    the environment."""
    if root is None:
        from dagster_project.settings import registry_root

        root = registry_root()
    chosen = (backend or "").strip().lower() or backend_from_env(env)
    if chosen == "filesystem":
        return FilesystemRegistry(root)
    if chosen != "mlflow":
        raise RegistryError(f"registry backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    uri = mlflow_uri or mlflow_uri_from_env(env)
    if not uri:
        raise RegistryError(
            f"{REGISTRY_ENV}=mlflow needs the tracking server: set {MLFLOW_TRACKING_URI_ENV} "
            f"(or {MLFLOW_URI_ENV}), e.g. http://mlflow:5000"
        )
    try:
        from dagster_project.registry.mlflow_store import MlflowRegistry
    except ImportError as exc:
        raise RegistryError(
            f"{REGISTRY_ENV}=mlflow needs the MLflow client ({exc}): pip install 'streamfit[mlflow]'"
        ) from exc
    env = os.environ if env is None else env
    try:
        return MlflowRegistry(uri, root=root, namespace=mlflow_namespace or env.get(MLFLOW_NAMESPACE_ENV))
    except RegistryError as exc:
        raise RegistryError(f"{MLFLOW_NAMESPACE_ENV}: {exc}") from exc
