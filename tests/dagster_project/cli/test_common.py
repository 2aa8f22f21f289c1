"""The helpers every command group shares: the operator's name, the registry, a cheap import."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dagster_project.cli.common import OPERATOR_ENV, operator_name, registry

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def test_operator_name_is_streamfit_operator_else_the_login_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "alice")
    monkeypatch.setenv(OPERATOR_ENV, "carol")
    assert operator_name() == "carol"
    monkeypatch.setenv(OPERATOR_ENV, "  ")
    assert operator_name() == "alice"
    monkeypatch.delenv(OPERATOR_ENV)
    assert operator_name() == "alice"


def test_operator_name_without_user_or_passwd_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_passwd_entry() -> str:
        raise OSError("No username set in the environment")

    monkeypatch.delenv(OPERATOR_ENV, raising=False)
    monkeypatch.delenv("USER", raising=False)
    monkeypatch.setattr(getpass, "getuser", no_passwd_entry)
    assert operator_name() == f"uid {os.getuid()}"


def test_registry_lives_in_streamfit_home(streamfit_home: Path) -> None:
    assert registry().root == streamfit_home.resolve() / "registry"


def test_importing_the_cli_stays_cheap() -> None:
    heavy = ["dagster", "sklearn", "skl2onnx", "great_expectations", "kafka", "onnxruntime", "pandas", "numpy"]
    code = f"import sys; import dagster_project.cli; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_python_dash_m_runs_the_same_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dagster_project.cli", "--help"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Streamfit: keep models learning from Kafka, orchestrated by Dagster." in out.stdout
    assert "quarantine" in out.stdout and "labels" in out.stdout
