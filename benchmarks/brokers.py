"""The same benchmarks on the embedded Tansu broker and on Apache Kafka, side by side in one run.

Training throughput (the real path, the River loop and the bare read floors, by
`benchmarks.throughput`) and scorer throughput (`benchmarks.inference.scorer_section`) each run
once on the session's broker and once on a 1-node Apache Kafka cluster started here, with the same
seeded data. The ratios are Apache Kafka's figure over Tansu's, measured back to back.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from benchmarks.common import progress, ratio
from benchmarks.context import BenchContext


def _measure(ctx: BenchContext) -> dict[str, Any]:
    from benchmarks import inference, throughput

    ctx.workdir.mkdir(parents=True, exist_ok=True)
    return {"training": throughput.run(ctx), "scorer": inference.scorer_section(ctx)}


def _headline(measured: dict[str, Any]) -> dict[str, float | None]:
    """Medians worth comparing across brokers: per batch size, rows/s of each system; events/s of the scorer."""
    out: dict[str, float | None] = {}
    for rows, size in measured["training"]["sizes"].items():
        for system, stats in size["rows_per_s"].items():
            out[f"training_{rows}_{system}_rows_per_s"] = stats["median"]
    scorer = measured["scorer"]
    out["scorer_1_replica_events_per_s"] = scorer["events_per_s"]["1_replica"]["median"]
    out["scorer_bare_read_events_per_s"] = scorer["bare_read_events_per_s"]["median"]
    return out


def run(ctx: BenchContext) -> dict[str, Any]:
    from dagster_project.kafka.brokers.apache import KAFKA_VERSION, ApacheKafkaCluster, ensure_kafka_jars

    ensure_kafka_jars(progress=progress)
    results: dict[str, Any] = {"kafka_version": KAFKA_VERSION}
    progress("brokers: the training and scorer benchmarks on the session's broker")
    results["tansu"] = _headline(_measure(replace(ctx, shared={}, workdir=ctx.workdir / "brokers-tansu")))
    with ApacheKafkaCluster(nodes=1, data_dir=ctx.workdir / "kafka-data", log_dir=ctx.workdir) as cluster:
        progress(f"brokers: Apache Kafka {KAFKA_VERSION} started in {cluster.startup_seconds:.1f}s; the same again")
        results["kafka_startup_s"] = cluster.startup_seconds
        kafka_ctx = replace(ctx, bootstrap=cluster.bootstrap, shared={}, workdir=ctx.workdir / "brokers-kafka")
        results["kafka"] = _headline(_measure(kafka_ctx))
    results["kafka_vs_tansu"] = {
        key: ratio(results["kafka"][key], value) for key, value in results["tansu"].items() if value
    }
    for key, value in results["kafka_vs_tansu"].items():
        if value is not None:
            kafka, tansu = results["kafka"][key], results["tansu"][key]
            progress(f"brokers: {key}: Kafka {kafka:,.0f} vs Tansu {tansu:,.0f} ({value:.2f}x)")
    return results
