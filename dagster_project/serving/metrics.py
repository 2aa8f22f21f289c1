"""Prometheus metrics of one scorer, on a registry of its own.

Every scorer gets a dedicated ``CollectorRegistry`` (served at ``GET /metrics``), so several scorers
in one process, as in the tests, never clash over metric names. All names start with
``streamfit_`` and carry the ``stream`` label; ``version`` is added where a model version applies.

``streamfit_inference_latency_seconds`` observes one onnxruntime call: one poll batch for the
Kafka loop (``source="kafka"``), and for HTTP (``source="http"``) the requests scored together in
one loop iteration (``coalesce.Coalescer``; one request when it arrived alone or was too large to
parse on the loop). It is per call, not per row; divide by ``streamfit_predictions_total`` for a
per-row figure.

With several HTTP processes (`serve --http-processes N`) every process writes its samples to files in
one directory (prometheus_client's multiprocess mode, `enable_multiprocess`) and `exposition()` adds
them up, so any process's `/metrics` counts all of them; gauges show the most recently set value.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# One onnxruntime call: ~10 us for a row, a few ms for a 500-row batch, more on a busy machine.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ScorerMetrics:
    """The scorer's metrics, already bound to one stream."""

    def __init__(self, stream: str, registry: CollectorRegistry | None = None) -> None:
        self.stream = stream
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.predictions = Counter(
            "streamfit_predictions",
            "Predictions made, by model version and source (kafka or http).",
            ["stream", "version", "source"],
            registry=r,
        )
        self.scoring_batches = Counter(
            "streamfit_scoring_batches",
            "Kafka poll batches scored, produced and committed.",
            ["stream", "version"],
            registry=r,
        )
        self.inference_latency = Histogram(
            "streamfit_inference_latency_seconds",
            "Seconds per onnxruntime call: one Kafka poll batch, or the HTTP requests scored together (not per row).",
            ["stream", "version", "source"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.dlq_messages = Counter(
            "streamfit_dlq_messages",
            "Malformed events sent to the dead-letter topic by the scorer.",
            ["stream"],
            registry=r,
        )
        self.feature_keys = Gauge(
            "streamfit_feature_keys",
            "Keys held by the derived-feature state (all partitions and key fields).",
            ["stream"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.feature_keys_evicted = Counter(
            "streamfit_feature_keys_evicted",
            "Keys evicted from the derived-feature state at feature_state.max_keys (their windows restart empty).",
            ["stream"],
            registry=r,
        )
        self.model_version = Gauge(
            "streamfit_model_version",
            "Numeric version of the model being served (v3 -> 3); 0 before the first.",
            ["stream"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.model_swaps = Counter(
            "streamfit_model_swaps",
            "Champion changes applied while serving (the first load is not a swap).",
            ["stream"],
            registry=r,
        )
        self.model_load_failures = Counter(
            "streamfit_model_load_failures",
            "Versions refused when loaded (checksum mismatch, unreadable or incompatible model); "
            "retried only when their files change.",
            ["stream", "version"],
            registry=r,
        )
        self.serving_fallback = Gauge(
            "streamfit_serving_fallback",
            "1 while the champion cannot be served and an older valid version serves instead (see /healthz).",
            ["stream"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.served_unloadable = Gauge(
            "streamfit_served_model_unloadable",
            "1 while the registry files of the version this scorer serves from memory are missing or damaged: "
            "a scorer started now could not load it (see /healthz for the repair).",
            ["stream"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.registry_up = Gauge(
            "streamfit_registry_up",
            "1 when the last read of the registry (champion alias, model files) succeeded; 0 while it cannot be "
            "reached, when the last good model keeps serving (see /healthz).",
            ["stream"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.registry_errors = Counter(
            "streamfit_registry_errors",
            "Watch ticks that could not read the registry (MLflow down or failing, say).",
            ["stream"],
            registry=r,
        )
        self.scorer_lag = Gauge(
            "streamfit_scorer_lag",
            "Events waiting in a partition after the last poll (high-water mark - position).",
            ["stream", "partition"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.scorer_partitions = Gauge(
            "streamfit_scorer_partitions",
            "Partitions of <stream>.events the group assigned to this scorer now; 0 on a scorer the group left "
            "idle (more scorers than partitions: it answers HTTP only) or that has not joined yet.",
            ["stream"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.partition_unfetched = Gauge(
            "streamfit_scorer_partition_unfetched_seconds",
            "Seconds an assigned partition of <stream>.events has had no leader this scorer can fetch from (none "
            "elected, or its broker not connected); 0 while it fetches. Its events wait meanwhile; /healthz "
            "`warnings` says why. The scorer stays ready (/predict does not need it).",
            ["stream", "partition"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.batch_retries = Counter(
            "streamfit_scorer_batch_retries",
            "Poll batches re-read because their predictions were not acknowledged (nothing was committed).",
            ["stream"],
            registry=r,
        )
        self.consumer_rejoins = Counter(
            "streamfit_scorer_consumer_rejoins",
            "Consumers replaced as wedged: the group silent while the brokers accepted connections, or a poll stuck "
            "inside the client.",
            ["stream"],
            registry=r,
        )
        self.commit_failures = Counter(
            "streamfit_scorer_commit_failures",
            "Offset commits that failed (retried with the next batch; at worst a crash duplicates more).",
            ["stream"],
            registry=r,
        )
        self.delivery_mode = Gauge(
            "streamfit_scorer_delivery_mode",
            "1 for the delivery mode the Kafka loop uses (exactly_once or at_least_once), 0 for the other; "
            "absent until the loop starts. /healthz says why.",
            ["stream", "mode"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.transactions = Counter(
            "streamfit_scorer_transactions",
            "Exactly-once poll-batch transactions, by outcome (committed, or aborted and the batch re-read).",
            ["stream", "outcome"],
            registry=r,
        )
        self.unseen_categories = Counter(
            "streamfit_unseen_categories",
            "Rows scored whose category feature held a value outside the spec's vocabulary (encoded per "
            "the feature's `unseen`), by feature and source (kafka or http).",
            ["stream", "feature", "source"],
            registry=r,
        )
        self.http_requests = Counter(
            "streamfit_http_requests",
            "HTTP requests by path and status code.",
            ["stream", "path", "code"],
            registry=r,
        )
        self.model_version.labels(stream).set(0)
        self.serving_fallback.labels(stream).set(0)
        self.served_unloadable.labels(stream).set(0)
        self.scorer_partitions.labels(stream).set(0)
        self.registry_up.labels(stream).set(1)
        # Counters exported from 0, so their first event counts in increase() (a series appears
        # with its first value, and increase() cannot see the step that created it: 6 swaps read 2.16).
        for counter in (
            self.registry_errors,
            self.batch_retries,
            self.dlq_messages,
            self.feature_keys_evicted,
            self.model_swaps,
            self.consumer_rejoins,
            self.commit_failures,
        ):
            counter.labels(stream)

    def count_unseen(self, counts: dict[str, int], source: str) -> None:
        """Add one scored batch's unseen-category rows per feature (`categories.unseen_counts`)."""
        for feature, n in counts.items():
            if n:
                self.unseen_categories.labels(self.stream, feature, source).inc(n)

    def exposition(self) -> bytes:
        """The Prometheus text format of this scorer's registry, or of every process's in multiprocess mode."""
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, directory)
        return generate_latest(merged)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0.0 when absent); `stream` is filled in. Handy in tests and logs."""
        found = self.registry.get_sample_value(name, {"stream": self.stream, **labels})
        return found if found is not None else 0.0


def multiprocess_dir() -> str | None:
    """The shared metrics directory when this process is one of several serving one stream."""
    return os.environ.get(MULTIPROC_ENV) or None


def enable_multiprocess(directory: str) -> None:
    """Make metrics created from now on write to files in `directory`, shared with child processes (which
    inherit the environment). prometheus_client picks its value class when imported; this re-picks it."""
    os.environ[MULTIPROC_ENV] = directory
    values.ValueClass = values.get_value_class()
