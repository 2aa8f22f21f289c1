"""`python -m dagster_project.orchestration.code_server api grpc ...`: `dagster api grpc` with warm runs.

The same command line as Dagster's own code server (every argument is passed through), with
run workers forked from a preloaded process (warm_runs.py). Set STREAMFIT_WARM_RUNS=0 for the
standard spawn.
"""

import signal
import sys

from dagster_project.orchestration import warm_runs


def stop_on_sigterm() -> None:
    """Dagster's server maps SIGTERM to whatever SIGINT does; a process started with SIGINT ignored
    (a background job of a non-interactive shell, `nohup ... &`) would then ignore SIGTERM too and
    only stop when killed (DagsterServices.stop waited its whole 15 s for it). SIGINT interrupts."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> None:
    stop_on_sigterm()
    warm_runs.install()
    from dagster._cli import main as dagster_main  # what the `dagster` console script runs

    sys.argv = ["dagster", *(sys.argv[1:] if argv is None else argv)]
    sys.exit(dagster_main())


if __name__ == "__main__":
    main()
