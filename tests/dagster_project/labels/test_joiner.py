"""The label joiner on a real broker: exact live quality per version, dead letters, crashes and restarts."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from dagster_project.cli import main
from dagster_project.dev.faults import InjectedFault
from dagster_project.kafka import clients
from dagster_project.kafka.io import committed_group_offsets, ensure_topics, probe_partitions, read_range_columns
from dagster_project.kafka.record_columns import RecordColumns
from dagster_project.kafka.settings import BOOTSTRAP_ENV, KafkaSettings
from dagster_project.labels import (
    LabelJoiner,
    LiveMetricsCollector,
    LiveStore,
    labels_group,
    live_metrics,
    live_summary,
    read_records,
)
from dagster_project.registry.store import FilesystemRegistry
from dagster_project.spec import StreamSpec
from tests.conftest import synthetic_spec
from tests.dagster_project.serving.support import (
    feature_matrix,
    onnx_of,
    produce_rows,
    read_topic,
    running_service,
    synthetic_rows,
    train_version,
    wait_for,
)
from tests.helpers import StreamfitProcess, label, prediction, sample

# Tansu joins a group after session_timeout/2: a shorter session makes each in-process start ~1 s faster.
FAST_GROUP = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500}


# --- helpers ------------------------------------------------------------------------------------


def send(settings: KafkaSettings, topic: str, pairs: list[tuple[bytes | None, bytes]]) -> None:
    producer = clients.producer(settings, acks="all")
    try:
        futures = [producer.send(topic, key=k, value=v) for k, v in pairs]
        producer.flush(timeout=30)
        assert all(f.succeeded() for f in futures)
    finally:
        producer.close()


def known_rows(prefix: str, n: int, correct: int, version: str, rng: random.Random) -> list[tuple[str, str, int, Any]]:
    """(id, version, prediction, label) with exactly `correct` right; a third of the labels are floats (1.0 == 1)."""
    right = set(rng.sample(range(n), correct))
    rows = []
    for i in range(n):
        truth = rng.randrange(2)
        predicted = truth if i in right else 1 - truth
        rows.append((f"{prefix}{i}", version, predicted, float(truth) if i % 3 == 0 else truth))
    return rows


@contextmanager
def running_joiner(spec: StreamSpec, settings: KafkaSettings, root: Path, **options: Any) -> Iterator[LabelJoiner]:
    """A LabelJoiner in a thread; stopped (clean checkpoint) on exit, its error raised."""
    options.setdefault("consumer_overrides", FAST_GROUP)
    joiner = LabelJoiner(spec, settings, root, **options)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            joiner.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="label-joiner", daemon=True)
    thread.start()
    try:
        yield joiner
    finally:
        joiner.stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the joiner did not stop within 30 s"
    if errors:
        raise errors[0]


def run_until_crash(spec: StreamSpec, settings: KafkaSettings, root: Path, **options: Any) -> LabelJoiner:
    """Run a joiner in this thread until an injected fault stops it."""
    joiner = LabelJoiner(spec, settings, root, consumer_overrides=FAST_GROUP, **options)
    watchdog = threading.Timer(30, joiner.stop)
    watchdog.start()
    try:
        with pytest.raises(InjectedFault):
            joiner.run()
    finally:
        watchdog.cancel()
    return joiner


def topic_ends(settings: KafkaSettings, topic: str) -> dict[int, int]:
    return {s.partition: s.high_water for s in probe_partitions(settings, topic, {})}


def counters(joiner: LabelJoiner) -> dict[str, int]:
    return joiner.snapshot.counters


class HeldWallClock:
    """The joiner's `time` module (monkeypatch `dagster_project.labels.joiner.time`) with its wall clock held
    at one instant until `release()`; everything else (monotonic, sleep) is the real one. Held, every record
    counts as arrived at that instant (the joiner caps a record's timestamp at its clock) and nothing expires:
    the join window is measured from the test's sends, whatever their pace."""

    def __init__(self) -> None:
        self.held: float | None = time.time()

    def time(self) -> float:
        return time.time() if self.held is None else self.held

    def release(self) -> None:
        self.held = None

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def test_live_accuracy_per_version_exact_in_any_arrival_order(
    kafka_settings: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """v1: 1000 predictions, exactly 873 right; v2: 500, exactly 410 right. Labels shuffled, 150 of
    them before their predictions, 40 predictions never labelled and 15 labels never predicted
    (both evicted after the window), duplicates and malformed records on both topics."""
    from dagster_project.labels import joiner as joiner_module

    window_s = 4.0
    # Every pair must meet within the window, the early labels waiting for their predictions and the repeats
    # arriving while their first copy is remembered: on the real clock that held only if the joiner took
    # the early labels in and the test sent the rest within 4 s. A loaded CI took 9 to 11 s; early labels
    # and repeats then expired, and the exact counts failed. The clock is held until all has arrived.
    clock = HeldWallClock()
    monkeypatch.setattr(joiner_module, "time", clock)
    spec = synthetic_spec(labels={"join_window_s": window_s, "flush_interval_s": 0.3})
    root = tmp_path / "registry"
    rng = random.Random(5)
    rows = known_rows("a", 1000, 873, "v1", rng) + known_rows("b", 500, 410, "v2", rng)
    early = {r[0] for r in rows if r[0] in {f"a{i}" for i in range(100)} | {f"b{i}" for i in range(50)}}
    orphans = [label(f"o{i}", i % 2) for i in range(15)]
    bad_labels = [label("x0", True), label("x1", 2), (b"x2", b"not json")]
    unlabelled = [prediction(f"u{i}", "v1", 1) for i in range(40)]
    bad_predictions = [(b"y0", b"{broken"), (b"y1", orjson.dumps({"id": "y1", "prediction": 1}))]
    ensure_topics(kafka_settings, [spec.predictions_topic, spec.labels_topic], spec.partitions)

    with running_joiner(spec, kafka_settings, root) as joiner:
        wait_for(joiner.assigned.is_set, 20, "the joiner's assignment")
        send(
            kafka_settings, spec.labels_topic, [label(i, y) for i, _, _, y in rows if i in early] + orphans + bad_labels
        )
        wait_for(
            lambda: joiner.snapshot.pending["labels"] == 165 and counters(joiner)["invalid_labels"] == 3, 10, "early"
        )

        predictions = [prediction(i, v, p) for i, v, p, _ in rows] + unlabelled + bad_predictions
        predictions += [prediction(i, v, p) for i, v, p, _ in rows[::300]]  # 5 repeats
        rng.shuffle(predictions)
        late = [label(i, y) for i, _, _, y in rows if i not in early]
        late += [label(i, y) for i, _, _, y in rows[150::300]]  # 5 repeats
        rng.shuffle(late)
        send(kafka_settings, spec.predictions_topic, predictions)
        send(kafka_settings, spec.labels_topic, late)
        wait_for(lambda: counters(joiner)["joined"] == 1500, 30, "1500 joins")
        assert counters(joiner)["evicted_predictions"] + counters(joiner)["evicted_labels"] == 0
        clock.release()  # the unjoined ones expire window_s after the held instant
        wait_for(lambda: joiner.snapshot.pending == {"predictions": 0, "labels": 0}, window_s + 30, "evictions")
        live = joiner.metrics_registry

    assert live_metrics(root, spec.name) == {
        "v1": {"rows": 1000, "accuracy": 0.873},
        "v2": {"rows": 500, "accuracy": 0.82},
    }
    summary = live_summary(root, spec.name)
    assert summary.counters == {
        "joined": 1500,
        "evicted_predictions": 40,
        "evicted_labels": 15,
        "overflow": 0,
        "duplicate_predictions": 5,
        "duplicate_labels": 5,
        "invalid_predictions": 2,
        "invalid_labels": 3,
    }
    records = read_records(root, spec.name)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1)) and records[-1]["window_s"] == window_s

    # The same figures in Prometheus: from the joiner's memory and, for the exporter, from the file.
    exporter = CollectorRegistry()
    exporter.register(LiveMetricsCollector(root, [spec]))
    for registry in (live, exporter):
        assert sample(registry, "streamfit_live_accuracy", stream=spec.name, version="v1") == 0.873
        assert sample(registry, "streamfit_live_accuracy", stream=spec.name, version="v2") == 0.82
        assert sample(registry, "streamfit_labels_joined_total", stream=spec.name, version="v2") == 500
        assert sample(registry, "streamfit_labels_evicted_total", stream=spec.name, side="predictions") == 40
        assert sample(registry, "streamfit_labels_evicted_total", stream=spec.name, side="labels") == 15
        assert sample(registry, "streamfit_labels_pending", stream=spec.name, side="predictions") == 0

    dlq = read_topic(kafka_settings, spec.dlq_topic)  # malformed records, each with its reason
    assert sorted(d["value"] for d in dlq) == sorted(v.decode() for _, v in bad_labels + bad_predictions)
    assert sum("not one of the spec's classes" in d["reason"] for d in dlq) == 2
    assert sum("model_version" in d["reason"] for d in dlq) == 1
    for topic in (spec.predictions_topic, spec.labels_topic):
        assert committed_group_offsets(kafka_settings, labels_group(spec), topic) == topic_ends(kafka_settings, topic)
    print(f"\nlabel join: {len(records)} checkpoints, {summary.counters}")


