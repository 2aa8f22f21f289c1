"""The code location: one asset group, job and sensor set per stream spec. Assembly only."""

import logging

import dagster as dg

from dagster_project.factory import build_stream_definitions
from dagster_project.orchestration.broken_specs import broken_spec_definitions
from dagster_project.orchestration.retention_schedule import build_retention_definitions
from dagster_project.resources import default_resources
from dagster_project.spec import load_specs_isolated

specs, broken = load_specs_isolated()  # a file that does not load stops its own stream, not the others
for spec_file in broken:
    logging.getLogger(__name__).error(
        "%s does not load (its stream does not train): %s", spec_file.path, spec_file.error
    )
defs = dg.Definitions.merge(
    *(build_stream_definitions(spec) for spec in specs),
    broken_spec_definitions(broken),
    build_retention_definitions([spec.name for spec in specs]),
    dg.Definitions(resources=default_resources()),
)
