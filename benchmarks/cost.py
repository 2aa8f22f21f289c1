"""Cost: peak memory of a training step and import/start-up time of a run process.

Every figure comes from a fresh interpreter (`python -m benchmarks.child`), because that is what
each Dagster run pays: the run worker is spawned per run and re-imports the definitions, and the
training steps import great_expectations and skl2onnx on first use. Wall time is measured around
the whole subprocess (interpreter start included); `import_s` inside it. The scorer's peak RSS
comes from the inference section (its process's VmHWM after scoring).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from typing import Any

import orjson

from benchmarks.common import PROJECT_ROOT, progress, summary
from benchmarks.context import BenchContext
from benchmarks.data import event_ranges
from dagster_project.spec import StreamSpec

RUN_IMPORTS = ["dagster_project.definitions", "great_expectations", "skl2onnx", "onnxruntime", "sklearn.linear_model"]
IMPORT_SETS: dict[str, list[str]] = {
    "python (nothing imported)": [],
    "dagster_project.definitions (run worker start)": ["dagster_project.definitions"],
    "definitions + great_expectations + skl2onnx + onnxruntime (a training run)": RUN_IMPORTS,
}
SINGLE_IMPORTS = [
    "great_expectations",
    "skl2onnx",
    "river.linear_model",
    "dagster",
    "sklearn.linear_model",
    "onnxruntime",
    "kafka",
]


def _child(args: list[str], timeout: float = 300) -> tuple[float, dict[str, Any]]:
    env = os.environ | {"GX_ANALYTICS_ENABLED": "False", "DAGSTER_DISABLE_TELEMETRY": "1"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.child", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"benchmarks.child {args[:1]} failed:\n{done.stderr[-3000:]}")
    return wall, orjson.loads(done.stdout.strip().splitlines()[-1])


def import_times(ctx: BenchContext) -> dict[str, Any]:
    sets = dict(IMPORT_SETS)
    if ctx.mode.quick:  # the cold training step below pays the GX and skl2onnx imports too
        sets = {k: v for k, v in sets.items() if v != RUN_IMPORTS}
    else:
        sets.update({m: [m] for m in SINGLE_IMPORTS})
    out: dict[str, Any] = {}
    for label, modules in sets.items():
        walls, imports, rss = [], [], []
        for _ in range(ctx.mode.import_repeats):
            wall, result = _child(["imports", *modules])
            walls.append(wall)
            imports.append(result["import_s"])
            rss.append(result["peak_rss_mib"])
        out[label] = {
            "modules": modules,
            "process_wall_s": summary(walls),
            "import_s": summary(imports),
            "peak_rss_mib": summary(rss),
        }
        progress(f"cost: {label}: {summary(walls)['median']:.2f}s wall, {summary(rss)['median']:.0f} MiB")
    return out


def training_rss(ctx: BenchContext) -> dict[str, Any]:
    topic = ctx.shared.get("train_topic")
    template = ctx.shared.get("train_registry_template")
    if not topic or not template:
        return {"skipped": "needs the training section's topic (run it in the same command)"}
    spec = StreamSpec.model_validate(topic["spec"])
    out: dict[str, Any] = {}
    for rows in ctx.mode.rss_sizes:
        if rows > topic["rows"]:
            continue
        registry = ctx.workdir / f"cost-registry-{rows}"
        shutil.copytree(template, registry)
        config = {
            "spec": topic["spec"],
            "ranges": {str(p): r for p, r in event_ranges(spec, topic["warmup"], rows).items()},
            "bootstrap": ctx.bootstrap,
            "registry": str(registry),
            "io_dir": str(ctx.workdir / f"cost-io-{rows}"),
        }
        progress(f"cost: one cold training step of {rows:,} rows in a fresh process (peak RSS)")
        wall, result = _child(["train", orjson.dumps(config).decode()])
        out[str(rows)] = {"process_wall_s": wall, **result}
        progress(
            f"cost: training step {rows:,} rows: peak RSS {result['peak_rss_mib']:.0f} MiB, "
            f"{wall:.1f}s wall ({result['import_s']:.1f}s imports before the first step)"
        )
        shutil.rmtree(registry, ignore_errors=True)
    return out


def run(ctx: BenchContext) -> dict[str, Any]:
    progress("cost: import times of a run process, fresh interpreters")
    return {"imports": import_times(ctx), "training_step": training_rss(ctx)}
