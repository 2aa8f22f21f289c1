"""`streamfit serve`'s start-up errors as the user reads them: one line that names the fix."""

from __future__ import annotations

import socket

from dagster_project.spec import StreamSpec


def test_serve_on_a_busy_port_is_one_line_naming_port(cli, spec: StreamSpec, kafka_bootstrap: str) -> None:
    """A busy port said only "Address already in use", not which option picks another one."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("serve", spec.name, "--port", port, "--bootstrap", kafka_bootstrap)
    assert result.exit_code == 1, result.output
    assert result.output == (
        f"Error: cannot serve HTTP on 127.0.0.1:{port}: Address already in use "
        "(another process listens there: stop it, or pick another port with --port)\n"
    )
