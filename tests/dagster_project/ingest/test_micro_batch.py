"""A micro-batch survives Dagster's IO manager (pickle) with every id, row and tail intact."""

from __future__ import annotations

import base64
import copy
import pickle

import numpy as np
import orjson
import pytest

from dagster_project.ingest.micro_batch import MicroBatch
from dagster_project.kafka.record_columns import RecordColumns
from dagster_project.kafka.settings import CONFLUENT, KAFKA_PYTHON


def _batch(ids: list[str], tail: MicroBatch | None = None) -> MicroBatch:
    rows = len(ids)
    return MicroBatch(
        stream="s",
        ranges={0: (10, 10 + rows)},
        X=np.arange(rows * 2, dtype=np.float64).reshape(rows, 2),
        y=np.zeros(rows),
        ids=ids,
        partitions=np.zeros(rows, dtype=np.int32),
        offsets=np.arange(10, 10 + rows, dtype=np.int64),
        tail=tail,
    )


@pytest.mark.parametrize(
    "ids",
    [
        [f"event-{i}" for i in range(1_000)],
        ["a\x00b", "c", ""],  # the separator inside an id: pickled as a list
        ["", "", "x"],
        ["é", "日本", "a,b\nc"],
        [],
    ],
    ids=["plain", "separator-inside", "empty-strings", "unicode", "no-rows"],
)
def test_pickle_round_trip_keeps_ids_and_rows(ids: list[str]) -> None:
    batch = _batch(ids, tail=_batch(["t1", "t2"]))
    restored = pickle.loads(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
    assert restored.rows == len(ids)
    assert restored.ids == ids
    assert restored.tail is not None and restored.tail.ids == ["t1", "t2"] and restored.tail.rows == 2
    np.testing.assert_array_equal(restored.offsets, batch.offsets)
    again = pickle.loads(pickle.dumps(restored))  # a step that re-emits what it read
    assert again.ids == ids and again.rows == len(ids)


def test_ids_changed_after_unpickling_are_the_ones_pickled_next() -> None:
    restored = pickle.loads(pickle.dumps(_batch(["a", "b"])))
    restored.ids = ["c"]
    assert pickle.loads(pickle.dumps(restored)).ids == ["c"]
    assert copy.deepcopy(restored).ids == ["c"]


def test_a_missing_attribute_is_still_an_attribute_error() -> None:
    restored = pickle.loads(pickle.dumps(_batch(["a"])))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        restored.nope  # noqa: B018


@pytest.mark.parametrize("client", [CONFLUENT, KAFKA_PYTHON])
def test_a_read_batch_dead_letters_refused_messages_with_their_keys_and_keeps_the_tail_apart(
    kafka_settings, client: str
) -> None:
    """The training read keeps only partitions, offsets and values of every record; a refused
    message still reaches the DLQ with its own key, partition and offset, and the tail's rows stay
    out of the learned rows (both range readers)."""
    import dataclasses

    from dagster_project.ingest.events import make_event
    from dagster_project.ingest.micro_batch import read_batch
    from dagster_project.kafka import clients
    from dagster_project.kafka.io import ensure_topics
    from tests.conftest import synthetic_spec
    from tests.helpers import read_topic

    settings = dataclasses.replace(kafka_settings, client=client)
    spec = synthetic_spec(partitions=1)
    ensure_topics(settings, [spec.events_topic, spec.dlq_topic], 1)
    good = {f"x{i}": float(i) for i in range(5)}
    values = [make_event(f"e{i}", good, i % 2, 0.0) for i in range(8)]
    # 700 KB of control bytes, not UTF-8: 4.2 MB as JSON text, over the 1 MB a record may have
    broken = b"{not json \xff" + b"\x00" * 700_000
    values[2], values[6] = broken, make_event("e6", good | {"x1": "text"}, 0, 0.0)
    producer = clients.producer(settings)
    for i, value in enumerate(values):
        producer.send(spec.events_topic, key=b"key-%d" % i, value=value, partition=0)
    producer.flush()
    producer.close()

    batch = read_batch(settings, spec, {0: (0, 8)}, learn_ends={0: 5})

    assert batch.ids == ["e0", "e1", "e3", "e4"] and batch.offsets.tolist() == [0, 1, 3, 4]
    assert batch.tail.ids == ["e5", "e7"] and batch.tail.offsets.tolist() == [5, 7]
    (letter,) = read_topic(settings, spec.dlq_topic)  # the tail's refusal is the next batch's to send
    assert (letter["_key"], letter["partition"], letter["offset"]) == (b"key-2", 0, 2)
    assert letter["reason"].startswith("not valid JSON") and letter["value"].startswith("{not json")
    assert (letter["value_truncated"], letter["value_bytes"]) == (True, len(broken))
    assert base64.b64decode(letter["value_base64"]) == broken[: len(base64.b64decode(letter["value_base64"]))]


@pytest.mark.parametrize("client", [CONFLUENT, KAFKA_PYTHON])
def test_a_refused_message_keeps_its_headers_and_a_key_of_any_size_still_fits_the_dlq(kafka_settings, client) -> None:
    """A dead letter without the message's headers lost its tracing ids; one under a 900 KB key was over
    the 1 MB a record may have, so it failed on every retry and the stream halted."""
    import dataclasses

    from dagster_project.ingest.dead_letters import MAX_KEY_BYTES
    from dagster_project.ingest.events import make_event
    from dagster_project.ingest.micro_batch import read_batch
    from dagster_project.kafka import clients
    from dagster_project.kafka.io import ensure_topics, read_range_columns
    from tests.conftest import synthetic_spec

    settings = dataclasses.replace(kafka_settings, client=client)
    spec = synthetic_spec(partitions=1)
    ensure_topics(settings, [spec.events_topic, spec.dlq_topic], 1)
    good = make_event("e0", {f"x{i}": float(i) for i in range(5)}, 1, 0.0)
    headers = [("traceparent", b"00-4bf92f3577b34da6-00f067aa0ba902b7-01"), ("source", b"sensor-7")]
    producer = clients.producer(settings)
    producer.send(spec.events_topic, key=b"k0", value=good, partition=0)
    producer.send(spec.events_topic, key=b"k1", value=b"{cut short", partition=0, headers=headers)
    producer.send(spec.events_topic, key=b"K" * 900_000, value=b'{"id": "whale"', partition=0)
    producer.flush()
    producer.close()

    batch = read_batch(settings, spec, {0: (0, 3)})

    assert batch.ids == ["e0"]
    dlq = dataclasses.replace(settings, client=KAFKA_PYTHON)  # its records are the client's, headers and all
    letters = RecordColumns()
    for chunk in read_range_columns(dlq, spec.dlq_topic, {0: (0, 2)}):
        letters.extend(chunk)
    assert letters.headers(0) == headers and letters.record(0).key == b"k1"
    assert orjson.loads(letters.values[0])["offset"] == 1
    whale = orjson.loads(letters.values[1])
    assert (whale["offset"], whale["key_truncated"], whale["key_bytes"]) == (2, True, 900_000)
    assert letters.record(1).key == b"K" * MAX_KEY_BYTES and letters.headers(1) is None


@pytest.mark.parametrize("client", [CONFLUENT, KAFKA_PYTHON])
def test_a_stream_with_derived_features_reads_its_batch_on_either_client(kafka_settings, client) -> None:
    """Derived features check each event against its record's Kafka timestamp (event_time.max_ahead):
    on kafka-python, whose records are kept whole since dead letters carry their headers, reading that
    timestamp raised TypeError and every batch of such a stream failed."""
    import dataclasses

    from dagster_project.features import FeatureState
    from dagster_project.ingest.micro_batch import read_batch
    from dagster_project.kafka.io import ensure_topics
    from tests.dagster_project.features.support import produce_sensors, sensors_spec

    settings = dataclasses.replace(kafka_settings, client=client)
    spec = sensors_spec()
    ensure_topics(settings, [spec.events_topic, spec.dlq_topic], spec.partitions)
    produce_sensors(settings, spec, rows=300)
    ends = {p: (0, n) for p, n in _high_waters(settings, spec.events_topic).items()}

    batch = read_batch(settings, spec, ends, state=FeatureState(spec))

    assert batch.rows + batch.dlq == 300 and batch.rows > 250
    assert batch.X.shape[1] == len(spec.input_names)


def _high_waters(settings, topic: str) -> dict[int, int]:
    from dagster_project.kafka.io import probe_partitions

    return {s.partition: s.high_water for s in probe_partitions(settings, topic, {})}
