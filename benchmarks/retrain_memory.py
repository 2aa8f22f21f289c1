"""Peak memory of a retrain's window read: one read of the whole window vs `read_window`'s chunks.

    python -m benchmarks.retrain_memory [--rows 100000 1000000] [--chunk-rows N] [--bootstrap host:port]

Produces the largest size's events of the shipped `synthetic` stream (5 float features, 2
partitions, round-robin) to a fresh embedded Tansu broker (or `--bootstrap`), then reads the first
`rows` of them in a fresh interpreter per figure, as `cost.py` does, and prints that process's peak
RSS (VmHWM): `imports` (the same imports, nothing read: the floor), `single` (one `read_batch` over
the whole window: `retraining.read_window` before it read in chunks) and `chunked` (`read_window`
now, with `--chunk-rows` as its `WINDOW_READ_ROWS`). The README's retrain memory figures come from
here; so does the size of the batch's `ids`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

MODES = ("imports", "single", "chunked")


def _child(mode: str, config: dict[str, Any]) -> dict[str, Any]:
    """One figure, in this (fresh) process: read the window as `mode` says, then the peak RSS."""
    from benchmarks.child import _peak_rss_mib
    from dagster_project.ingest.micro_batch import read_batch
    from dagster_project.kafka.settings import KafkaSettings
    from dagster_project.learning import retraining
    from dagster_project.spec import StreamSpec

    spec = StreamSpec.model_validate(config["spec"])
    window = {int(p): (int(s), int(e)) for p, (s, e) in config["window"].items()}
    settings = KafkaSettings.from_env(config["bootstrap"])
    started = time.perf_counter()
    if mode == "imports":
        return {"rows": 0, "read_s": 0.0, "peak_rss_mib": _peak_rss_mib()}
    if mode == "single":
        batch = read_batch(settings, spec, window, dead_letter_invalid=False)
    else:
        retraining.WINDOW_READ_ROWS = config.get("chunk_rows") or retraining.WINDOW_READ_ROWS
        batch = retraining.read_window(settings, None, spec, window)  # no derived features: no registry read
    return {
        "rows": batch.rows,
        "read_s": time.perf_counter() - started,
        "peak_rss_mib": _peak_rss_mib(),
        "arrays_mib": (batch.X.nbytes + batch.y.nbytes + batch.partitions.nbytes + batch.offsets.nbytes) / 2**20,
        "ids_mib": _ids_mib(batch.ids),
    }


def _ids_mib(ids: list[str]) -> float:
    """The `ids` list's own size and its strings'."""
    return (sys.getsizeof(ids) + sum(sys.getsizeof(i) for i in ids)) / 2**20


def _run_child(mode: str, config: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.common import run_child

    return run_child("benchmarks.retrain_memory", mode, config)


def _produce(bootstrap: str, rows: int) -> dict[str, Any]:
    """The stream's spec (as JSON) after its first `rows` events were produced."""
    from benchmarks.common import progress, unique_name
    from benchmarks.data import bench_spec, encode, events, produce_round_robin
    from dagster_project.kafka.settings import KafkaSettings

    spec = bench_spec(unique_name("retrainmem"))
    progress(f"retrain_memory: producing {rows:,} events to {spec.events_topic}")
    produce_round_robin(KafkaSettings.from_env(bootstrap), spec, encode(events(rows)))
    return spec.model_dump(mode="json")


def measure(bootstrap: str, sizes: list[int], chunk_rows: int | None = None) -> dict[str, Any]:
    """Every mode at every size, side by side, with the ratio chunked / single of the peaks."""
    from benchmarks.common import progress
    from benchmarks.data import event_ranges
    from dagster_project.spec import StreamSpec

    spec = _produce(bootstrap, max(sizes))
    partitioned = StreamSpec.model_validate(spec)
    out: dict[str, Any] = {}
    for rows in sizes:
        window = {str(p): r for p, r in event_ranges(partitioned, 0, rows).items()}
        config = {"spec": spec, "bootstrap": bootstrap, "window": window, "chunk_rows": chunk_rows}
        figures = {mode: _run_child(mode, config) for mode in MODES}
        figures["chunked_over_single"] = figures["chunked"]["peak_rss_mib"] / figures["single"]["peak_rss_mib"]
        out[str(rows)] = figures
        progress(f"retrain_memory: {rows:,} rows done")
    return out


def report(out: dict[str, Any]) -> str:
    lines = ["rows       imports  single   chunked  chunked/single  ids (MiB)  arrays (MiB)  read s single/chunked"]
    for rows, f in out.items():
        single, chunked = f["single"], f["chunked"]
        lines.append(
            f"{int(rows):>9,}  {f['imports']['peak_rss_mib']:7.0f}  {single['peak_rss_mib']:7.0f}  "
            f"{chunked['peak_rss_mib']:7.0f}  {f['chunked_over_single']:14.2f}  {chunked['ids_mib']:9.1f}  "
            f"{chunked['arrays_mib']:12.1f}  {single['read_s']:.1f} / {chunked['read_s']:.1f}"
        )
    return "\n".join(lines) + "\n(peak RSS in MiB, VmHWM of a fresh process per figure)"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--chunk-rows", type=int, help="read_window's WINDOW_READ_ROWS (default: the module's)")
    parser.add_argument("--bootstrap", help="an existing broker (default: a fresh embedded Tansu)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "CONFIG_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        sys.stdout.write(orjson.dumps(_child(args.child[0], orjson.loads(args.child[1]))).decode() + "\n")
        return
    if args.bootstrap:
        out = measure(args.bootstrap, args.rows, args.chunk_rows)
    else:
        from dagster_project.kafka.brokers.tansu import EmbeddedBroker

        with tempfile.TemporaryDirectory() as directory, EmbeddedBroker(log_path=Path(directory) / "tansu.log") as b:
            out = measure(b.bootstrap, args.rows, args.chunk_rows)
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    print(report(out))


if __name__ == "__main__":
    main(sys.argv[1:])
