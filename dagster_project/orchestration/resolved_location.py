"""The code location imported and resolved once in the warm forkserver (warm_runs.PRELOAD_MODULES).

A run worker loads the whole location (every stream's definitions) to run one stream's job: it
imports `dagster_project.definitions` and calls `defs.get_repository_def()`, then resolves its job.
The forkserver's import alone left the repository unresolved, so every forked run resolved all N
streams' repository again (0.10 s at 30 streams, `python -m benchmarks.many_streams`). Resolved
here, a forked run inherits it: Dagster caches the repository on the module's `defs`, which a
`python_module` code location's run worker reads.
"""

import dagster as dg

from dagster_project.definitions import defs


def resolve(location: dg.Definitions) -> dg.RepositoryDefinition:
    """The location's repository with every job built, cached on `location` for forked processes."""
    repository = location.get_repository_def()
    repository.get_all_jobs()
    return repository


resolve(defs)
