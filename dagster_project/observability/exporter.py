"""Prometheus exporter for training: metrics read from durable state on every scrape.

Training runs are short-lived processes that a scrape would usually miss, so instead of pushing
from them (a Pushgateway keeps stale series forever and is one more service to run) the exporter
derives every training metric from what the runs leave behind: the registry's versions (each
meta.json is immutable, so it is read once and cached), the champion history and decisions,
the label joiner's live_metrics.jsonl (live accuracy per served version), and Kafka's
high-water marks for lag. Restarting the exporter loses nothing; counters come back identical.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from dagster_project.kafka.settings import KafkaSettings
from dagster_project.names import is_version_name, version_number
from dagster_project.registry.store import BrokenRegistryFile, ModelRegistry, Version, without_state
from dagster_project.spec import BrokenSpec, StreamSpec
from sensors.resume_policy import pages

log = logging.getLogger(__name__)
PREQUENTIAL_METRICS = ("accuracy", "roc_auc", "log_loss", "mae", "rmse")
# The parts of a version's meta.json the metrics read: cached per version instead of the whole meta
# (its data profile made it 180-250 KB a version, 420 MB of exporter at 2,000 versions).
EXPORTED_META = ("rows", "timings", "metrics", "adaptive_sgd", "served", "created_at", "offset_reset_applied")


def passed_over_rows(resets: list[dict[str, Any] | None]) -> dict[str, int]:
    """Offsets read and messages dead-lettered by batches passed over because every message was a
    dead letter (`quality.passed_over`). No version learns them, so they are counted from the skip
    recorded by the version that applied it, and from the pending one: a burst of junk reaches the
    dead-letter alert before the stream learns again."""
    from dagster_project.quality.passed_over import dead_lettered_rows

    counts = [dead_lettered_rows(reset) for reset in resets]
    return {"read": sum(c[0] for c in counts), "dlq": sum(c[1] for c in counts)}


class TrainingCollector(Collector):
    """Exposes `streamfit_*` training metrics for the given streams."""

    def __init__(self, registry: ModelRegistry, specs: list[StreamSpec], kafka: KafkaSettings | None) -> None:
        self.registry = registry
        self.specs = specs
        self.kafka = kafka
        self._meta_cache: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.broken: dict[str, set[Path | str]] = {}  # per stream, the files the last scrape could not read
        self._labels_unreadable: set[str] = set()  # streams whose labels topic the last scrape could not read
        self._labels_absent_until: dict[str, float] = {}  # streams without a labels topic: when to look again

    def _versions(self, stream: str) -> list[Version]:
        with self._lock:  # versions never change once written, so each meta.json is parsed once
            found = []
            names = [name for name in self.registry.version_names(stream) if is_version_name(name)]
            self.broken[stream] = set()
            for name in names:
                key = (stream, name)
                if key not in self._meta_cache:
                    try:
                        meta = self.registry.get(stream, name).meta
                        self._meta_cache[key] = {k: meta[k] for k in EXPORTED_META if k in meta}
                    except BrokenRegistryFile as exc:  # counted and logged; the other versions still report
                        log.warning("%s", exc)
                        self.broken[stream].add(exc.path)
                        continue
                found.append(Version(stream, name, self._meta_cache[key]))
            return found

    def _read(self, stream: str, read: Callable[[], Any], default: Any) -> Any:
        """A registry read that a damaged file cannot turn into a failed scrape: counted and logged instead."""
        try:
            return read()
        except BrokenRegistryFile as exc:
            log.warning("%s", exc)
            self.broken.setdefault(stream, set()).add(exc.path)
            return default

    def collect(self) -> Iterator[Metric]:
        batches = CounterMetricFamily(
            "streamfit_batches", "Micro-batches learned (registered versions)", labels=["stream"]
        )
        rows = CounterMetricFamily("streamfit_rows", "Rows by fate across all batches", labels=["stream", "fate"])
        dlq = CounterMetricFamily("streamfit_dlq_messages", "Messages sent to the dead-letter topic", labels=["stream"])
        version = GaugeMetricFamily("streamfit_model_version", "Version number by alias", labels=["stream", "alias"])
        prequential = GaugeMetricFamily(
            "streamfit_prequential_metric", "Test-then-train metric of the latest batch", labels=["stream", "metric"]
        )
        served = GaugeMetricFamily(
            "streamfit_served_prequential_metric",
            "Prequential metric of the model served (the champion) on the latest batch, beside the head's",
            labels=["stream", "metric"],
        )
        step = GaugeMetricFamily(
            "streamfit_adaptive_serving_passes",
            "Passes per batch of the adaptive SGD copy the head version serves (more passes: a larger step; "
            "with max_passes, a step beyond it runs as max_passes passes at a larger eta0)",
            labels=["stream"],
        )
        train = SummaryMetricFamily("streamfit_train_seconds", "Seconds spent in test-then-train", labels=["stream"])
        export = SummaryMetricFamily(
            "streamfit_export_seconds", "Seconds spent exporting and checking ONNX", labels=["stream"]
        )
        changes = CounterMetricFamily(
            "streamfit_champion_changes", "Champion alias changes by kind", labels=["stream", "kind"]
        )
        halted = GaugeMetricFamily(
            "streamfit_halted",
            "1 while the stream is halted (a batch failed its retries or its data-quality rules); the sensor's "
            "skip reason names the run and the fix",
            labels=["stream"],
        )
        resuming = GaugeMetricFamily(
            "streamfit_halt_auto_resuming",
            "1 while the halt is a transient outage's (the broker or MLflow away) that the sensor resumes by itself "
            "once the broker answers, and has not failed too often; StreamfitTrainingHalted does not page for it",
            labels=["stream"],
        )
        learned_at = GaugeMetricFamily(
            "streamfit_head_timestamp_seconds", "When the newest version (the head) was registered", labels=["stream"]
        )
        max_wait = GaugeMetricFamily(
            "streamfit_batch_max_wait_seconds",
            "The spec's batch.max_wait_s: how long a waiting row may wait before a batch is cut (alerts scale with it)",
            labels=["stream"],
        )
        for spec in self.specs:
            name = spec.name
            # The pending reset before the versions: one applied in between is then in both (counted
            # once, below), not in neither (the passed-over dead letters' counts went down, a counter reset)
            pending = self._read(name, lambda name=name: self.registry.pending_offset_reset(name), None)
            found = self._versions(name)
            max_wait.add_metric([name], spec.batch.max_wait_s)
            halt = self._read(name, lambda name=name: self.registry.halt(name), None)
            halted.add_metric([name], 1 if halt else 0)
            resuming.add_metric([name], 1 if halt and not pages(halt) else 0)
            batches.add_metric([name], len(found))
            applied = [v.meta.get("offset_reset_applied") for v in found]
            over = passed_over_rows(applied + ([pending] if without_state(pending) not in applied else []))
            for fate in ("read", "valid", "trained", "dlq"):
                rows.add_metric([name, fate], sum(v.meta["rows"][fate] for v in found) + over.get(fate, 0))
            dlq.add_metric([name], sum(v.meta["rows"]["dlq"] for v in found) + over["dlq"])
            timings = [v.meta.get("timings", {}) for v in found]
            train_s = [t["train_seconds"] for t in timings if t.get("train_seconds") is not None]
            export_s = [t["export_seconds"] for t in timings if t.get("export_seconds") is not None]
            train.add_metric([name], count_value=len(train_s), sum_value=sum(train_s))
            export.add_metric([name], count_value=len(export_s), sum_value=sum(export_s))
            if found:
                version.add_metric([name, "head"], found[-1].number)
                if found[-1].meta.get("created_at"):
                    learned_at.add_metric([name], datetime.fromisoformat(found[-1].meta["created_at"]).timestamp())
                for metric in PREQUENTIAL_METRICS:
                    value = found[-1].meta.get("metrics", {}).get(metric)
                    if value is not None:
                        prequential.add_metric([name, metric], value)
                serving_passes = found[-1].meta.get("adaptive_sgd", {}).get("serving_passes")
                if serving_passes is not None:
                    step.add_metric([name], serving_passes)
                latest_served = next((v.meta["served"] for v in reversed(found) if v.meta.get("served")), None)
                for metric in PREQUENTIAL_METRICS:
                    value = (latest_served or {}).get("metrics", {}).get(metric)
                    if value is not None:
                        served.add_metric([name, metric], value)
            champion = self._read(name, lambda name=name: self.registry.champion(name), None)
            if champion:
                version.add_metric([name, "champion"], version_number(champion))
            history = self._read(name, lambda name=name: self.registry.champion_history(name), [])
            rollbacks = sum(1 for h in history if str(h.get("reason", "")).startswith("rollback"))
            changes.add_metric([name, "rollback"], rollbacks)
            changes.add_metric([name, "promotion"], len(history) - rollbacks)
        yield from (batches, rows, dlq, version, prequential, served, step, train, export, changes)
        yield from (halted, resuming, learned_at, max_wait)
        yield from self._monitoring()
        if self.kafka is not None:
            yield from self._lag()
        broken = GaugeMetricFamily(
            "streamfit_registry_broken_files",
            "Registry files the last scrape could not read (the log names the fix)",
            labels=["stream"],
        )
        for spec in self.specs:
            broken.add_metric([spec.name], len(self.broken.get(spec.name, ())))
        yield broken

    def _monitoring(self) -> Iterator[Metric]:
        """Data-quality outcomes, drift actions and the latest drift scores, from decisions.jsonl."""
        from monitors.evidence import ACTION_KIND, gather

        quality = CounterMetricFamily(
            "streamfit_quality_failures", "Batches that failed data quality, by policy", labels=["stream", "action"]
        )
        actions = CounterMetricFamily(
            "streamfit_drift_actions", "Self-healing actions taken (retrain, rollback)", labels=["stream", "action"]
        )
        psi = GaugeMetricFamily(
            "streamfit_drift_psi_max", "Largest PSI of recent batches vs the champion", labels=["stream"]
        )
        for spec in self.specs:
            decisions = self._read(spec.name, lambda spec=spec: self.registry.decisions(spec.name), [])
            for action in ("halt", "quarantine"):
                quality.add_metric(
                    [spec.name, action],
                    sum(1 for d in decisions if d.get("kind") == "quality" and d["action"] == action),
                )
            for action in ("retrain", "rollback"):
                actions.add_metric(
                    [spec.name, action],
                    sum(1 for d in decisions if d.get("kind") == ACTION_KIND and d["action"] == action),
                )
            champion = self._read(spec.name, lambda spec=spec: self.registry.champion(spec.name), None)
            reports = (
                self._read(spec.name, lambda spec=spec: gather(self.registry, spec).drift_reports, [])
                if champion
                else []
            )
            scores = [r.psi_max for r in reports if r.psi_max is not None]
            if scores:
                psi.add_metric([spec.name], scores[-1])
        yield from (quality, actions, psi)

    def _lag(self) -> Iterator[Metric]:
        """Rows waiting and their age per partition, and offset gaps, probed for every stream at once.

        One stream after another, each probe's metadata round trips made a scrape of 10 streams take
        9-13 s and of 30 streams 18 s on a loaded 2-core machine: past Prometheus's 10 s timeout,
        so every series went missing at once."""
        from concurrent.futures import ThreadPoolExecutor

        up = GaugeMetricFamily("streamfit_kafka_up", "1 when the broker answered this scrape", labels=["stream"])
        lag = GaugeMetricFamily("streamfit_lag_rows", "Rows waiting to be learned", labels=["stream", "partition"])
        oldest = GaugeMetricFamily(
            "streamfit_oldest_waiting_timestamp_seconds",
            "Kafka timestamp of the oldest row not yet learned (absent while nothing waits)",
            labels=["stream", "partition"],
        )
        gap = GaugeMetricFamily(
            "streamfit_offset_gap",
            "1 when the events topic lost rows not yet learned or is not the topic the head learned from "
            "(training stops until `streamfit offsets reset`); lag is then unknown and not exported",
            labels=["stream"],
        )
        unjoined = GaugeMetricFamily(
            "streamfit_labels_unjoined",
            "Delayed labels on <stream>.labels past the label joiner's last checkpoint (every one of them "
            "before its first): they wait for `streamfit labels join <stream>`",
            labels=["stream"],
        )
        with ThreadPoolExecutor(max_workers=max(1, min(LAG_PROBES, len(self.specs)))) as pool:
            probed = list(pool.map(self._probe, self.specs))
        for spec, result in zip(self.specs, probed, strict=True):
            if result is None:
                continue
            if result == "unreachable":
                up.add_metric([spec.name], 0)
                continue
            states, gapped, labels_waiting = result
            up.add_metric([spec.name], 1)
            if labels_waiting is not None:
                unjoined.add_metric([spec.name], labels_waiting)
            gap.add_metric([spec.name], 1 if gapped else 0)
            if gapped:
                continue
            for state in states:
                lag.add_metric([spec.name, str(state.partition)], state.lag)
                if state.lag and state.oldest_waiting_ts_ms is not None:
                    oldest.add_metric([spec.name, str(state.partition)], state.oldest_waiting_ts_ms / 1000)
        yield from (up, lag, oldest, gap, unjoined)

    def _probe(self, spec: StreamSpec) -> tuple[list, bool, int | None] | str | None:
        """(partition states, whether training is stopped at an offset gap, labels not yet joined),
        "unreachable", or None when the registry cannot say where the stream is (the scrape's log
        names the file)."""
        from dagster_project.kafka.io import BrokerUnavailable, probe_partitions, topic_changed, topic_lost
        from dagster_project.kafka.offsets import find_gaps
        from dagster_project.registry.store import expected_offsets

        found = self._read(spec.name, lambda: expected_offsets(self.registry, spec.name), None)
        if found is None:
            return None
        head, expected, reset = found
        try:
            states = probe_partitions(self.kafka, spec.events_topic, expected, timeout_s=2.0)
            gapped = (
                bool(find_gaps(states)) or bool(topic_changed(self.kafka, spec, head, reset, timeout_s=2.0))
                if states
                else topic_lost(spec, head, expected) is not None  # the topic the head learned is gone
            )
        except BrokerUnavailable:
            return "unreachable"
        return states, gapped, self._labels_waiting(spec)

    def _labels_waiting(self, spec: StreamSpec) -> int | None:
        """Labels past the joiner's last checkpointed positions (None while the labels topic does not
        exist or cannot be read). A joiner that never started has no checkpoint, so no
        `streamfit_labels_checkpoint_*` series for its stall alert to watch: this count is what shows
        labels piling up unread. Trouble with the labels topic never hides the events topic's lag."""
        from dagster_project.kafka.io import BrokerUnavailable, probe_partitions
        from dagster_project.labels.store import last_record

        if time.monotonic() < self._labels_absent_until.get(spec.name, 0.0):
            return None
        record = last_record(self.registry.root, spec.name) or {}
        joined = {int(p): int(o) for p, o in record.get("offsets", {}).get(spec.labels_topic, {}).items()}
        try:
            states = probe_partitions(self.kafka, spec.labels_topic, joined, timeout_s=2.0)
        except BrokerUnavailable as exc:  # not authorized (a principal that reads events only), leaderless, slow
            if spec.name not in self._labels_unreadable:
                self._labels_unreadable.add(spec.name)
                log.warning("%s: streamfit_labels_unjoined is not exported: %s", spec.name, exc)
            return None
        if not states:  # a stream without delayed labels: looked for again after a while, not every scrape
            self._labels_absent_until[spec.name] = time.monotonic() + LABELS_ABSENT_RECHECK_S
            return None
        self._labels_unreadable.discard(spec.name)
        return sum(max(0, s.high_water - max(s.next_offset, s.log_start)) for s in states)


