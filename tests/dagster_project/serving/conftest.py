"""Serving fixtures: a classification stream whose class values are not their indices."""

from __future__ import annotations

import pytest

from dagster_project.serving.consumers import CLIENT_ENV, CONFLUENT, KAFKA_PYTHON
from dagster_project.spec import StreamSpec
from tests.conftest import synthetic_spec


@pytest.fixture
def spec() -> StreamSpec:
    # String classes: a prediction must be the class value ("pos"), not the index the model predicts (1).
    return synthetic_spec(label={"classes": ["neg", "pos"]})


@pytest.fixture(params=[KAFKA_PYTHON, CONFLUENT])
def scorer_client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once per scorer consumer client (the scorer and `streamfit serve` read $STREAMFIT_SCORER_CLIENT)."""
    monkeypatch.setenv(CLIENT_ENV, request.param)
    return request.param
