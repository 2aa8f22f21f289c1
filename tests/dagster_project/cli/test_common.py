"""The helpers every command group shares: the operator's name, the registry, a cheap import."""

from __future__ import annotations

import getpass
import os
import socket
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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["models", "list", "../x"], "'../x' is not a stream name"),
        (["models", "promote", "a/b", "v1"], "'a/b' is not a stream name"),
        (["quarantine", "list", "x" * 5000], "is not a stream name"),
        (["labels", "show", "Ünï"], "is not a stream name"),
        (["labels", "join", "s", "--window", "nan"], "'nan' must be a finite number of seconds above 0"),
        (["labels", "join", "s", "--flush-interval", "inf"], "must be a finite number of seconds above 0"),
        (["produce", "s", "--rate", "nan"], "must be a finite number"),
        (["produce", "s", "--limit", "-1"], "-1 is not in the range x>=0"),
        (["serve", "s", "--port", "99999"], "99999 is not in the range 0<=x<=65535"),
        (["exporter", "--port", "65536"], "65536 is not in the range 0<=x<=65535"),
    ],
)
def test_hostile_arguments_are_one_line_errors_before_anything_runs(cli, args: list[str], message: str) -> None:
    """A path as a stream name wrote the champion alias outside STREAMFIT_HOME (`../../evil`); nan as a
    window made a joiner that never joined; an out-of-range port was a traceback."""
    result = cli(*args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_a_version_name_that_is_a_path_is_refused(cli, streamfit_home: Path) -> None:
    """`models promote s v2/` set the alias to "v2/": the exporter's scrape then failed on it."""
    (streamfit_home / "registry" / "s" / "v2").mkdir(parents=True)
    result = cli("models", "promote", "s", "v2/")
    assert result.exit_code == 1 and "'v2/' is not a version name (v1, v2, ...)" in result.output, result.output
    assert not (streamfit_home / "registry" / "s" / "champion").exists()


def test_offsets_commands_without_a_broker_are_one_line_errors(cli, spec) -> None:
    for args in (["show", spec.name], ["reset", spec.name, "--to", "latest"]):
        result = cli("offsets", *args, "--bootstrap", "127.0.0.1:1")
        assert result.exit_code == 1 and "Kafka broker unreachable" in result.output, result.output
        assert "Traceback" not in result.output


@pytest.fixture
def busy_port():
    """A port another process listens on."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def test_the_exporter_on_a_busy_port_is_a_one_line_error_naming_the_fix(cli, busy_port: int) -> None:
    """It was a traceback ending in `OSError: [Errno 98] Address already in use`."""
    result = cli("exporter", "--port", busy_port, "--no-kafka")
    assert result.exit_code == 1, result.output
    assert f"Error: cannot serve metrics on 127.0.0.1:{busy_port}: Address already in use" in result.output
    assert "pick another port with --port" in result.output
    assert isinstance(result.exception, SystemExit)


def test_labels_join_on_a_busy_metrics_port_names_the_option_to_change(
    cli, spec, kafka_bootstrap: str, busy_port: int
) -> None:
    result = cli("labels", "join", spec.name, "--metrics-port", busy_port, "--bootstrap", kafka_bootstrap)
    assert result.exit_code == 1, result.output
    assert f"Error: cannot serve metrics on 127.0.0.1:{busy_port}: Address already in use" in result.output
    assert "pick another port with --metrics-port" in result.output
