"""Dead letters: the record format, and that a send the broker does not acknowledge fails loudly."""

from __future__ import annotations

import base64
import time

import numpy as np
import orjson
import pytest

from dagster_project.ingest.dead_letters import (
    MAX_HEADERS_BYTES,
    MAX_KEY_BYTES,
    MAX_RECORD_BYTES,
    MAX_VALUE_BYTES,
    DeadLetter,
    DeadLetterError,
    DeadLetterWriter,
    bounded_headers,
    bounded_key,
    encode,
    write_dead_letters,
)
from dagster_project.ingest.events import EventParser, InvalidEvent
from dagster_project.ingest.micro_batch import MicroBatch
from dagster_project.kafka.brokers.tansu import EmbeddedBroker
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.quality.policy import dead_letter_rows
from dagster_project.spec import StreamSpec
from tests.helpers import read_topic

SPEC = StreamSpec(name="events", features=[{"name": "f"}, {"name": "i", "type": "int"}], label={"classes": [0, 1]})


@pytest.mark.parametrize(
    "raw",
    [
        b'{"id": "e1", "features": {"f": "oops"}}',
        None,
        b"\xff\xfe not utf-8 \x00",
        "caf\u00e9 \u2603".encode(),
    ],
)
def test_dead_letter_round_trip(raw: bytes | None) -> None:
    record = orjson.loads(encode(DeadLetter("feature 'f' must be a number", "s.events", 1, 1234, b"k", raw), "trainer"))
    assert record == {
        "reason": "feature 'f' must be a number",
        "topic": "s.events",
        "partition": 1,
        "offset": 1234,
        "component": "trainer",
        "value": None if raw is None else raw.decode("utf-8", errors="replace"),
        **({"value_base64": base64.b64encode(raw).decode()} if raw and raw.startswith(b"\xff") else {}),
    }


@pytest.mark.parametrize("raw", [b"\x00" * 700_000, b"\xff" * 2_000_000, b'{"id": "' + b"x" * 3_000_000 + b'"}'])
def test_a_refused_message_of_any_size_fits_the_dlq_and_keeps_its_start(raw: bytes) -> None:
    """A 700 KB message of control bytes is 4.2 MB as JSON text: over the producer's and the broker's
    1 MB defaults, so its dead letter could never be written and the batch failed on every retry."""
    encoded = encode(DeadLetter("not valid JSON", "s.events", 0, 9, b"k", raw), "trainer")
    assert len(encoded) <= MAX_RECORD_BYTES
    record = orjson.loads(encoded)
    assert record["value_truncated"] is True and record["value_bytes"] == len(raw)
    kept = base64.b64decode(record["value_base64"]) if "value_base64" in record else record["value"].encode()
    assert kept == raw[:MAX_VALUE_BYTES]


def test_a_huge_key_is_cut_and_huge_headers_dropped_and_the_record_says_so() -> None:
    key, headers = b"K" * 900_000, [("trace", b"t" * MAX_HEADERS_BYTES)]
    record = orjson.loads(encode(DeadLetter("not valid JSON", "s.events", 0, 9, key, b"{", headers), "scorer"))
    assert (record["key_truncated"], record["key_bytes"]) == (True, 900_000)
    assert (record["headers_dropped"], record["headers_bytes"]) == (1, MAX_HEADERS_BYTES + 5)
    assert bounded_key(key) == key[:MAX_KEY_BYTES] and bounded_headers(headers) is None
    small = [("trace", b"t1"), ("null", None)]  # a null header value: kafka-python's producer takes none
    assert bounded_headers(small) == [("trace", b"t1"), ("null", b"")] and bounded_key(b"k") == b"k"
    plain = orjson.loads(encode(DeadLetter("not valid JSON", "s.events", 0, 9, b"k", b"{", small), "scorer"))
    assert not {"key_truncated", "headers_dropped"} & plain.keys()


def test_dead_letter_of_a_real_failure_names_the_feature() -> None:
    parser = EventParser(SPEC)
    raw = orjson.dumps({"id": "e1", "ts": 1.0, "features": {"f": 1.0, "i": 2.5}, "label": 1})
    with pytest.raises(InvalidEvent) as info:
        parser.parse(raw)
    record = orjson.loads(encode(DeadLetter(str(info.value), "events.events", 0, 7, None, raw), "scorer"))
    assert "'i'" in record["reason"]
    assert orjson.loads(record["value"]) == orjson.loads(raw)


def test_written_dead_letters_are_on_the_topic_with_their_component(kafka_settings: KafkaSettings) -> None:
    topic = f"dl{time.monotonic_ns()}.dlq"
    letters = [DeadLetter(f"reason {i}", "s.events", 0, i, str(i).encode(), b"{}") for i in range(5)]
    assert write_dead_letters(kafka_settings, topic, "trainer", letters) == 5
    records = read_topic(kafka_settings, topic)
    assert sorted(r["offset"] for r in records) == [0, 1, 2, 3, 4]
    assert {r["component"] for r in records} == {"trainer"}


