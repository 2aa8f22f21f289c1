"""Dead letters of a batch retried after it sent them: one record per refused offset, each replayable.

On a real broker and a real Dagster instance: a run dead-letters malformed messages and splits off
rows (`quality.allow_partial`), then fails before its version is registered; re-executing it reads
the same range and refuses the same messages.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import orjson
import pytest
import yaml
from click.testing import CliRunner

from assets.training import batch_run_config
from dagster_project.cli import main
from dagster_project.ingest.events import EventParser
from dagster_project.ingest.sent_letters import planned_dlq_from
from dagster_project.kafka import clients
from dagster_project.kafka.io import ensure_topics
from dagster_project.spec import StreamSpec
from tests.conftest import synthetic_spec
from tests.helpers import high_waters, produce_synthetic, read_topic

BATCH = {"rows": 200, "max_rows": 1000, "max_wait_s": 3600, "step_retries": 0}


def _spec(workers: int = 1) -> StreamSpec:
    """x0 must lie in [-10, 10], a row breaking it is split off and the rest trains; one partition, or
    two read by two partition-group steps (the split is then made by the merge step)."""
    scale_out = {"model": {"scale_out": {"workers": 2, "min_rows_per_worker": 50}}} if workers > 1 else {}
    return synthetic_spec(
        partitions=workers,
        features=[{"name": "x0", "min": -10, "max": 10}] + [{"name": f"x{i}"} for i in range(1, 5)],
        quality={"allow_partial": True},
        batch=BATCH,
        **scale_out,
    )


def _out_of_range(i: int) -> bytes:
    return orjson.dumps({"id": f"far-{i}", "features": {"x0": 50.0, "x1": 0, "x2": 0, "x3": 0, "x4": 0}, "label": 1})


def _send_refused(settings, spec: StreamSpec, timestamp_ms: int | None = None) -> tuple[list[bytes], list[bytes]]:
    """Three rows the quality step splits off (with a header each) and two malformed messages, stamped
    `timestamp_ms` (None: the producer's clock)."""
    ensure_topics(settings, [spec.events_topic, spec.dlq_topic], spec.partitions)
    split, malformed = [_out_of_range(i) for i in range(3)], [b"{not json %d" % i for i in range(2)]
    producer = clients.producer(settings)
    for i, value in enumerate(split):
        headers = [("trace", b"t%d" % i)]
        producer.send(spec.events_topic, key=b"far-%d" % i, value=value, headers=headers, timestamp_ms=timestamp_ms)
    for value in malformed:
        producer.send(spec.events_topic, key=b"m", value=value, timestamp_ms=timestamp_ms)
    producer.flush()
    producer.close()
    return split, malformed


def _job(spec: StreamSpec, registry, bootstrap: str) -> dg.ReconstructableJob:
    return dg.build_reconstructable_job(
        "tests.helpers",
        "reconstructable_training_job",
        reconstructable_kwargs={
            "name": spec.name,
            "root": str(registry.root),
            "bootstrap": bootstrap,
            "batch": orjson.dumps(BATCH).decode(),
            "spec": orjson.dumps(spec.model_dump(mode="json")).decode(),
        },
    )


@contextlib.contextmanager
def _forkserver_of_its_own() -> Iterator[None]:
    """The multiprocess executor forks steps from one forkserver per process, which keeps the
    environment it started with: one started before the fault was set would not inject it, and one
    started with it injected it into a later test's runs (the fan-out tests failed so in the suite)."""
    from multiprocessing import forkserver

    forkserver._forkserver._stop()  # a private method CPython keeps for its own tests
    try:
        yield
    finally:
        forkserver._forkserver._stop()


@pytest.mark.parametrize("workers", [1, 2], ids=["one_step", "partition_groups"])
def test_a_re_executed_run_dead_letters_each_split_off_row_and_malformed_message_once(
    workers, kafka_bootstrap, kafka_settings, registry, instance, monkeypatch
):
    """The run fails after its dead letters; re-executing all its steps read the batch again and sent
    the split-off rows' letters a second time (the malformed messages' were already skipped)."""
    spec = _spec(workers)
    job = _job(spec, registry, kafka_bootstrap)
    produce_synthetic(kafka_settings, spec, 200)
    _send_refused(kafka_settings, spec)
    ranges = {p: (0, end) for p, end in high_waters(kafka_settings, spec.events_topic).items()}
    config = batch_run_config(spec, ranges).to_config_dict()

    # The first attempt fails after its dead letters were sent (a forkserver keeps the environment of
    # the first run's steps, so the fault names the attempt rather than being unset for the retry).
    with _forkserver_of_its_own():
        monkeypatch.setenv("STREAMFIT_FAULT", "after_train@0")
        with dg.execute_job(job, instance, run_config=config, raise_on_error=False) as failed:
            assert not failed.success and registry.versions(spec.name) == []
        assert len(read_topic(kafka_settings, spec.dlq_topic)) == 5
        # Its retry re-executes every step (the UI's "Re-execute all", or a daemon retry with ALL_STEPS).
        options = dg.ReexecutionOptions(parent_run_id=failed.run_id)
        retry = {"dagster/retry_number": "1"}
        with dg.execute_job(job, instance, reexecution_options=options, tags=retry, raise_on_error=False) as result:
            assert result.success

    letters = read_topic(kafka_settings, spec.dlq_topic)
    sources = [(letter["partition"], letter["offset"]) for letter in letters]
    assert len(letters) == 5 and len(set(sources)) == 5, f"one letter per source offset: {sorted(sources)}"
    assert sum(letter["reason"].startswith("data quality:") for letter in letters) == 3
    (version,) = registry.versions(spec.name)
    assert version.meta["rows"]["dlq"] == 5 and version.meta["rows"]["valid"] == 200


AHEAD_MS = 55 * 60 * 1000  # a producer's clock this far ahead (Apache Kafka refuses a record over an hour ahead)
LATER_S = 2 * 3600  # the failed run is re-executed this much later
CLOCK_ENV = "STREAMFIT_TEST_CLOCK_AHEAD_S"
# kafka-python stamps a record with the `time.time` it bound at import: imported first, the records a
# step sends keep the broker's time (which refuses a record over an hour ahead), only the step's moves.
SITECUSTOMIZE = f"""import os, time

import kafka.record.default_records

_ahead = float(os.environ.get({CLOCK_ENV!r}, "0"))
if _ahead:
    _time = time.time
    time.time = lambda: _time() + _ahead
"""


@contextlib.contextmanager
def _later(monkeypatch, directory: Path, seconds: float) -> Iterator[None]:
    """The runs started inside see a clock `seconds` ahead: steps run in this process (one step) by
    `time.time` moved here, steps forked by the multiprocess executor (partition groups) from a
    forkserver of their own started with a sitecustomize that moves it."""
    directory.mkdir(exist_ok=True)
    (directory / "sitecustomize.py").write_text(SITECUSTOMIZE)
    now = time.time
    with monkeypatch.context() as env, _forkserver_of_its_own():
        env.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH")])))
        env.setenv(CLOCK_ENV, str(seconds))
        env.setattr(time, "time", lambda: now() + seconds)
        yield


@pytest.mark.parametrize("workers", [1, 2], ids=["one_step", "partition_groups"])
def test_a_run_re_executed_hours_later_finds_its_letters_of_messages_stamped_by_a_fast_clock(
    workers, kafka_bootstrap, kafka_settings, registry, instance, monkeypatch, tmp_path
):
    """The refused messages' producer runs 55 minutes fast, and the failed run is re-executed 2 h
    later. The DLQ was read from the refused messages' timestamps less 15 minutes: 40 minutes after
    the letters the first attempt sent, so the re-execution found none and sent all five again. It
    reads from the DLQ's ends the plan recorded instead (on Apache Kafka; Tansu, which answers a
    look-up by time with the log's start, read the whole DLQ and never missed them)."""
    spec = _spec(workers)
    job = _job(spec, registry, kafka_bootstrap)
    produce_synthetic(kafka_settings, spec, 200)
    _send_refused(kafka_settings, spec, timestamp_ms=int(time.time() * 1000) + AHEAD_MS)
    ranges = {p: (0, end) for p, end in high_waters(kafka_settings, spec.events_topic).items()}
    config = batch_run_config(spec, ranges, planned_dlq_from(kafka_settings, spec)).to_config_dict()

    with _forkserver_of_its_own():
        monkeypatch.setenv("STREAMFIT_FAULT", "after_train@0")
        with dg.execute_job(job, instance, run_config=config, raise_on_error=False) as failed:
            assert not failed.success and registry.versions(spec.name) == []
    assert len(read_topic(kafka_settings, spec.dlq_topic)) == 5
    with _later(monkeypatch, tmp_path / "later", LATER_S):
        options = dg.ReexecutionOptions(parent_run_id=failed.run_id)
        retry = {"dagster/retry_number": "1"}
        with dg.execute_job(job, instance, reexecution_options=options, tags=retry, raise_on_error=False) as result:
            assert result.success

    letters = read_topic(kafka_settings, spec.dlq_topic)
    sources = sorted((letter["partition"], letter["offset"]) for letter in letters)
    assert len(letters) == 5 and len(set(sources)) == 5, f"one letter per source offset: {sources}"
    (version,) = registry.versions(spec.name)
    assert version.meta["rows"]["dlq"] == 5 and version.meta["rows"]["valid"] == 200


def test_a_split_off_row_s_dead_letter_carries_its_original_message(
    kafka_bootstrap, kafka_settings, registry, instance, tmp_path, monkeypatch
):
    """Split-off rows were dead-lettered as the parsed row (category codes, no headers): not the message
    that was sent, so not replayable as it is, unlike every other dead letter."""
    spec = _spec()
    produce_synthetic(kafka_settings, spec, 200)
    split, _ = _send_refused(kafka_settings, spec)
    ranges = {0: (0, high_waters(kafka_settings, spec.events_topic)[0])}
    job = _job(spec, registry, kafka_bootstrap)
    config = batch_run_config(spec, ranges).to_config_dict()
    with dg.execute_job(job, instance, run_config=config) as result:
        assert result.success

    letters = [letter for letter in read_topic(kafka_settings, spec.dlq_topic) if letter["offset"] < 203]
    assert [letter["offset"] for letter in letters] == [200, 201, 202]
    for i, letter in enumerate(letters):
        assert letter["reason"].startswith("data quality:") and letter["component"] == "trainer"
        assert letter["value"].encode() == split[i], "the message as it was sent"
        assert letter["_key"] == b"far-%d" % i
    parsed = EventParser(spec).parse_many([letter["value"].encode() for letter in letters])
    assert not parsed.failures and parsed.ids == ["far-0", "far-1", "far-2"]  # replayable: it parses again
    headers = _dlq_headers(kafka_settings, spec)
    assert [headers[o] for o in (200, 201, 202)] == [[("trace", b"t0")], [("trace", b"t1")], [("trace", b"t2")]]
    (tmp_path / "streams").mkdir()
    (tmp_path / "streams" / f"{spec.name}.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    monkeypatch.setenv("STREAMFIT_STREAMS", str(tmp_path / "streams"))
    shown = CliRunner().invoke(main, ["dlq", "show", spec.name, "--json", "--bootstrap", kafka_bootstrap])
    assert shown.exit_code == 0, shown.output
    assert [d["value"] for d in orjson.loads(shown.output)["letters"] if d["offset"] < 203] == [
        v.decode() for v in split
    ]


def _dlq_headers(settings, spec: StreamSpec) -> dict[int, list[tuple[str, bytes]]]:
    """Each dead letter's Kafka headers, by the offset of the message it is about."""
    consumer = clients.range_reader(settings)
    try:
        from kafka import TopicPartition

        tp = TopicPartition(spec.dlq_topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        out = {}
        for _ in range(20):
            for record in consumer.poll(timeout_ms=500).get(tp, []):
                out[orjson.loads(record.value)["offset"]] = [(name, bytes(value)) for name, value in record.headers]
            if len(out) >= 5:
                break
        return out
    finally:
        consumer.close()
