"""What N streams in one code location cost: the location's load, and the daemon's sensor ticks.

    python -m benchmarks.many_streams [--streams 1 4 10 30] [--rounds 5] [--bootstrap host:port]

Generates N stream specs (copies of the shipped census, phishing, sensors and synthetic specs, in
turn, renamed `<shipped>_<i>`: category features, derived rolling features and plain floats), then
for each N, in a fresh interpreter per figure (as `retrain_memory.py` does):

- `load`: what every run worker and the code server do first. `imports` is the floor (Dagster and
  the modules the definitions import, no stream built); `definitions` is `import
  dagster_project.definitions` after them (every spec file read, every stream's definitions built,
  the location validated once); `repository` is `defs.get_repository_def()` on the location (the
  code server and each run worker resolve it; the forkserver of warm runs imports the module but
  does not resolve it, so each forked run pays this); `job` is resolving one stream's training job
  from it (what a run of that one stream needs); `snapshot` is the repository's snapshot, which the
  code server serialises for the daemon and the UI. Peak RSS is the process's VmHWM, `builds` the
  calls of `build_stream_definitions`.
- `ticks`: every stream's topics created on a real embedded Tansu broker (or `--bootstrap`), a
  filesystem registry and a real SQLite Dagster instance; one evaluation of each stream's Kafka
  sensor and drift sensor (`dg.build_sensor_context` as a `with`, as the tests do), after one warm-up
  round, `--rounds` times: the wall and CPU time of a whole cycle (every stream's two sensors, what
  the daemon asks the code server for each 5 s), per stream, and the broker clients opened per cycle.
  No stream has a version yet, so the Kafka sensor probes the topic and skips (nothing waiting) and
  the drift sensor skips (no champion): the per-stream floor; `history_cost.py` measures a drift tick
  on a long history.

Every figure is also given as a ratio to the 1-stream figure measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

SHIPPED = ("census", "phishing", "sensors", "synthetic")
DEFAULT_STREAMS = (1, 4, 10, 30)


def write_specs(directory: Path, count: int) -> list[str]:
    """`count` spec files in `directory`: the shipped specs in turn, each renamed; their stream names."""
    from benchmarks.common import PROJECT_ROOT

    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        shipped = SHIPPED[i % len(SHIPPED)]
        document = yaml.safe_load((PROJECT_ROOT / "streams" / f"{shipped}.yaml").read_text())
        document["name"] = f"{shipped}_{i:02d}"
        (directory / f"{document['name']}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
        names.append(document["name"])
    return names


def _count_builds() -> dict[str, int]:
    """Count `build_stream_definitions` calls (the location imports it from the factory when it loads)."""
    from dagster_project import factory

    counts = {"builds": 0}
    build = factory.build_stream_definitions

    def counted(spec):
        counts["builds"] += 1
        return build(spec)

    factory.build_stream_definitions = counted
    return counts


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _child_load(config: dict[str, Any]) -> dict[str, Any]:
    """The code location's load in this fresh process, step by step."""
    os.environ["STREAMFIT_STREAMS"] = config["streams_dir"]
    os.environ.setdefault("STREAMFIT_KAFKA_BOOTSTRAP", "127.0.0.1:9")  # an EnvVar: never connected here
    started = time.perf_counter()
    import dagster as dg  # noqa: F401
    import dagster._utils.test  # noqa: F401  (what Dagster's loader imports; a run worker has it already)

    import dagster_project.factory  # noqa: F401
    import dagster_project.orchestration.broken_specs  # noqa: F401
    import dagster_project.orchestration.retention_schedule  # noqa: F401
    import dagster_project.resources  # noqa: F401
    from benchmarks.child import _peak_rss_mib
    from dagster_project import names

    imports_s = time.perf_counter() - started
    floor_rss = _rss_mib()
    counts = _count_builds()
    t0 = time.perf_counter()
    import dagster_project.definitions as location

    definitions_s = time.perf_counter() - t0
    job = names.training_job(config["first"])
    fork_before = _forked_run(job)  # the forkserver imported the definitions only (as before)
    t0 = time.perf_counter()
    repo = location.defs.get_repository_def()
    repository_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    repo.get_job(job)
    job_s = time.perf_counter() - t0
    from dagster_project.orchestration.resolved_location import resolve

    resolve(location.defs)  # what the forkserver preloads now: the repository and every job resolved
    fork_after = _forked_run(job)
    snapshot_s = None
    try:
        from dagster._core.remote_representation.external_data import RepositorySnap

        t0 = time.perf_counter()
        RepositorySnap.from_def(repo)
        snapshot_s = time.perf_counter() - t0
    except Exception:  # a private Dagster API: the figure is left out if it moved
        pass
    return {
        "imports_s": imports_s,
        "definitions_s": definitions_s,
        "repository_s": repository_s,
        "job_s": job_s,
        "snapshot_s": snapshot_s,
        "forked_run_before_s": fork_before,
        "forked_run_after_s": fork_after,
        "builds": counts["builds"],
        "jobs": len(repo.get_all_jobs()),
        "sensors": len(repo.sensor_defs),
        "floor_rss_mib": floor_rss,
        "rss_mib": _rss_mib(),
        "peak_rss_mib": _peak_rss_mib(),
    }


