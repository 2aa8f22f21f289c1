"""`python -m benchmarks.history_cost`: what a drift-sensor tick costs as a stream's history grows.

Every tick of the drift sensor (and every exporter scrape) gathers its evidence (`monitors.evidence.
gather`): the stream's versions, and a change detector over the per-batch error series since the
last action, which on a stationary stream is every batch ever learned. This benchmark builds a
filesystem registry of N versions (one real `register_batch` of the SGD model with its full meta and
data profile, cloned with consecutive offsets, times and seeded stationary accuracies) and times:

- `cold`: a tick with nothing carried over from the last (the listing's meta cache, the resumable
  detectors and which versions were filling, cleared): every meta.json read and the whole series
  replayed, which is what every tick paid before these existed (plus the small cost of filling them);
- `warm`: the next tick after one more version was registered: the new meta read, the new batch's
  rows fed to the detector.

Both are measured in the same run on the same registry, `--ticks` times each, alternating. With
`--filling`, every batch records a feature whose windows were still filling (`features.warmup`), as
a stream with 1-day windows and 1-minute batches does for its first 1,440: a tick then looks
through every version after the champion (v1) for the first warm one.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from benchmarks.common import machine_info, percentiles, progress
from benchmarks.registry_cost import Trained, payload


def clone(root: Path, stream: str, template: Path, number: int, meta: dict[str, Any], accuracy: float) -> None:
    """Version `number` as a copy of `template` whose meta follows the previous version's."""
    rows = meta["metrics"]["rows"]
    target = root / stream / f"v{number}"
    shutil.copytree(template, target)
    half = rows // 2
    learned = {"0": half * number, "1": (rows - half) * number}
    document = {
        **meta,
        "version": f"v{number}",
        "parent": f"v{number - 1}",
        "offsets": {**meta["offsets"], "learned": learned},
        "metrics": {**meta["metrics"], "accuracy": accuracy},
        "created_at": (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=60 * number)).isoformat(),
    }
    (target / "meta.json").write_bytes(orjson.dumps(document))


def build(root: Path, versions: int, rows: int, seed: int, filling: bool = False) -> tuple[Any, np.random.Generator]:
    """A registry of `versions` versions of one stream; returns (spec, rng for the next accuracies)."""
    from dagster_project.registry.store import FilesystemRegistry
    from dagster_project.registry.versioning import register_batch

    spec, batch, model, onnx_bytes, parity = payload(rows)
    registry = FilesystemRegistry(root)
    register_batch(registry, spec, batch, Trained(model, None, rows), onnx_bytes, parity, "run-1")
    template = root / spec.name / "v1"
    meta = orjson.loads((template / "meta.json").read_bytes())
    if filling:
        meta["profile"]["filling"] = [spec.input_names[0]]
        (template / "meta.json").write_bytes(orjson.dumps(meta))
    rng = np.random.default_rng(seed)
    for number in range(2, versions + 1):
        clone(root, spec.name, template, number, meta, rng.binomial(rows, 0.9) / rows)
        if number % 500 == 0:
            progress(f"history cost: {number:,} of {versions:,} versions written")
    return spec, rng


def ticks(root: Path, spec: Any, rng: np.random.Generator, rows: int, count: int) -> dict[str, list[float]]:
    """Seconds per tick of each operation, cold and warm, alternating; a version lands between them."""
    from dagster_project.registry import store
    from dagster_project.registry.store import FilesystemRegistry
    from monitors import detectors, evidence
    from monitors.evidence import gather

    template = root / spec.name / "v1"
    meta = orjson.loads((template / "meta.json").read_bytes())
    number = len(FilesystemRegistry(root).version_names(spec.name))
    operations = {
        "gather (evidence)": lambda: gather(FilesystemRegistry(root), spec),
        "versions (listing)": lambda: FilesystemRegistry(root).versions(spec.name),
    }
    timings: dict[str, list[float]] = {}
    operations["gather (evidence)"]()  # imports (river) are not a tick's cost
    for tick in range(count):
        progress(f"history cost: {number:,} versions, tick {tick + 1} of {count}")
        for operation, call in operations.items():
            store._SUMMARIES.clear()
            detectors._RESUMABLE.clear()
            evidence._FILLING.clear()
            started = time.perf_counter()
            call()
            timings.setdefault(f"{operation} cold", []).append(time.perf_counter() - started)
            number += 1  # the next batch lands between ticks
            clone(root, spec.name, template, number, meta, rng.binomial(rows, 0.9) / rows)
            started = time.perf_counter()
            call()
            timings.setdefault(f"{operation} warm", []).append(time.perf_counter() - started)
    return timings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", default="500,2000", help="history lengths, comma-separated")
    parser.add_argument("--rows", type=int, default=1000, help="rows per batch")
    parser.add_argument("--ticks", type=int, default=5, help="ticks timed per case")
    parser.add_argument("--filling", action="store_true", help="every batch had a derived feature still filling")
    args = parser.parse_args(argv)

    machine = machine_info()
    print(f"# drift-sensor tick cost by history: {machine['cpu']}, {machine['nproc']} cpus")
    print(f"# load average at start {machine['loadavg_at_start']}; ms are medians of {args.ticks} ticks")
    if args.filling:
        print("# every batch had a derived feature's windows still filling (champion v1)")
    print(f"{'versions':>8} {'operation':<18} {'cold ms':>10} {'warm ms':>10} {'cold/warm':>10}")
    for versions in [int(v) for v in args.versions.split(",")]:
        with tempfile.TemporaryDirectory(prefix="streamfit-history-bench-") as tmp:
            spec, rng = build(Path(tmp), versions, args.rows, seed=versions, filling=args.filling)
            timings = ticks(Path(tmp), spec, rng, args.rows, args.ticks)
        for operation in ("gather (evidence)", "versions (listing)"):
            cold, warm = (
                percentiles([t * 1000 for t in timings[f"{operation} {k}"]], (50,))["p50"] for k in ("cold", "warm")
            )
            print(f"{versions:>8,} {operation:<18} {cold:>10.1f} {warm:>10.1f} {cold / warm:>9.1f}x")


if __name__ == "__main__":
    main()
