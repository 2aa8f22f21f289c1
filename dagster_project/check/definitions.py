"""Every checked stream's Dagster definitions built and resolved together, as the code location does.

A spec that loads can still stop its stream: its definitions raise when built, do not resolve beside
the location's resources and jobs, or collide with another stream's. The code location then stops that
stream (its `invalid_spec_<file>` sensor skips with the error) while the others train, so `streamfit
check` passing the file was the last word the user heard before production. The same assembly runs
here (`broken_specs.assemble_streams`), once for all the specs checked: importing Dagster and building
costs a second or two.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster_project.spec import BrokenSpec, StreamSpec


def unbuilt_streams(loaded: list[tuple[Path, StreamSpec]]) -> list[BrokenSpec]:
    """The files whose stream the code location would stop though they load, each with its error and fix.

    Streams sharing a name are left out: the code location refuses both files before building (and
    the check already fails them), and their definitions would only collide again here."""
    if not loaded:
        return []
    from dagster_project.orchestration.broken_specs import assemble_streams

    names = Counter(spec.name for _path, spec in loaded)
    with _notes_not_logged():
        _streams, unbuilt, _location = assemble_streams([(p, s) for p, s in loaded if names[s.name] == 1])
    return unbuilt


@contextmanager
def _notes_not_logged() -> Iterator[None]:
    """The factory logs each spec's notes for the code location's log; the check prints them itself."""
    logger = logging.getLogger("dagster_project.factory")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