LAG_PROBES = 8  # streams probed at once per scrape: each mostly waits on the broker
# A missing labels topic costs a metadata round trip and an admin client per stream and scrape
# (10 streams: 0.78 s a scrape instead of 0.35 s); labels that start arriving are counted this late.
LABELS_ABSENT_RECHECK_S = 300.0


def exporter_specs(directory: str | Path | None = None) -> tuple[list[StreamSpec], list[BrokenSpec]]:
    """The specs to export and the files to export as `streamfit_spec_invalid`: the files that do not
    load, and the files whose stream's Dagster definitions do not build (the code location stops those
    streams just the same; before, the exporter counted only the first kind, so such a stream stopped
    training with no alert but its stall). Their specs load, so their other metrics are still exported.

    Building the definitions is done once, when the exporter starts (about 1 s: Dagster's and the
    assets' imports), never per scrape. If the location cannot be assembled at all, the exporter says
    so and exports the files that do not load only."""
    from dagster_project.spec import load_spec_files_isolated

    loaded, broken = load_spec_files_isolated(directory)
    try:
        from dagster_project.orchestration.broken_specs import assemble_streams

        _streams, unbuilt, _location = assemble_streams(loaded)
    except Exception as exc:  # the exporter's own metrics matter more than this check
        log.warning("could not build the streams' Dagster definitions to find the ones that do not build: %s", exc)
        unbuilt = []
    return [spec for _path, spec in loaded], [*broken, *unbuilt]


