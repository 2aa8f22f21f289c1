"""The code location: one asset group, job and sensor set per stream spec. Assembly only."""

import logging

import dagster as dg

from dagster_project.orchestration.broken_specs import assemble_streams, broken_spec_definitions
from dagster_project.spec import load_spec_files_isolated


def code_location() -> dg.Definitions:
    """Every stream that loads and builds, a sensor for each that does not, and the location's own jobs
    (one function: Dagster refuses a module with two `Definitions` at its top level)."""
    loaded, broken = load_spec_files_isolated()  # a file that does not load stops its own stream, not the others
    for spec_file in broken:
        logging.getLogger(__name__).error(
            "%s does not load (its stream does not train): %s", spec_file.path, spec_file.error
        )
    streams, unbuilt, location = assemble_streams(loaded)  # one stream that does not build stops itself
    for spec_file in unbuilt:
        logging.getLogger(__name__).error("%s loads but its stream does not train: %s", spec_file.path, spec_file.error)
    return dg.Definitions.merge(*streams, broken_spec_definitions([*broken, *unbuilt]), location)


defs = code_location()
