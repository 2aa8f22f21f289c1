"""Every Kafka client Streamfit makes, built from `KafkaSettings`.

One function per kind of client, so a deployment changes brokers or security through settings,
never code. With TLS or SASL configured each factory first runs the security preflight, which
fails in seconds with the setting to fix where a client alone would retry for 30 s. Broker-specific
tuning (fetch wait, group timeouts) comes from `settings.py` and nowhere else.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from typing import Any

from dagster_project.kafka.preflight import check_security
from dagster_project.kafka.settings import (
    CLIENT_ENV,
    CONFLUENT,
    FETCH_MAX_WAIT_MS,
    GROUP_HEARTBEAT_INTERVAL_MS,
    GROUP_METADATA_MAX_AGE_MS,
    GROUP_SESSION_TIMEOUT_MS,
    KAFKA_PYTHON,
    READER_FETCH_MAX_WAIT_MS,
    BrokerConfigError,
    KafkaSettings,
)


def range_reader(settings: KafkaSettings, **overrides: Any):
    """A consumer with no group: it reads exact offsets with assign+seek and never joins.

    read_committed, as librdkafka's readers are by default: records of an aborted transaction are
    never learned, whichever client reads the range (Tansu leaves them visible either way).
    """
    from kafka import KafkaConsumer

    check_security(settings)
    kwargs = settings.common() | {
        "group_id": None,
        "enable_auto_commit": False,
        "auto_offset_reset": "none",
        "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        "isolation_level": "read_committed",
    }
    return KafkaConsumer(**(kwargs | overrides))


def range_reader_client(settings: KafkaSettings) -> str:
    """The client that reads offset ranges: confluent-kafka if chosen or (auto) installed."""
    if settings.client == KAFKA_PYTHON:
        return KAFKA_PYTHON
    if importlib.util.find_spec("confluent_kafka") is not None:
        return CONFLUENT
    if settings.client == CONFLUENT:
        raise BrokerConfigError(
            f"{CLIENT_ENV}={CONFLUENT} but confluent-kafka is not installed: "
            f"pip install 'streamfit[fast]', or set {CLIENT_ENV}={KAFKA_PYTHON}"
        )
    return KAFKA_PYTHON


# A range reader's prefetch queue, per row of the range (see `range_prefetch`), and its bounds.
PREFETCH_BYTES_PER_ROW = 64
PREFETCH_MIN_KBYTES = 1024
PREFETCH_MAX_KBYTES = 65536  # librdkafka's own default
PREFETCH_BACKOFF_MS = 5


def range_prefetch(rows: int) -> dict[str, Any]:
    """librdkafka settings that keep a range reader's prefetch close to the range it reads.

    librdkafka keeps fetching ahead until 64 MB are queued, so a read of 10 k rows inside a larger
    topic fetched and decoded the topic's rest as well (CPU taken from the batch: reads of 1 k and
    10 k rows in a 101 k-row topic took 50-100 ms instead of 10-20). The queue is sized from the
    range's row count instead; a queue too small for the range only costs a refill round trip
    (the backoff, 5 ms, instead of librdkafka's 1 s, which would stall every read).
    """
    kbytes = rows * PREFETCH_BYTES_PER_ROW // 1024
    return {
        "queued.max.messages.kbytes": min(PREFETCH_MAX_KBYTES, max(PREFETCH_MIN_KBYTES, kbytes)),
        "fetch.queue.backoff.ms": PREFETCH_BACKOFF_MS,
    }


def confluent_range_reader(settings: KafkaSettings, rows: int | None = None, **overrides: Any):
    """A confluent-kafka consumer that reads exact offsets with assign() and never joins or commits.

    librdkafka wants a group.id even for assign(); nothing is ever committed under it. ``rows``
    (the range's size, when known) bounds its prefetch (`range_prefetch`).
    """
    from confluent_kafka import Consumer

    check_security(settings)
    config = settings.librdkafka_config() | {
        "group.id": "streamfit-range-reader",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "error",  # a lost offset is an error, never a silent jump
        "enable.partition.eof": False,
        "fetch.wait.max.ms": READER_FETCH_MAX_WAIT_MS,
    }
    if rows is not None:
        config |= range_prefetch(rows)
    return Consumer(config | overrides)


def confluent_producer_config(settings: KafkaSettings, acks: int | str = 1) -> dict[str, Any]:
    """librdkafka settings of a hot-path producer that flushes once per poll batch (batching happens there)."""
    return settings.librdkafka_config() | {
        "acks": str(acks),
        "linger.ms": 1,
        "partitioner": "murmur2_random",  # kafka-python's (and Java's) key -> partition mapping
        "message.timeout.ms": 30_000,
    }


def fast_producer(settings: KafkaSettings, acks: int | str = 1):
    """A producer for the hot path (the scorer's predictions): confluent-kafka's when range reads
    use it, else kafka-python's. Same `send` / `flush` / `close` surface either way."""
    if range_reader_client(settings) != CONFLUENT:
        return producer(settings, acks=acks)
    from dagster_project.kafka.fast_producer import ConfluentProducer

    check_security(settings)
    return ConfluentProducer(confluent_producer_config(settings, acks))


def group_consumer(settings: KafkaSettings, group_id: str, **overrides: Any):
    """A consumer in `group_id`, with group timeouts short enough for quick joins."""
    from kafka import KafkaConsumer

    check_security(settings)
    kwargs = settings.common() | {
        "group_id": group_id,
        "enable_auto_commit": False,
        "fetch_max_wait_ms": READER_FETCH_MAX_WAIT_MS,
        "session_timeout_ms": GROUP_SESSION_TIMEOUT_MS,
        "heartbeat_interval_ms": GROUP_HEARTBEAT_INTERVAL_MS,
        "metadata_max_age_ms": GROUP_METADATA_MAX_AGE_MS,
    }
    return KafkaConsumer(**(kwargs | overrides))


def confluent_group_consumer(settings: KafkaSettings, group_id: str, **overrides: Any):
    """A confluent-kafka consumer in `group_id`: cooperative rebalancing, no auto-commit, the same group
    timeouts as `group_consumer`. The caller subscribes, commits and closes it."""
    from confluent_kafka import Consumer

    check_security(settings)
    config = settings.librdkafka_config() | {
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        "partition.assignment.strategy": "cooperative-sticky",
        "fetch.wait.max.ms": READER_FETCH_MAX_WAIT_MS,
        "session.timeout.ms": GROUP_SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": GROUP_HEARTBEAT_INTERVAL_MS,
        "topic.metadata.refresh.interval.ms": GROUP_METADATA_MAX_AGE_MS,
    }
    return Consumer(config | overrides)


def subscribe(
    consumer, topics: list[str], listener=None, watch: Callable[[Callable[[], Any]], Any] | None = None
) -> None:
    """`consumer.subscribe(topics, listener)`, with the topics' metadata fetched first.

    kafka-python's group leader assigns partitions from the metadata it holds at that moment. Subscribing
    before the topics' metadata arrived (or while an older metadata answer without them lands) can leave
    the whole group with an empty assignment that nothing corrects, seen on a 3-node cluster: "No partition
    metadata for topic ..." and then no records, ever. Fetching the metadata first closes that window.

    kafka-python 3.0 waits for that metadata answer without a deadline (partitions_for_topic ->
    _fetch_all_topic_metadata -> net.run(wait_for, future, None)): `watch(call)`, when given, runs each wait
    (the label joiner passes its poll watch, which unblocks a wait stuck inside the client).
    """
    from kafka.errors import KafkaError

    for topic in topics:
        try:
            # waits for a metadata answer that lists it
            (watch or _call)(lambda topic=topic: consumer.partitions_for_topic(topic))
        except KafkaError:  # best effort: the group still forms, as it would without this
            pass
    if listener is None:
        consumer.subscribe(topics)
    else:
        consumer.subscribe(topics, listener=listener)


def _call(call: Callable[[], Any]) -> Any:
    """`call()`, unwatched: `subscribe`'s default, as before it could be watched."""
    return call()


def poll(consumer, timeout_ms: int, max_records: int, on_error=None) -> dict:
    """`consumer.poll(...)`, or {} when it fails with a retriable error (the broker is away).

    kafka-python retries a lost coordinator or leader internally, but a poll can still raise the connection
    error itself (seen while every node of a cluster was down). A long-running loop must ride that out,
    not die of it: it waits a second and polls again. Non-retriable errors (authorization) still raise.
    """
    from kafka.errors import KafkaError

    try:
        return consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
    except KafkaError as exc:
        if not exc.retriable:
            raise
        if on_error is not None:
            on_error(exc)
        time.sleep(1.0)
        return {}


def producer(settings: KafkaSettings, **overrides: Any):
    """A producer tuned for throughput, with `settings.acks` ("all" unless STREAMFIT_KAFKA_ACKS says otherwise).

    With acks="all" kafka-python's idempotent producer is on: a retried batch is never written twice.
    """
    from kafka import KafkaProducer

    check_security(settings)
    kwargs = settings.common() | {"acks": settings.producer_acks(), "linger_ms": 5, "batch_size": 256 * 1024}
    return KafkaProducer(**(kwargs | overrides))


# The broker aborts a transaction left open this long (a crashed scorer that is not restarted under its
# replica id): until then read_committed readers of its partitions wait. A poll batch takes well under it.
TRANSACTION_TIMEOUT_MS = 30_000


def transactional_producer(settings: KafkaSettings, transactional_id: str, **overrides: Any):
    """A kafka-python transactional producer (idempotent, acks=all); call `init_transactions()` before use.

    `transactional_id` must be unique among live producers: a second producer with the same id fences
    the first (its next transactional call raises ProducerFencedError).
    """
    from kafka import KafkaProducer

    check_security(settings)
    kwargs = settings.common() | {
        "transactional_id": transactional_id,
        "transaction_timeout_ms": TRANSACTION_TIMEOUT_MS,
        "linger_ms": 1,  # one flush per poll batch: batching happens there
        "batch_size": 256 * 1024,
        # The first AddPartitionsToTxn of a transaction is refused (CONCURRENT_TRANSACTIONS) while the brokers
        # still write the previous one's commit markers; kafka-python's sender then sleeps retry_backoff_ms
        # (default 100 ms) before asking again, which on a 3-node cluster was most of each transaction.
        "retry_backoff_ms": 20,
    }
    return KafkaProducer(**(kwargs | overrides))


def confluent_transactional_producer(settings: KafkaSettings, transactional_id: str, step_timeout_s: float):
    """`transactional_producer`'s twin on confluent-kafka, for the confluent scorer client; call
    `init_transactions()` before use. Each transactional call is bounded by `step_timeout_s`."""
    from dagster_project.kafka.fast_transactions import ConfluentTransactionalProducer

    check_security(settings)
    config = confluent_producer_config(settings, acks="all") | {
        "transactional.id": transactional_id,
        "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
    }
    return ConfluentTransactionalProducer(config, step_timeout_s)


def admin(settings: KafkaSettings, **overrides: Any):
    from kafka import KafkaAdminClient

    check_security(settings)
    return KafkaAdminClient(**(settings.common() | overrides))
