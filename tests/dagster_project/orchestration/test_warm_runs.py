"""Warm run workers: a run forked from the preloaded process has its imports paid already."""

from __future__ import annotations

import subprocess
import sys

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
