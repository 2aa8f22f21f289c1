"""A sensor for each stream spec file that does not load: the UI shows why its stream is not training."""

import re

import dagster as dg

from dagster_project.spec import BrokenSpec


def broken_spec_sensor(broken: BrokenSpec) -> dg.SensorDefinition:
    """Skips every tick with the file's error: the other streams of the location train meanwhile."""
    name = "invalid_spec_" + re.sub(r"[^A-Za-z0-9_]", "_", broken.path.stem)

    @dg.sensor(
        name=name,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"{broken.path} does not load; the stream it declares does not train until it is fixed.",
    )
    def invalid_spec(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        message = (
            f"INVALID SPEC {broken.path}: {broken.error}. Fix the file (`streamfit check {broken.path}` checks it) "
            "and reload the code location; the stream it declares does not train until then, the others do"
        )
        context.log.error(message)
        return dg.SkipReason(message)

    return invalid_spec


def broken_spec_definitions(broken: list[BrokenSpec]) -> dg.Definitions:
    return dg.Definitions(sensors=[broken_spec_sensor(b) for b in broken])
