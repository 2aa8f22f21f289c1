"""Serving fixtures: a classification stream whose class values are not their indices."""

from __future__ import annotations

import pytest

from dagster_project.spec import StreamSpec
from tests.conftest import synthetic_spec


@pytest.fixture
def spec() -> StreamSpec:
    # String classes: a prediction must be the class value ("pos"), not the index the model predicts (1).
    return synthetic_spec(label={"classes": ["neg", "pos"]})
