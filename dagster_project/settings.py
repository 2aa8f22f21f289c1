"""Where Streamfit keeps its state on disk."""

from __future__ import annotations

import os
from pathlib import Path


def streamfit_home() -> Path:
    """$STREAMFIT_HOME, else ./.streamfit; made absolute so spawned run workers agree on it."""
    return Path(os.environ.get("STREAMFIT_HOME", ".streamfit")).resolve()


def registry_root() -> Path:
    return streamfit_home() / "registry"
