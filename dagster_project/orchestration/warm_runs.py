"""Run workers that start warm: the code server forks each run from a preloaded process.

Why: a Dagster code server starts every run in a fresh `spawn`ed interpreter, which re-imports
dagster, the definitions and, inside the steps, scikit-learn, skl2onnx, onnxruntime and Great
Expectations. On these machines that is 4-6 s of every run (FACTS.md), most of what a user
waits for between "produced" and "served", and Dagster has no setting for it (dagster-io/dagster
#8638 is the open request). Here the server's process context becomes a `forkserver` whose
server process imports those modules once; each run is then a fork of it, with its own process,
PID, exit code and termination exactly as before (the forked child runs the same
`start_run_in_subprocess` entry with the same pickled arguments).

It is one documented hook on one private attribute (`DagsterApiServer._mp_ctx`). If a Dagster
release renames it, `install()` says so and runs keep starting the standard way.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import sys
from collections.abc import Sequence
from multiprocessing import forkserver

log = logging.getLogger("streamfit.warm_runs")

# What a training run imports; the forkserver imports each once (a missing optional one is skipped).
PRELOAD_MODULES: tuple[str, ...] = (
    "dagster_project.orchestration.preload",
    "dagster_project.orchestration.resolved_location",  # the definitions, imported and resolved
)
DISABLE_ENV = "STREAMFIT_WARM_RUNS"  # "0" starts runs the standard way (spawn)


def warm_context(preload: Sequence[str] = PRELOAD_MODULES) -> multiprocessing.context.BaseContext:
    """A forkserver context whose server imports `preload` before forking any run."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(preload))
    return ctx


def enabled() -> bool:
    return os.environ.get(DISABLE_ENV, "1") != "0" and "forkserver" in multiprocessing.get_all_start_methods()


def install() -> bool:
    """Make every DagsterApiServer created from now on fork runs from the warm forkserver."""
    if not enabled():
        return False
    server_module = importlib.import_module("dagster._grpc.server")
    server_class = server_module.DagsterApiServer
    if getattr(server_class, "_streamfit_warm", False):
        return True
    original_init = server_class.__init__

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN001 (Dagster's own signature)
        original_init(self, *args, **kwargs)
        if not hasattr(self, "_mp_ctx"):
            log.warning(
                "this Dagster version has no DagsterApiServer._mp_ctx: runs start the standard way (spawn); "
                "update dagster_project/orchestration/warm_runs.py"
            )
            return
        self._mp_ctx = warm_context()
        forkserver.ensure_running()  # preload now, not in the first run's time

    server_class.__init__ = __init__
    server_class._streamfit_warm = True
    return True


def worker_start() -> str:
    """How this run's process started, for the run's metadata: warm (forked, preloaded) or cold."""
    if "dagster_project.orchestration.preload" in sys.modules:
        return "warm: forked from the code server's preloaded process"
    return "cold: a fresh interpreter, imports paid in this run"