def _forked_run(job: str) -> float:
    """Seconds a run worker forked from this process takes to get its job, as Dagster's run worker
    gets it from a `python_module` location (the module is imported already: the warm forkserver)."""
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    from benchmarks.common import PROJECT_ROOT

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the forked run worker
        try:
            started = time.perf_counter()
            repository = ReconstructableRepository.for_module("dagster_project.definitions", "defs", str(PROJECT_ROOT))
            repository.get_reconstructable_job(job).get_definition()
            os.write(write, repr(time.perf_counter() - started).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        seconds = float(answer.read())
    os.waitpid(pid, 0)
    return seconds


def _count_clients() -> dict[str, int]:
    """Count the broker clients the sensors open (consumers for probes, admin clients)."""
    from dagster_project.kafka import clients

    counts = {"clients": 0}
    for name in ("range_reader", "admin"):
        original = getattr(clients, name)

        def counted(*args, _original=original, **kwargs):
            counts["clients"] += 1
            return _original(*args, **kwargs)

        setattr(clients, name, counted)
    return counts


def _child_ticks(config: dict[str, Any]) -> dict[str, Any]:
    """Every stream's two sensors evaluated, a warm-up round and `rounds` timed ones."""
    import dagster as dg

    from dagster_project.orchestration.broken_specs import assemble_streams
    from dagster_project.registry.store import FilesystemRegistry
    from dagster_project.resources import KafkaResource, RegistryResource
    from dagster_project.spec import load_spec_files_isolated

    loaded, broken = load_spec_files_isolated(config["streams_dir"])
    assert not broken, broken
    streams, unbuilt, location = assemble_streams(loaded)
    assert not unbuilt, unbuilt
    defs = dg.Definitions.merge(*streams, location)
    specs = [spec for _path, spec in loaded]
    sensors = [
        (defs.resolve_sensor_def(f"{s.name}_kafka_sensor"), defs.resolve_sensor_def(f"{s.name}_drift_sensor"))
        for s in specs
    ]
    registry = FilesystemRegistry(Path(config["work"]) / "registry")
    resources = {"kafka": KafkaResource(bootstrap=config["bootstrap"]), "registry": RegistryResource.of(registry)}
    counts = _count_clients()
    home = Path(config["work"]) / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    cycles: list[dict[str, float]] = []
    skips: dict[str, str] = {}
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        for round_ in range(config["rounds"] + 1):  # round 0: the warm-up (imports, first connections)
            before = counts["clients"]
            kafka_s = drift_s = 0.0
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for spec, (kafka_sensor, drift_sensor) in zip(specs, sensors, strict=True):
                t0 = time.perf_counter()
                with dg.build_sensor_context(instance=instance, resources=resources) as context:
                    result = kafka_sensor(context)
                t1 = time.perf_counter()
                with dg.build_sensor_context(instance=instance, resources=resources) as context:
                    drifted = drift_sensor(context)
                kafka_s += t1 - t0
                drift_s += time.perf_counter() - t1
                if round_ == 0 and spec is specs[0]:
                    skips = {"kafka": _said(result), "drift": _said(drifted)}
            if round_:
                cycles.append(
                    {
                        "wall_s": time.perf_counter() - wall0,
                        "cpu_s": time.process_time() - cpu0,
                        "kafka_s": kafka_s,
                        "drift_s": drift_s,
                        "clients": counts["clients"] - before,
                    }
                )
    return {
        key: statistics.median(c[key] for c in cycles) for key in ("wall_s", "cpu_s", "kafka_s", "drift_s", "clients")
    } | {"first_stream_says": skips}


def _said(result: Any) -> str:
    message = getattr(result, "skip_message", None)
    return str(message)[:160] if message else type(result).__name__


def _run_child(mode: str, config: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.common import run_child

    return run_child("benchmarks.many_streams", mode, config)


def measure(bootstrap: str, counts: list[int], rounds: int, work: Path) -> dict[str, Any]:
    from benchmarks.common import machine_info, progress
    from dagster_project.kafka.io import ensure_topics
    from dagster_project.kafka.settings import KafkaSettings
    from dagster_project.spec import load_spec

    every = work / "all"
    write_specs(every, max(counts))
    settings = KafkaSettings.from_env(bootstrap)
    for path in sorted(every.glob("*.yaml")):
        spec = load_spec(path)
        ensure_topics(settings, [spec.events_topic, spec.labels_topic, spec.dlq_topic], spec.partitions)
    progress(f"many_streams: {max(counts)} streams' topics created on {bootstrap}")
    out: dict[str, Any] = {"machine": machine_info(), "rounds": rounds, "streams": {}}
    for n in counts:
        directory = work / f"n{n}"
        names = write_specs(directory, n)
        config = {"streams_dir": str(directory), "first": names[0], "bootstrap": bootstrap, "rounds": rounds}
        load = _run_child("load", config)
        ticks = _run_child("ticks", config | {"work": str(work / f"ticks{n}")})
        out["streams"][str(n)] = {"load": load, "ticks": ticks}
        progress(
            f"many_streams: {n} streams: definitions {load['definitions_s']:.2f} s, "
            f"cycle {ticks['wall_s'] * 1000:.0f} ms"
        )
    return out


def report(out: dict[str, Any]) -> str:
    figures = out["streams"]
    base = next(iter(figures.values()))
    bl, bt = base["load"], base["ticks"]
    lines = [
        "Load (fresh process; seconds; x = against the first row's figure)",
        "streams  imports  definitions       repository      job     snapshot  builds  RSS MiB (floor/peak)"
        "  forked run: before -> after",
    ]
    for n, f in figures.items():
        load = f["load"]
        snap = f"{load['snapshot_s']:.2f}" if load["snapshot_s"] is not None else "-"
        defs_x, repo_x = load["definitions_s"] / bl["definitions_s"], load["repository_s"] / bl["repository_s"]
        lines.append(
            f"{int(n):>7}  {load['imports_s']:7.2f}  {load['definitions_s']:5.2f} ({defs_x:4.1f}x)"
            f"  {load['repository_s']:5.2f} ({repo_x:4.1f}x)  {load['job_s']:6.3f}  {snap:>8}  {load['builds']:6d}"
            f"  {load['floor_rss_mib']:.0f} / {load['peak_rss_mib']:.0f}"
            f"  {load['forked_run_before_s']:.3f} -> {load['forked_run_after_s']:.3f} s"
            f" ({load['forked_run_before_s'] / load['forked_run_after_s']:.0f}x less)"
        )
    lines += [
        "",
        "Sensor cycle (every stream's Kafka + drift sensor once; median of the rounds; ms)",
        "streams  cycle wall         cycle CPU    kafka  drift  per stream (wall)  clients/cycle",
    ]
    for n, f in figures.items():
        t = f["ticks"]
        per = t["wall_s"] / int(n)
        lines.append(
            f"{int(n):>7}  {t['wall_s'] * 1000:6.0f} ({t['wall_s'] / bt['wall_s']:5.1f}x)  {t['cpu_s'] * 1000:6.0f}"
            f"  {t['kafka_s'] * 1000:6.0f}  {t['drift_s'] * 1000:5.0f}  {per * 1000:6.1f} ({per / bt['wall_s']:4.2f}x)"
            f"  {t['clients']:6.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=list(DEFAULT_STREAMS))
    parser.add_argument("--rounds", type=int, default=5, help="timed sensor cycles per stream count")
    parser.add_argument("--bootstrap", help="an existing broker (default: a fresh embedded Tansu)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "CONFIG_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child = {"load": _child_load, "ticks": _child_ticks}[args.child[0]]
        sys.stdout.write(orjson.dumps(child(orjson.loads(args.child[1]))).decode() + "\n")
        return
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        if args.bootstrap:
            out = measure(args.bootstrap, args.streams, args.rounds, work)
        else:
            from dagster_project.kafka.brokers.tansu import EmbeddedBroker

            with EmbeddedBroker(log_path=work / "tansu.log") as broker:
                out = measure(broker.bootstrap, args.streams, args.rounds, work)
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    print(report(out))


if __name__ == "__main__":
    main(sys.argv[1:])