class InvalidSpecsCollector(Collector):
    """`streamfit_spec_invalid{file}`: a spec file that does not load, or whose stream's Dagster
    definitions do not build, trains nothing, so without this its stream would vanish from every
    dashboard (a file that does not load exports nothing else)."""

    def __init__(self, broken: list[BrokenSpec]) -> None:
        self.broken = broken

    def collect(self) -> Iterator[Metric]:
        invalid = GaugeMetricFamily(
            "streamfit_spec_invalid",
            "1 for each stream spec file that does not load, or whose stream's Dagster definitions do not build "
            "(its stream does not train)",
            labels=["file"],
        )
        for spec_file in self.broken:
            invalid.add_metric([str(spec_file.path)], 1)
        yield invalid


def exporter_registry(
    registry: ModelRegistry,
    specs: list[StreamSpec],
    kafka: KafkaSettings | None,
    broken: list[BrokenSpec] | None = None,
) -> CollectorRegistry:
    from dagster_project.labels import LiveMetricsCollector

    collectors = CollectorRegistry()
    collectors.register(TrainingCollector(registry, specs, kafka))
    collectors.register(LiveMetricsCollector(registry.root, specs))  # live accuracy from the label joiner
    collectors.register(InvalidSpecsCollector(broken or []))
    return collectors


def serve_exporter(
    registry: ModelRegistry,
    specs: list[StreamSpec],
    kafka: KafkaSettings | None,
    port: int,
    addr: str = "127.0.0.1",
    broken: list[BrokenSpec] | None = None,
):
    """Serve /metrics on `port` in a background thread; returns (server, thread)."""
    from prometheus_client import start_http_server

    return start_http_server(port, addr=addr, registry=exporter_registry(registry, specs, kafka, broken))
