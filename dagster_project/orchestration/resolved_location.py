"""The code location imported and resolved once in the warm forkserver (warm_runs.PRELOAD_MODULES).

A run worker loads the whole location (every stream's definitions) to run one stream's job: it
imports `dagster_project.definitions` and calls `defs.get_repository_def()`, then resolves its job.
The forkserver's import alone left the repository unresolved, so every forked run resolved all N
streams' repository again (0.10 s at 30 streams, `python -m benchmarks.many_streams`). Resolved
here, a forked run inherits it: Dagster caches the repository on the module's `defs`, which a
`python_module` code location's run worker reads.
"""

import logging

import dagster as dg

from dagster_project.definitions import defs


def resolve(location: dg.Definitions) -> dg.RepositoryDefinition | None:
    """The location's repository with every job built, cached on `location` for forked processes;
    None when it does not resolve. The forkserver's preload tolerates only an ImportError: anything
    else raised here would stop every run from starting, where a forked run that resolves the location
    itself fails with the error in its own run, for the UI to show."""
    try:
        repository = location.get_repository_def()
        repository.get_all_jobs()
    except Exception:
        logging.getLogger(__name__).exception("the code location does not resolve; each run will say why")
        return None
    return repository


resolve(defs)
