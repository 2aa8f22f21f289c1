"""Dagster resources: how assets and sensors reach the broker and the registry."""

from __future__ import annotations

import dagster as dg

from dagster_project.kafka.settings import BOOTSTRAP_ENV, KafkaSettings
from dagster_project.registry.store import FilesystemRegistry
from dagster_project.settings import registry_root


class KafkaResource(dg.ConfigurableResource):
    """The Kafka cluster; security settings come from STREAMFIT_KAFKA_* variables."""

    bootstrap: str

    def settings(self) -> KafkaSettings:
        return KafkaSettings.from_env(self.bootstrap)


class RegistryResource(dg.ConfigurableResource):
    """The model registry; defaults to $STREAMFIT_HOME/registry."""

    root: str = ""

    def get(self) -> FilesystemRegistry:
        return FilesystemRegistry(self.root or registry_root())


def default_resources() -> dict[str, dg.ConfigurableResource]:
    return {"kafka": KafkaResource(bootstrap=dg.EnvVar(BOOTSTRAP_ENV)), "registry": RegistryResource()}
