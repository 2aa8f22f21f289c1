"""A sensor for each stream spec file that does not load, or whose stream's Dagster definitions do not
build: the UI shows why its stream is not training, and the other streams of the location train."""

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from dagster_project.spec import BrokenSpec, StreamSpec

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

    fix = broken.fix or f"Fix the file (`streamfit check {broken.path}` checks it) and reload the code location"

    @dg.sensor(
        name=name,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"{broken.path} does not load; the stream it declares does not train until it is fixed.",
    )
    def invalid_spec(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        message = (
            f"INVALID SPEC {broken.path}: {broken.error}. {fix}; "
            "the stream it declares does not train until then, the others do"
        )
        context.log.error(message)
        return dg.SkipReason(message)

    return invalid_spec


def broken_spec_definitions(broken: list[BrokenSpec]) -> dg.Definitions:
    return dg.Definitions(sensors=[broken_spec_sensor(b) for b in broken])


BUILD_FIX = (
    "Change the setting the error names (or undo the file's last change) until `streamfit check` passes it "
    "(it builds every stream's definitions as the code location does), then reload the code location; "
    "if the spec looks right, report the error (a Streamfit bug)"
)
COLLISION_FIX = "Rename one of these streams (its `name:`) and reload the code location"


def isolated_stream_definitions(
    loaded: list[tuple[Path, StreamSpec]],
    location: dg.Definitions,
    build: Callable[[StreamSpec], dg.Definitions],
) -> tuple[list[dg.Definitions], list[BrokenSpec]]:
    """Each stream's definitions, built and resolved beside the rest of the `location` (resources and
    the location's own jobs) as Dagster loads them; a stream whose build raises, or whose definitions
    do not resolve, is returned broken with the error, for its `invalid_spec_<file>` sensor.

    One stream's definitions failing stopped every stream's training: Dagster loads a code location
    whole. Two streams whose definitions collide (a name or asset key in both: Dagster's
    `Definitions.merge` only concatenates, the duplicate raises when the merged location resolves)
    are both broken, as two files declaring one stream are: which one to train is not a guess to make.
    Streamfit's names are built not to collide (`names`): when every stream builds and the location
    resolves, the check costs that one resolve (every run worker loads the location); a resolve per
    stream, then per pair, is paid only when it does not."""
    built: list[tuple[Path, StreamSpec, dg.Definitions]] = []
    broken: list[BrokenSpec] = []
    for path, spec in loaded:
        try:
            built.append((path, spec, build(spec)))
        except Exception as exc:  # whatever raised, it stops this stream only
            broken.append(BrokenSpec(path, _build_error(spec, exc), BUILD_FIX))
    if _resolves(location, [defs for _, _, defs in built]):
        return [defs for _, _, defs in built], broken
    alone: list[tuple[Path, StreamSpec, dg.Definitions]] = []
    for path, spec, defs in built:  # a stream that does not resolve even beside the location alone
        try:
            dg.Definitions.validate_loadable(dg.Definitions.merge(location, defs))
        except Exception as exc:
            broken.append(BrokenSpec(path, _build_error(spec, exc), BUILD_FIX))
        else:
            alone.append((path, spec, defs))
    if _resolves(location, [defs for _, _, defs in alone]):
        return [defs for _, _, defs in alone], broken
    built = alone
    accepted: list[tuple[Path, StreamSpec, dg.Definitions]] = []
    for path, spec, defs in built:  # in name order: each stream against the ones accepted before it
        error = _resolve_error(location, [*(d for _, _, d in accepted), defs])
        if error is None:
            accepted.append((path, spec, defs))
            continue
        partners = [a for a in accepted if _resolve_error(location, [a[2], defs]) is not None]
        accepted = [a for a in accepted if a not in partners]
        colliding = [(path, spec), *((p, s) for p, s, _ in partners)]
        for file, stream in colliding:
            others = ", ".join(f"{s.name!r} ({p})" for p, s in colliding if s is not stream) or "the streams before it"
            broken.append(
                BrokenSpec(
                    file,
                    f"stream {stream.name!r}'s Dagster definitions collide with stream {others}: {error}",
                    COLLISION_FIX,
                )
            )
    return [defs for _, _, defs in accepted], broken


def assemble_streams(
    loaded: list[tuple[Path, StreamSpec]],
) -> tuple[list[dg.Definitions], list[BrokenSpec], dg.Definitions]:
    """(each stream's definitions that build, the files of the streams that do not, the location's own
    definitions), as the code location assembles them. The exporter calls it too, once when it starts
    (about 1 s of imports, 0.1 s for 4 streams), so a stream that does not train because its
    definitions do not build is exported as `streamfit_spec_invalid` as a file that does not load is."""
    from dagster_project.factory import build_stream_definitions
    from dagster_project.orchestration.retention_schedule import build_retention_definitions
    from dagster_project.resources import default_resources

    # Every loaded stream, built or not: a halted run of a stream that does not build is still kept.
    location = dg.Definitions.merge(
        build_retention_definitions([spec.name for _path, spec in loaded]),
        dg.Definitions(resources=default_resources()),
    )
    # A stream whose definitions do not build (or collide with another's) stops itself, not the others.
    streams, unbuilt = isolated_stream_definitions(loaded, location, build_stream_definitions)
    return streams, unbuilt, location


def _build_error(spec: StreamSpec, exc: BaseException) -> str:
    return f"stream {spec.name!r}'s Dagster definitions do not build: {_said(exc)}"


def _said(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _resolve_error(location: dg.Definitions, streams: list[dg.Definitions]) -> str | None:
    try:
        dg.Definitions.validate_loadable(dg.Definitions.merge(location, *streams))
    except Exception as exc:
        return _said(exc)
    return None


def _resolves(location: dg.Definitions, streams: list[dg.Definitions]) -> bool:
    return _resolve_error(location, streams) is None