def _rejected_rows(rows: int) -> MicroBatch:
    return MicroBatch(
        stream=SPEC.name,
        ranges={0: (0, rows)},
        X=np.ones((rows, 2)),
        y=np.zeros(rows),
        ids=[f"e{i}" for i in range(rows)],
        partitions=np.zeros(rows, dtype=np.int32),
        offsets=np.arange(rows, dtype=np.int64),
    )


@pytest.mark.timeout(120)
def test_split_off_rows_fail_the_batch_when_the_broker_stops_mid_send(tmp_path) -> None:
    """The quality policy's row split used to send without checking: a broker error lost the rows."""
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as broker:
        settings = KafkaSettings.from_env(broker.bootstrap)
        dead_letter_rows(settings, SPEC, _rejected_rows(3), ["x"] * 3)  # works while the broker is up
        broker.stop()
        started = time.monotonic()
        with pytest.raises(DeadLetterError, match="dead letters"):
            write_dead_letters(
                settings,
                SPEC.dlq_topic,
                "trainer",
                [DeadLetter("r", SPEC.events_topic, 0, i, None, b"{}") for i in range(3)],
                timeout_s=5,
            )
        with pytest.raises(DeadLetterError):
            dead_letter_rows(settings, SPEC, _rejected_rows(3), ["x"] * 3, timeout_s=5)
        # Bounded by the timeouts (kafka-python's own bootstrap wait was 30 s per producer): the run fails and
        # Dagster retries it.
        assert time.monotonic() - started < 30


def test_a_reason_quoting_a_huge_field_name_is_cut_and_the_record_fits() -> None:
    """An 800 KB event whose one feature name is 400,000 U+0085: its 'unknown feature' reason alone
    was 1.6 MB, so its dead letter could never be written."""
    name = "\u0085" * 400_000
    raw = orjson.dumps({"id": "e1", "features": {"f": 1.0, "i": 2, name: 1}, "label": 1})
    with pytest.raises(InvalidEvent) as refused:
        EventParser(SPEC).parse(raw)
    assert len(str(refused.value)) < 1000  # the name is quoted short
    encoded = encode(DeadLetter("x" * 2_000_000, "s.events", 0, 1, None, raw), "trainer")
    assert len(encoded) <= MAX_RECORD_BYTES
    assert orjson.loads(encoded)["reason"].endswith("... (2000000 characters)")


class _NoMetadataProducer:
    """kafka-python's producer for a topic the broker gives no metadata for: each send blocks
    `max_block_ms` (30 s by default), then raises."""

    def __init__(self) -> None:
        self.sends = 0

    def send(self, *args, **kwargs):
        from kafka.errors import KafkaTimeoutError

        self.sends += 1
        raise KafkaTimeoutError("Failed to update metadata after 30.0 secs.")


def test_after_a_send_fails_the_rest_are_not_sent_and_the_error_names_the_missing_topic() -> None:
    """A deleted dead-letter topic on a broker that creates none: 10 letters and 4 attempts took a run
    about 20 minutes, each send blocking 30 s, and the error said to wait for the broker."""
    producer = _NoMetadataProducer()
    writer = DeadLetterWriter(producer, "events.dlq", "trainer")
    for i in range(10):
        writer.send(DeadLetter("r", "events.events", 0, i, None, b"{}"))

    with pytest.raises(DeadLetterError) as failed:
        writer.check()

    assert producer.sends == 1
    message = str(failed.value)
    assert message.startswith("10 of 10 dead letters were not acknowledged by events.dlq (9 not sent after the first")
    assert "the topic does not exist and the broker does not create topics" in message and "create it" in message


@pytest.mark.apache_kafka
def test_a_deleted_dead_letter_topic_is_created_again_on_a_broker_that_creates_none(tmp_path) -> None:
    """As the scorer does at its start, a training run creates its dead-letter topic when missing."""
    from dagster_project.kafka.brokers.apache import ApacheKafkaCluster, ensure_kafka_jars
    from dagster_project.kafka.io import topic_partitions

    ensure_kafka_jars()
    with ApacheKafkaCluster(1, log_dir=tmp_path, broker_config={"auto.create.topics.enable": "false"}) as cluster:
        settings = KafkaSettings.from_env(cluster.bootstrap)
        letters = [DeadLetter(f"reason {i}", SPEC.events_topic, 0, i, None, b"{}") for i in range(3)]
        started = time.monotonic()
        with pytest.raises(DeadLetterError, match="does not exist and the broker does not create topics"):
            write_dead_letters(settings, SPEC.dlq_topic, "trainer", letters, timeout_s=3)
        assert time.monotonic() - started < 20  # one blocked send, not one per letter

        assert write_dead_letters(settings, SPEC.dlq_topic, "trainer", letters, partitions=2) == 3
        assert topic_partitions(settings, SPEC.dlq_topic) == [0, 1]
        assert sorted(r["offset"] for r in read_topic(settings, SPEC.dlq_topic)) == [0, 1, 2]
