"""Fault injection for crash tests: STREAMFIT_FAULT=<point> fails the run at that point."""

from __future__ import annotations

import os


class InjectedFault(RuntimeError):
    """A deliberate crash, used to prove that retries neither lose nor repeat rows."""


def crash_point(name: str) -> None:
    if os.environ.get("STREAMFIT_FAULT") == name:
        raise InjectedFault(f"injected fault at {name!r} (STREAMFIT_FAULT)")
