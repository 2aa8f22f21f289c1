"""Fault injection for crash tests: STREAMFIT_FAULT=<point> fails the run at that point.

`<point>@<N>` fails only attempt N of a run (0 is the first try, N the N-th retry), so a test can
crash a run once and watch Dagster's own retry finish it. A `:kill` suffix (`after_train@0:kill`)
kills the process with SIGKILL instead of raising: no cleanup, no failure event, like kill -9.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "STREAMFIT_FAULT"


class InjectedFault(RuntimeError):
    """A deliberate crash, used to prove that retries neither lose nor repeat rows."""


def crash_point(name: str, attempt: int | None = None) -> None:
    wanted, _, how = os.environ.get(FAULT_ENV, "").partition(":")
    point, _, only = wanted.partition("@")
    if point != name:
        return
    if only and (attempt is None or int(only) != attempt):
        return
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"injected fault at {name!r} ({FAULT_ENV}, attempt {attempt})")
