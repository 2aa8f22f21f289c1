"""How much the data-quality gate costs per micro-batch.

Run: python benchmarks/quality_bench.py [--repeats 5]

Validates clean and dirty (1 % of rows out of range) batches of 10,000 and 100,000 rows of a
5-feature spec with the Great Expectations suite, next to the numpy-only per-row check on the same
rows, and times importing great_expectations in a fresh interpreter (every Dagster run pays it).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

from dagster_project.ingest.micro_batch import MicroBatch
from dagster_project.quality.suite import batch_frame, row_violations, validate_batch
from dagster_project.spec import StreamSpec

SPEC = StreamSpec.model_validate(
    {
        "name": "bench",
        "partitions": 2,
        "features": [{"name": f"x{i}", "min": -10, "max": 10} for i in range(5)],
        "label": {"classes": [0, 1]},
        "quality": {"mean_bounds": {"x0": [-1, 1]}, "std_bounds": {"x0": [0.5, 2]}},
    }
)
IMPORT_GX = (
    "import os, time; os.environ['GX_ANALYTICS_ENABLED'] = 'False'; t = time.perf_counter(); "
    "import great_expectations; print(time.perf_counter() - t)"
)


def make_batch(rows: int, dirty_fraction: float = 0.0, seed: int = 0) -> MicroBatch:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 5))
    bad = rng.choice(rows, int(rows * dirty_fraction), replace=False)
    X[bad, 1] = 50.0
    return MicroBatch(
        stream="bench",
        ranges={0: (0, rows // 2), 1: (0, rows - rows // 2)},
        X=X,
        y=rng.integers(0, 2, rows).astype(np.float64),
        ids=[f"e{i}" for i in range(rows)],
        partitions=(np.arange(rows) % 2).astype(np.int32),
        offsets=np.arange(rows, dtype=np.int64) // 2,
    )


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def line(label: str, seconds: list[float], rows: int) -> str:
    median = statistics.median(seconds)
    return (
        f"{label:<28} median {median * 1000:8.1f} ms  min {min(seconds) * 1000:8.1f}  max {max(seconds) * 1000:8.1f}"
        f"  {rows / median:>12,.0f} rows/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--import-runs", type=int, default=3)
    args = parser.parse_args()

    imports = [
        float(subprocess.run([sys.executable, "-c", IMPORT_GX], capture_output=True, text=True, check=True).stdout)
        for _ in range(args.import_runs)
    ]
    print(
        f"import great_expectations (fresh process, {len(imports)} runs): median {statistics.median(imports):.2f} s, "
        f"min {min(imports):.2f}, max {max(imports):.2f}"
    )

    start = time.perf_counter()
    first = validate_batch(make_batch(100), SPEC)
    print(f"first validation in this process (GX import + suite build): {time.perf_counter() - start:.2f} s")
    print(f"suite: {first.evaluated_expectations} expectations, 5 features; repeats: {args.repeats}\n")

    for rows in (10_000, 100_000):
        for dirty in (0.0, 0.01):
            batch = make_batch(rows, dirty)
            result = validate_batch(batch, SPEC)
            assert result.passed == (dirty == 0), result.summary
            gx_times = timed(lambda b=batch: validate_batch(b, SPEC), args.repeats)
            np_times = timed(lambda b=batch: row_violations(b, SPEC), args.repeats)
            frame_times = timed(lambda b=batch: batch_frame(b, SPEC), args.repeats)
            kind = "clean" if dirty == 0 else f"dirty ({result.unexpected_rows} bad rows)"
            print(f"{rows:,} rows, {kind}")
            print("  " + line("validate_batch (GX)", gx_times, rows))
            print("  " + line("  of which batch_frame", frame_times, rows))
            print("  " + line("row_violations (numpy)", np_times, rows))
            ratio = statistics.median(gx_times) / statistics.median(np_times)
            print(f"  GX suite / numpy row check: {ratio:,.0f}x\n")


if __name__ == "__main__":
    main()
