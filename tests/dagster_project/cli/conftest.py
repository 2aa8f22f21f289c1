"""The `cli` fixture: `streamfit ...` run in-process with the test's streams and home."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from dagster_project.cli import main
from dagster_project.kafka.settings import BOOTSTRAP_ENV


@pytest.fixture
def cli(specs_dir: Path, streamfit_home: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """Invoke `streamfit ...` in-process with the test's streams and home, and no ambient broker."""
    monkeypatch.delenv(BOOTSTRAP_ENV, raising=False)
    runner = CliRunner()
    return lambda *args: runner.invoke(main, [str(a) for a in args])
