"""Dagster resources: how assets and sensors reach the broker and the registry.

The Kafka resource's fields are `EnvVar`s where the deployment sets them, so the Dagster UI shows
how a deployment is configured (values of secrets stay hidden) without a code change.
"""

from __future__ import annotations

import os

import dagster as dg

from dagster_project.kafka.settings import (
    BOOTSTRAP_ENV,
    CAFILE_ENV,
    CERTFILE_ENV,
    CHECK_HOSTNAME_ENV,
    CLIENT_ENV,
    KEYFILE_ENV,
    MECHANISM_ENV,
    PASSWORD_ENV,
    PROTOCOL_ENV,
    USERNAME_ENV,
    KafkaSettings,
)
from dagster_project.registry.store import ModelRegistry

# KafkaResource field -> the variable a deployment sets it with
KAFKA_ENV_FIELDS = {
    "security_protocol": PROTOCOL_ENV,
    "ssl_cafile": CAFILE_ENV,
    "ssl_certfile": CERTFILE_ENV,
    "ssl_keyfile": KEYFILE_ENV,
    "ssl_check_hostname": CHECK_HOSTNAME_ENV,
    "sasl_mechanism": MECHANISM_ENV,
    "sasl_username": USERNAME_ENV,
    "sasl_password": PASSWORD_ENV,
    "client": CLIENT_ENV,
}


class KafkaResource(dg.ConfigurableResource):
    """The Kafka cluster. Fields left unset fall back to their STREAMFIT_KAFKA_* variables."""

    bootstrap: str
    security_protocol: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    client: str | None = None

    def settings(self) -> KafkaSettings:
        env = {name: getattr(self, field) for field, name in KAFKA_ENV_FIELDS.items() if getattr(self, field)}
        if not env:
            return KafkaSettings.from_env(self.bootstrap)
        return KafkaSettings.from_env(self.bootstrap, os.environ | env)


class RegistryResource(dg.ConfigurableResource):
    """The model registry: $STREAMFIT_REGISTRY (filesystem, the default, or mlflow) unless `backend` is set.

    `root` is the local registry directory (default $STREAMFIT_HOME/registry); `mlflow_uri` the
    tracking server (default $STREAMFIT_MLFLOW_URI, else $MLFLOW_TRACKING_URI); `mlflow_namespace`
    the deployment's names on a shared server (default $STREAMFIT_MLFLOW_NAMESPACE).
    """

    root: str = ""
    backend: str = ""
    mlflow_uri: str = ""
    mlflow_namespace: str = ""

    def get(self) -> ModelRegistry:
        from dagster_project.registry.backends import registry_from_env

        return registry_from_env(
            self.root or None,
            backend=self.backend or None,
            mlflow_uri=self.mlflow_uri or None,
            mlflow_namespace=self.mlflow_namespace or None,
        )

    @classmethod
    def of(cls, registry: ModelRegistry) -> RegistryResource:
        """The resource that opens `registry` again (in run workers: another process)."""
        mlflow_uri = getattr(registry, "tracking_uri", None)
        if mlflow_uri:
            namespace = getattr(registry, "namespace", None) or ""
            return cls(root=str(registry.root), backend="mlflow", mlflow_uri=mlflow_uri, mlflow_namespace=namespace)
        return cls(root=str(registry.root), backend="filesystem")


def kafka_resource_from_env() -> KafkaResource:
    """The resource as a deployment configures it: an `EnvVar` for every variable that is set."""
    fields = {field: dg.EnvVar(name) for field, name in KAFKA_ENV_FIELDS.items() if os.environ.get(name)}
    return KafkaResource(bootstrap=dg.EnvVar(BOOTSTRAP_ENV), **fields)


def default_resources() -> dict[str, dg.ConfigurableResource]:
    return {"kafka": kafka_resource_from_env(), "registry": RegistryResource()}
