"""The `backend` fixture: either registry, and how to damage it (registry and serving tests run on both)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagster_project.registry.store import FilesystemRegistry
from tests.dagster_project.registry.test_contract import Backend


@pytest.fixture(params=["filesystem", "mlflow"])
def backend(request: pytest.FixtureRequest, streamfit_home: Path) -> Backend:
    if request.param == "filesystem":
        return Backend("filesystem", FilesystemRegistry(streamfit_home / "registry"))
    from dagster_project.registry.mlflow_store import MlflowRegistry

    server = request.getfixturevalue("mlflow_server")
    return Backend("mlflow", MlflowRegistry(server.uri, root=streamfit_home / "registry"), server)
