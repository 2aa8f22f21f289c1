"""`streamfit demo`'s start-up errors as the user reads them: one line naming the option to change."""

from __future__ import annotations

import socket

import pytest


def test_demo_on_a_busy_ui_port_is_one_line_naming_ui_port_before_anything_starts(
    cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy --ui-port started the broker and Dagster, waited a minute for a UI that had exited, then
    ended in a RuntimeError traceback."""

    def started(*args: object) -> None:
        raise AssertionError("the demo started its services on a busy --ui-port")

    monkeypatch.setattr("dagster_project.dev.demo.run_demo", started)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("demo", "--ui-port", port)
    assert result.exit_code == 1, result.output
    assert result.output == (
        f"Error: cannot serve the Dagster UI on 127.0.0.1:{port}: Address already in use "
        "(another process listens there: stop it, or pick another port with --ui-port)\n"
    )


def test_a_service_that_exits_is_one_line_naming_its_log(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """A service of the demo that exited (dagster-webserver, say) ended in a RuntimeError traceback."""

    def exited(*args: object) -> None:
        raise RuntimeError("dagster-webserver exited with code 3; see its log in /tmp/x/logs")

    monkeypatch.setattr("dagster_project.dev.demo.run_demo", exited)
    result = cli("demo", "--ui-port", 0)
    assert result.exit_code == 1
    assert result.output == "Error: dagster-webserver exited with code 3; see its log in /tmp/x/logs\n"
