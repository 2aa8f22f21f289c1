"""The code location: one asset group, job and sensor set per stream spec. Assembly only."""

import dagster as dg

from dagster_project.factory import build_stream_definitions
from dagster_project.orchestration.retention_schedule import build_retention_definitions
from dagster_project.resources import default_resources
from dagster_project.spec import load_specs

specs = load_specs()
defs = dg.Definitions.merge(
    *(build_stream_definitions(spec) for spec in specs),
    build_retention_definitions([spec.name for spec in specs]),
    dg.Definitions(resources=default_resources()),
)