def test_dead_letters_name_the_label_joiner(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    """The joiner's dead letters go through the shared writer, which says which component refused them."""
    spec = synthetic_spec(labels={"flush_interval_s": 0.2})
    root = tmp_path / "registry"
    with running_joiner(spec, kafka_settings, root) as joiner:
        wait_for(joiner.assigned.is_set, 20, "the joiner's assignment")
        producer = clients.producer(kafka_settings)
        producer.send(spec.labels_topic, key=b"x0", value=b"not json", headers=[("source", b"labeller-3")])
        producer.flush()
        producer.close()
        wait_for(lambda: read_records(root, spec.name), 10, "the first checkpoint")
        (letter,) = read_topic(kafka_settings, spec.dlq_topic)  # acknowledged before the checkpoint's commit
        assert counters(joiner)["invalid_labels"] == 1
    assert letter["component"] == "label-joiner"
    assert letter["topic"] == spec.labels_topic and letter["offset"] == 0 and letter["_key"] == b"x0"
    assert letter["value"] == "not json" and "label is not valid JSON" in letter["reason"]
    letters = RecordColumns()  # the label's own headers, carried on
    for chunk in read_range_columns(kafka_settings, spec.dlq_topic, {letter["_partition"]: (0, 1)}):
        letters.extend(chunk)
    assert letters.headers(0) == [("source", b"labeller-3")]


def test_crashes_at_every_checkpoint_step_neither_lose_nor_double_count(
    kafka_settings: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A checkpoint after (nearly) every poll batch of 100, so the first one, where it crashes, is mid-backlog even
    # when the joiner joins and drains the 1100 records within a few tens of milliseconds.
    spec = synthetic_spec(labels={"join_window_s": 600, "flush_interval_s": 0.001})
    root = tmp_path / "registry"
    rng = random.Random(11)
    rows = known_rows("e", 800, 613, "v3", rng)  # 613 of 800 right
    first, second = rows[:600], rows[600:]
    ensure_topics(kafka_settings, [spec.predictions_topic, spec.labels_topic], spec.partitions)
    # Batch 1: 600 predictions, labels for 400 of them and, early, for 100 predictions of batch 2.
    send(kafka_settings, spec.predictions_topic, [prediction(i, v, p) for i, v, p, _ in first])
    batch_labels = [label(i, y) for i, _, _, y in first[:400] + second[:100]]
    rng.shuffle(batch_labels)
    send(kafka_settings, spec.labels_topic, batch_labels)
    store = LiveStore(root, spec.name)

    # Crash 1: the line is written, the offsets are not committed.
    monkeypatch.setenv("STREAMFIT_FAULT", "labels_after_record")
    run_until_crash(spec, kafka_settings, root, max_poll_records=100)
    (crashed,) = read_records(root, spec.name)
    assert (
        crashed["seq"] == 1 and sum(o for ps in crashed["offsets"].values() for o in ps.values()) < 1100
    )  # mid-backlog
    assert committed_group_offsets(kafka_settings, labels_group(spec), spec.predictions_topic) == {}

    # Crash 2: the next state file is written, its line is not; then a torn line as from kill -9.
    monkeypatch.setenv("STREAMFIT_FAULT", "labels_before_record")
    run_until_crash(spec, kafka_settings, root, max_poll_records=100)
    assert [r["seq"] for r in read_records(root, spec.name)] == [1]
    assert (store.state_dir / "000000000002.json").exists()
    with open(store.path, "ab") as fh:
        fh.write(b'{"seq": 2, "at": "20')

    monkeypatch.delenv("STREAMFIT_FAULT")
    with running_joiner(spec, kafka_settings, root) as joiner:
        wait_for(lambda: counters(joiner)["joined"] == 400 and joiner.snapshot.pending["labels"] == 100, 20, "batch 1")
        # Batch 2: the other 200 predictions, the labels of the remaining 300.
        send(kafka_settings, spec.predictions_topic, [prediction(i, v, p) for i, v, p, _ in second])
        send(kafka_settings, spec.labels_topic, [label(i, y) for i, _, _, y in first[400:] + second[100:]])
        wait_for(lambda: counters(joiner)["joined"] == 800, 20, "batch 2")

    assert live_metrics(root, spec.name) == {"v3": {"rows": 800, "accuracy": 613 / 800}}
    summary = live_summary(root, spec.name)
    assert summary.counters["joined"] == 800 and summary.pending == {"predictions": 0, "labels": 0}
    assert sum(summary.counters[k] for k in ("evicted_predictions", "evicted_labels", "duplicate_predictions")) == 0
    records = read_records(root, spec.name)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert sum(r["versions"].get("v3", {}).get("rows", 0) for r in records) == 800
    for topic in (spec.predictions_topic, spec.labels_topic):
        assert committed_group_offsets(kafka_settings, labels_group(spec), topic) == topic_ends(kafka_settings, topic)


def test_regression_mae_and_rmse(
    kafka_settings: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = synthetic_spec(
        task="regression",
        model={"estimator": "sgd_regressor"},
        label={},
        labels={"join_window_s": 600, "flush_interval_s": 0.2},
    )
    root = tmp_path / "registry"
    rng = random.Random(3)
    errors = [-1.5, -0.25, 0.0, 0.5, 2.0, 0.75]  # dyadic, so every sum is exact in any order
    rows = []
    for i in range(600):
        version = "v1" if i < 400 else "v2"
        truth = rng.randrange(-200, 200) / 4
        rows.append((f"r{i}", version, truth + errors[i % len(errors)] * (1 if version == "v1" else 2), truth))
    ensure_topics(kafka_settings, [spec.predictions_topic, spec.labels_topic], spec.partitions)
    labels_sent = [label(i, y) for i, _, _, y in rows]
    rng.shuffle(labels_sent)
    send(kafka_settings, spec.labels_topic, labels_sent)
    send(kafka_settings, spec.predictions_topic, [prediction(i, v, p) for i, v, p, _ in rows])
    with running_joiner(spec, kafka_settings, root) as joiner:
        wait_for(lambda: counters(joiner)["joined"] == 600, 20, "600 joins")

    def expected(scale: float, indices: range) -> dict[str, float]:
        errs = [errors[i % len(errors)] * scale for i in indices]
        n = len(errs)
        return {"rows": n, "mae": sum(map(abs, errs)) / n, "rmse": (sum(e * e for e in errs) / n) ** 0.5}

    v1, v2 = expected(1, range(400)), expected(2, range(400, 600))
    assert live_metrics(root, spec.name) == {"v1": v1, "v2": v2}
    assert sample(joiner.metrics_registry, "streamfit_live_mae", stream=spec.name, version="v1") == v1["mae"]
    assert sample(joiner.metrics_registry, "streamfit_live_rmse", stream=spec.name, version="v2") == v2["rmse"]

    monkeypatch.setenv("STREAMFIT_HOME", str(root.parent))
    shown = CliRunner().invoke(main, ["labels", "show", spec.name])
    assert shown.exit_code == 0, shown.output
    assert f"{spec.name}: joined 600" in shown.output and f"v1  rows 400  mae {v1['mae']:.6g}" in shown.output


def test_scorer_predictions_join_with_produced_labels(
    kafka_settings: KafkaSettings, registry: FilesystemRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real scorer's prediction records, and `streamfit labels produce --source synthetic`."""
    spec = synthetic_spec(labels={"flush_interval_s": 0.2})
    write_spec(spec, tmp_path, monkeypatch)
    train_version(registry, spec)
    rows = synthetic_rows(400)
    produce_rows(kafka_settings, spec, rows)
    truth = [y for _, _, y in rows]
    predicted = onnx_of(registry, spec, "v1").predict(feature_matrix(spec, [f for _, f, _ in rows])).labels
    correct = sum(int(p) == y for p, y in zip(predicted, truth, strict=True))

    with running_service(spec, kafka_settings, registry), running_joiner(spec, kafka_settings, registry.root) as joiner:
        result = CliRunner().invoke(
            main,
            ["labels", "produce", spec.name, "--source", "synthetic", "--limit", "400", "--shuffle-seed", "1"]
            + ["--bootstrap", kafka_settings.bootstrap],
        )
        assert result.exit_code == 0, result.output
        assert f"produced 400 labels to {spec.labels_topic}" in result.output
        wait_for(lambda: counters(joiner)["joined"] == 400, 30, "400 joins")

    assert live_metrics(registry.root, spec.name) == {"v1": {"rows": 400, "accuracy": correct / 400}}
    print(f"\nscorer + joiner: v1 live accuracy {correct / 400:.4f} on 400 labelled events")


# --- the CLI as a real process, killed -9 -------------------------------------------------------


def write_spec(spec: StreamSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "streams"
    directory.mkdir(exist_ok=True)
    (directory / f"{spec.name}.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    monkeypatch.setenv("STREAMFIT_STREAMS", str(directory))
    return directory


class JoinProcess(StreamfitProcess):
    """`streamfit labels join <stream>` serving its metrics on a free port."""

    def __init__(self, spec: StreamSpec, bootstrap: str) -> None:
        args = ["labels", "join", spec.name, "--metrics-port", "0", "--metrics-addr", "127.0.0.1"]
        super().__init__(args, env=os.environ | {BOOTSTRAP_ENV: bootstrap})
        self.url = self.wait_for("metrics on ").rsplit("metrics on ", 1)[1]


def test_cli_join_killed_and_restarted_keeps_exact_totals(
    kafka_settings: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = synthetic_spec(labels={"join_window_s": 600, "flush_interval_s": 0.2})
    write_spec(spec, tmp_path, monkeypatch)
    home = tmp_path / "home"
    monkeypatch.setenv("STREAMFIT_HOME", str(home))
    rng = random.Random(2)
    rows = known_rows("k", 600, 451, "v1", rng)  # 451 of 600 right
    first, second = rows[:500], rows[500:]
    ensure_topics(kafka_settings, [spec.predictions_topic, spec.labels_topic], spec.partitions)
    send(kafka_settings, spec.predictions_topic, [prediction(i, v, p) for i, v, p, _ in first])
    send(kafka_settings, spec.labels_topic, [label(i, y) for i, _, _, y in first[:300] + second])

    one = two = None
    try:
        one = JoinProcess(spec, kafka_settings.bootstrap)
        one.wait_for("joined 300, pending 200 predictions / 100 labels")
        one.kill()  # SIGKILL: no last checkpoint, no commit, no leave-group; the pending 300 live in the state file

        send(kafka_settings, spec.predictions_topic, [prediction(i, v, p) for i, v, p, _ in second])
        send(kafka_settings, spec.labels_topic, [label(i, y) for i, _, _, y in first[300:]])
        two = JoinProcess(spec, kafka_settings.bootstrap)
        line = two.wait_for("joined 600, pending 0 predictions / 0 labels", timeout_s=40)
        assert line.endswith(f"v1 accuracy {451 / 600:.4f} (600)")
        scraped = urllib.request.urlopen(two.url, timeout=5).read().decode()
        assert f'streamfit_live_accuracy{{stream="{spec.name}",version="v1"}} {451 / 600!r}' in scraped
        assert f'streamfit_labels_joined_total{{stream="{spec.name}",version="v1"}} 600.0' in scraped
        two.proc.send_signal(signal.SIGTERM)
        assert two.proc.wait(timeout=20) == 0
        two.wait_for("label joiner stopped")
    finally:
        for process in (one, two):
            if process is not None:
                process.kill()

    registry_root = home / "registry"
    assert live_metrics(registry_root, spec.name) == {"v1": {"rows": 600, "accuracy": 451 / 600}}
    summary = live_summary(registry_root, spec.name)
    assert summary.counters["joined"] == 600 and summary.counters["duplicate_predictions"] == 0


def test_checkpoints_keep_joined_rows_by_their_events_time(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    """Events 30 s older than their predictions (a backlog scored late) are kept at the events' time:
    what the early cut compares with the oldest waiting event's timestamp. A prediction without
    `latency_ms` is kept at the time its record was written."""
    spec = synthetic_spec(labels={"flush_interval_s": 0.2})
    served_s = time.time()
    late = [
        (f"e{i}".encode(), orjson.dumps({"id": f"e{i}", "prediction": 1, "model_version": "v1"} | stamp))
        for i, stamp in enumerate([{"ts": served_s, "latency_ms": 30_000.0}] * 20 + [{"ts": served_s}] * 5)
    ]
    root = tmp_path / "registry"
    with running_joiner(spec, kafka_settings, root) as joiner:
        send(kafka_settings, spec.predictions_topic, late)
        sent_ms = time.time() * 1000
        send(kafka_settings, spec.labels_topic, [label(f"e{i}", 1) for i in range(25)])
        wait_for(lambda: counters(joiner)["joined"] == 25, 15, "25 joins")

    buckets: dict[float, int] = {}
    for record in read_records(root, spec.name):
        width = record["event_buckets"]["width_ms"]
        for start, totals in record["event_buckets"]["versions"].get("v1", {}).items():
            buckets[float(start)] = buckets.get(float(start), 0) + totals["rows"]
    event_bucket = (served_s * 1000 - 30_000) // width * width
    assert buckets.pop(event_bucket) == 20
    assert sum(buckets.values()) == 5 and all(served_s * 1000 - width < b <= sent_ms for b in buckets)


def test_a_label_stamped_in_the_future_does_not_stop_older_ones_expiring(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """Its record timestamp (a producer clock 50 minutes ahead: Apache Kafka refuses more than an hour
    by default) kept it at the head of the eviction queue, so no label behind it expired by time
    within the hour. It counts from its arrival instead."""
    spec = synthetic_spec(labels={"flush_interval_s": 0.2, "join_window_s": 1.0})
    root = tmp_path / "registry"
    producer = clients.producer(kafka_settings, acks="all")
    ahead_ms = int((time.time() + 3000) * 1000)
    key, value = label("future", 1)
    futures = [producer.send(spec.labels_topic, key=key, value=value, timestamp_ms=ahead_ms)]
    futures += [producer.send(spec.labels_topic, key=k, value=v) for k, v in (label(f"u{i}", 0) for i in range(5))]
    producer.flush(timeout=30)
    producer.close()
    assert all(f.succeeded() for f in futures)
    with running_joiner(spec, kafka_settings, root) as joiner:
        wait_for(lambda: counters(joiner)["evicted_labels"] == 6, 20, "every unjoined label expired")
