"""What a fanned-out training step's process has imported before it is forked.

The multiprocess executor starts each step from a `forkserver` that imports these once (see
`factory.training_executor`); a step then skips scikit-learn's, Great Expectations' and the code
location's imports, which measured about half of a small fan-out run's time. The code location is
imported last and may fail here (its specs directory, say): the step then loads it itself and
reports the error there, instead of the forkserver dying on it.
"""

import contextlib

import assets.fan_out  # noqa: F401
import dagster_project.orchestration.preload  # noqa: F401

with contextlib.suppress(Exception):
    import dagster_project.definitions  # noqa: F401
