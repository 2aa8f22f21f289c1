"""A sensor for each stream spec file that does not load: the UI shows why its stream is not training."""

import hashlib
import re

import dagster as dg

from dagster_project.spec import BrokenSpec

CLEAN_FILE_NAME = re.compile(r"[A-Za-z0-9_]+\.(yaml|yml)")


def broken_spec_sensor_name(file_name: str) -> str:
    """`invalid_spec_<file>`, distinct for distinct file names (Dagster refuses a location with two
    definitions of one name, which stopped every stream's training).

    The suffix is kept (synthetic.yaml beside synthetic.yml), and a name that loses characters to
    Dagster's alphabet (team-a.yaml beside team_a.yaml) gets a digest of the file name. Ending in
    `_yaml`, `_yml` or hex digits, it is never a stream's sensor or schedule (`<stream>_kafka_sensor`)."""
    readable = re.sub(r"[^A-Za-z0-9_]", "_", file_name)
    if CLEAN_FILE_NAME.fullmatch(file_name):
        return f"invalid_spec_{readable}"
    return f"invalid_spec_{readable}_{hashlib.sha256(file_name.encode()).hexdigest()[:8]}"


def broken_spec_sensor(broken: BrokenSpec) -> dg.SensorDefinition:
    """Skips every tick with the file's error: the other streams of the location train meanwhile."""
    name = broken_spec_sensor_name(broken.path.name)

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
