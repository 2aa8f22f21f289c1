"""Warm run workers: a run forked from the preloaded process has its imports paid already."""

from __future__ import annotations

import importlib
import subprocess
import sys

import dagster as dg

from dagster_project.orchestration import warm_runs
from dagster_project.orchestration.warm_runs import PRELOAD_MODULES

# A fresh interpreter: the forkserver is one per process, so the test must not share pytest's.
_CHILD = """
import multiprocessing, sys
from dagster_project.orchestration.warm_runs import warm_context, worker_start

def report(queue):
    queue.put((worker_start(), "great_expectations" in sys.modules, "skl2onnx" in sys.modules))

if __name__ == "__main__":
    for name, ctx in (("warm", warm_context(["dagster_project.orchestration.preload"])),
                      ("cold", multiprocessing.get_context("spawn"))):
        queue = ctx.Queue()
        child = ctx.Process(target=report, args=(queue,))
        child.start()
        print(name, *queue.get(timeout=120))
        child.join(30)
        assert child.exitcode == 0, child.exitcode
"""


def test_a_forked_run_worker_starts_with_the_heavy_imports_done_and_a_spawned_one_does_not(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.strip().splitlines())
    assert lines["warm"].startswith("warm: forked") and lines["warm"].endswith("True True")
    assert lines["cold"].startswith("cold: a fresh interpreter") and lines["cold"].endswith("False False")


def test_the_preload_list_names_modules_that_exist():
    for name in PRELOAD_MODULES:
        __import__(name)


def test_warm_runs_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(warm_runs.DISABLE_ENV, "0")
    assert warm_runs.install() is False


def test_a_forked_run_reads_the_repository_the_forkserver_resolved_and_builds_no_stream(monkeypatch):
    """A run of one stream loads the whole location; the forkserver resolved it (every stream's jobs)
    once, so a forked run worker's load is Dagster's cached repository, not all N streams again."""
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    import dagster_project.definitions as location
    from dagster_project import factory, names
    from dagster_project.orchestration import resolved_location

    assert "dagster_project.orchestration.resolved_location" in PRELOAD_MODULES
    importlib.reload(resolved_location)  # what the forkserver's preload runs (this `defs`: a test may reload it)
    assert location.defs.has_resolved_repository_def()
    resolved = location.defs.get_repository_def()
    builds: list[str] = []
    build = factory.build_stream_definitions
    monkeypatch.setattr(factory, "build_stream_definitions", lambda spec: builds.append(spec.name) or build(spec))
    stream = next(j.tags[names.STREAM_TAG] for j in resolved.get_all_jobs() if names.STREAM_TAG in j.tags)
    job = names.training_job(stream)
    repository = ReconstructableRepository.for_module("dagster_project.definitions", "defs").get_definition()
    assert repository is resolved
    assert repository.get_job(job) is resolved.get_job(job)
    assert builds == []


def test_a_location_that_does_not_resolve_does_not_stop_the_forkserver_s_preload(monkeypatch):
    """The forkserver's preload survives only an ImportError: a location that raised while resolved in
    it stopped every run from starting, where a run that resolves it itself shows the error."""
    import dagster_project.definitions as location
    from dagster_project.orchestration import resolved_location

    def unresolvable() -> None:
        raise dg.DagsterInvalidDefinitionError("Duplicate definition found for shared_sensor")

    monkeypatch.setattr(location.defs, "get_repository_def", unresolvable)
    importlib.reload(resolved_location)  # what the preload runs: it must not raise
    assert resolved_location.resolve(location.defs) is None
