"""Kafka operations Streamfit needs, on top of the clients `kafka_config` makes.

Probing never consumes and never joins a group: a tiny fetch at the next unlearned offset gives
the partition's true end (the high-water mark in the fetch response; ListOffsets LATEST is wrong
on some brokers) and the oldest waiting record's timestamp.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple, TypeVar

from dagster_project.kafka import clients
from dagster_project.kafka.offsets import PartitionState, Ranges, TopicIdentity, identity_change
from dagster_project.kafka.record_columns import RecordColumns
from dagster_project.kafka.records import RawRecord
from dagster_project.kafka.settings import (
    BOOTSTRAP_ENV,
    CONFLUENT,
    READER_FETCH_MAX_WAIT_MS,
    BrokerConfigError,
    BrokerSecurityError,
    KafkaSettings,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class BrokerUnavailable(RuntimeError):
    """The broker could not be reached or did not answer in time."""


class NotAuthorized(BrokerUnavailable):
    """The broker refused this client's principal an operation on a topic or group: an ACL is missing.

    A BrokerUnavailable, so the sensor, the training run and the CLIs report it wherever they report a
    broker they cannot use; the message names the principal, the operation, the resource and the fix.
    """

    def __init__(self, settings: KafkaSettings, operation: str, resource: str, name: str, note: str = "") -> None:
        self.principal = settings.principal
        self.operation, self.resource, self.name = operation, resource, name
        super().__init__(
            f"principal {self.principal} is not authorized to {operation} {resource} {name!r}{note} on "
            f"{settings.bootstrap}: grant it (kafka-acls.sh --add --allow-principal {self.principal} "
            f"--operation {operation} --{resource} {name}, or dagster_project.kafka.admin_security.grant), "
            f"or {settings.identity_fix()}"
        )


class PartitionsLeaderless(BrokerUnavailable):
    """Partitions of a topic have no leader, or a leader that does not answer: a broker failover.

    Nothing is wrong with the data and nobody has to act: the controller elects a new leader from the
    in-sync replicas (or the broker comes back), and the next attempt proceeds. `problems` maps each
    such partition to what is wrong with it.
    """

    def __init__(self, topic: str, problems: dict[int, str]) -> None:
        self.topic, self.problems = topic, dict(problems)
        detail = "; ".join(f"partition {p} of {topic} {problem}" for p, problem in sorted(problems.items()))
        super().__init__(f"{detail}; waiting (nothing to do: it resumes once the partition has a leader again)")


def retrying(call: Callable[[], T], timeout_s: float = 5.0) -> T:
    """`call()`, again while it fails with a retriable Kafka error, for up to `timeout_s`.

    kafka-python sends one-shot requests (metadata, admin) to a node from the cluster metadata and
    raises at once if it cannot connect; after a broker crash the metadata still lists the dead node
    until the controller fences it (`broker.session.timeout.ms`). kafka-python backs off from a node
    that failed, so asking again reaches a live one.
    """
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except KafkaError as exc:
            if not exc.retriable or time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def ensure_topics(
    settings: KafkaSettings,
    topics: Iterable[str],
    partitions: int,
    timeout_s: float = 10.0,
    warn_on_partitions: bool = True,
    bootstrap_timeout_s: float | None = None,
) -> None:
    """Create topics that do not exist yet (idempotent) and wait until every partition has a leader.

    The replication factor is the broker's `default.replication.factor` (-1), so a 3-node cluster
    gets replicated topics without Streamfit knowing its size. CreateTopics returns before the new
    metadata has reached every broker; waiting here means the next probe sees the topic.

    On a cluster with ACLs a principal sees only the topics it may DESCRIBE and creates only those it
    may CREATE: a topic it may do neither with is left alone (it may well exist) with a log line; if the
    caller really uses it, that use fails with a NotAuthorized error naming the ACL to add.
    """
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError, TopicAuthorizationFailedError, for_code

    bounded = {} if bootstrap_timeout_s is None else {"bootstrap_timeout_ms": int(bootstrap_timeout_s * 1000)}
    admin = clients.admin(settings, **bounded)
    try:
        existing = set(retrying(admin.list_topics))
        topics = list(topics)
        if warn_on_partitions:  # (a dead-letter topic's partitions order nothing)
            _warn_on_partition_mismatch(admin, [t for t in topics if t in existing], partitions)
        new = [t for t in topics if t not in existing]
        if not new:
            return
        result = retrying(lambda: admin.create_topics([NewTopic(t, partitions, -1) for t in new], raise_errors=False))
        for topic in result.get("topics", []):
            error = for_code(topic.get("error_code", 0))
            if error is TopicAuthorizationFailedError:
                log.info("%s may not see or create %s: left to the operator", settings.principal, topic["name"])
                new.remove(topic["name"])
            elif error.errno and error is not TopicAlreadyExistsError:
                raise error(f"creating topic {topic['name']}: {topic.get('error_message') or error.__name__}")
        deadline = time.monotonic() + timeout_s
        while new:
            described = retrying(lambda: admin.describe_topics(new))
            if all(
                not d.get("error_code") and d["partitions"] and all(p["leader_id"] >= 0 for p in d["partitions"])
                for d in described
            ):
                return
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"topics {new} were created but have no leaders after {timeout_s:g}s")
            time.sleep(0.05)
    finally:
        admin.close()


def _raise_if_hidden(settings: KafkaSettings, topic: str) -> None:
    """Raise NotAuthorized if `topic` is missing from metadata because the principal may not DESCRIBE it.

    A broker with ACLs answers TOPIC_AUTHORIZATION_FAILED both for a topic the principal may not see and
    for a missing one it could not see anyway, so "does not exist" is only trusted when it says so.
    """
    from kafka.errors import TopicAuthorizationFailedError

    try:
        admin = clients.admin(settings)
        try:
            described = retrying(lambda: admin.describe_topics([topic]))
        finally:
            admin.close()
    except Exception:  # the caller's "does not exist" stands; broker trouble surfaces on its next call
        return
    for entry in described:
        if entry.get("name") == topic and entry.get("error_code") == TopicAuthorizationFailedError.errno:
            raise NotAuthorized(settings, "DESCRIBE", "topic", topic, note=" (or it does not exist)")


def _warn_on_partition_mismatch(admin: Any, topics: list[str], partitions: int) -> None:
    """Say so when a topic exists with another partition count than the spec's (a producer auto-created it)."""
    if not topics:
        return
    for described in admin.describe_topics(topics):
        found = len(described.get("partitions") or [])
        if not described.get("error_code") and found and found != partitions:
            log.warning("%s", partition_mismatch(described["name"], found, partitions))


def partition_mismatch(topic: str, found: int, partitions: int) -> str:
    """Why a topic's partition count differs from the spec's and what to do: Streamfit never changes
    an existing topic (a `partitions:` raised after the topic exists used to pass unnoticed)."""
    return (
        f"{topic} has {found} partition(s) but the stream spec says {partitions}: Streamfit follows the topic "
        f"(ordering and scorer parallelism come from its {found}) and never changes an existing topic's partitions "
        "(new partitions move keys, splitting a key's order and its derived-feature history). It was auto-created "
        f"by a producer, or the spec changed after it was made: add partitions with `kafka-topics.sh --alter "
        f"--topic {topic} --partitions {partitions}` (keys move) or recreate it before producing, or set "
        f"`partitions: {found}` in the spec"
    )


def topic_lost(spec: Any, head: Any, expected: dict[int, int]) -> str | None:
    """Why a missing events topic is an OFFSET GAP, or None when nothing was learned from it yet.

    After the in-memory embedded broker restarted, the sensor said the topic "does not exist yet
    (produce to it)" of a stream whose model had learned thousands of its rows, and `offsets show`
    printed the head alone: the loss showed only once producers had recreated the topic."""
    if head is None or not any(offset > 0 for offset in expected.values()):
        return None
    return (
        f"OFFSET GAP in {spec.name}: the broker has no topic {spec.events_topic}, but {head.name} learned from it "
        f"(the next batch would start at {dict(sorted(expected.items()))}: the in-memory embedded broker restarted, "
        "the topic was deleted, or the "
        "bootstrap names another cluster). Nothing is learned until you decide: once the topic exists again, "
        f"`streamfit offsets reset {spec.name} --to earliest|latest`"
    )


def topic_partitions(settings: KafkaSettings, topic: str) -> list[int]:
    """Partition ids of `topic` ([] when it does not exist); BrokerUnavailable when unreachable."""
    consumer = _open_reader(settings)
    try:
        partitions = sorted(retrying(lambda: consumer.partitions_for_topic(topic)) or [])
    finally:
        consumer.close()
    if not partitions:
        _raise_if_hidden(settings, topic)
    return partitions


METADATA_CATCH_UP_S = 5.0  # how long a partition the metadata does not list yet is waited for


def log_starts(settings: KafkaSettings, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    """The first offset the broker holds of each of `partitions` that `topic` has (others are absent)."""
    from kafka import TopicPartition

    wanted = set(partitions)
    consumer = _open_reader(settings)
    try:
        existing = retrying(lambda: consumer.partitions_for_topic(topic)) or set()
        deadline = time.monotonic() + METADATA_CATCH_UP_S
        while not wanted <= existing and time.monotonic() < deadline:
            # A broker's metadata may lag a partition increase another client already saw.
            time.sleep(0.2)
            consumer.topics()  # a fresh metadata request
            existing = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in wanted if p in existing]
        return {tp.partition: o for tp, o in consumer.beginning_offsets(tps, timeout_ms=10_000).items()} if tps else {}
    finally:
        consumer.close()


def end_offsets(settings: KafkaSettings, topic: str) -> dict[int, int]:
    """Each partition's high-water mark ({} when `topic` does not exist): one metadata and one
    ListOffsets request. Any record written afterwards gets an offset at or after it, whatever the
    clocks say. read_uncommitted, so an open transaction does not hold the answer back. Tansu's
    answer can be short of the true end (the last record batch's first offset + 1): a reader from it
    reads more than needed, never less."""
    from kafka import TopicPartition
    from kafka.errors import KafkaError

    consumer = _open_reader(settings, isolation_level="read_uncommitted")
    try:
        partitions = retrying(lambda: consumer.partitions_for_topic(topic)) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        return {tp.partition: o for tp, o in consumer.end_offsets(tps).items()} if tps else {}
    except KafkaError as exc:  # a partition without a leader times out: a broker callers wait for, as any other
        raise BrokerUnavailable(f"the end offsets of {topic} on {settings.bootstrap}: {exc!r}") from exc
    finally:
        consumer.close()


def offsets_since(settings: KafkaSettings, topic: str, partitions: Iterable[int], since_ms: int) -> dict[int, int]:
    """Per partition, the first offset whose record's timestamp is `since_ms` or later (ListOffsets by
    time), so a reader of recent records need not start at the log's start; a partition with no such
    record is absent (nothing there is recent enough). Tansu answers with the log's start whatever the
    time: its readers read more than needed, never less."""
    from kafka import TopicPartition

    wanted = [TopicPartition(topic, p) for p in partitions]
    if not wanted:
        return {}
    consumer = _open_reader(settings)
    try:
        found = retrying(lambda: consumer.offsets_for_times(dict.fromkeys(wanted, since_ms)))
    finally:
        consumer.close()
    return {tp.partition: at.offset for tp, at in found.items() if at is not None}


def check_reachable(
    settings: KafkaSettings, timeout_s: float = 2.0, on_silence: Callable[[str], None] | None = None
) -> None:
    """Fail in seconds, not kafka-python's 30 s bootstrap timeout, when no bootstrap host answers.

    A host that accepts the connection but answers nothing within `timeout_s` is left to the
    client's own timeouts; `on_silence(address)` is told first (a command line says it is waiting)."""
    from dagster_project.kafka.preflight import not_kafka

    errors = []
    for address in settings.bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        if not (host and port.isdigit() and 0 < int(port) < 65536):  # `localhost` said "invalid literal for int()"
            errors.append(f"{address}: not host:port (e.g. localhost:9092)")
            continue
        try:
            sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s)
        except (OSError, ValueError) as exc:
            errors.append(f"{address}: {exc}")
            continue
        with sock:  # one connection: reachable, then asked whether it speaks Kafka
            silent = (lambda address=address: on_silence(address.strip())) if on_silence else None
            why = not_kafka(sock, silent) if settings.security_protocol == "PLAINTEXT" else None
        if why is None:  # TLS and SASL listeners are checked by the security preflight
            return
        errors.append(f"{address}: {why}")
    raise BrokerUnavailable(
        f"Kafka broker unreachable ({'; '.join(errors)}); start it or point {BOOTSTRAP_ENV} (or --bootstrap) "
        "at a running one"
    )


def _open_reader(settings: KafkaSettings, **overrides):
    from kafka.errors import KafkaError

    check_reachable(settings)
    try:
        consumer = clients.range_reader(settings, **overrides)
        if not consumer.bootstrap_connected():
            retrying(consumer.topics)  # forces a metadata round trip so an unreachable broker fails here
        return consumer
    except (BrokerSecurityError, BrokerConfigError) as exc:  # reachable, but misconfigured: say what to fix
        raise BrokerUnavailable(f"Kafka broker at {settings.bootstrap}: {exc}") from exc
    except (KafkaError, OSError) as exc:
        raise BrokerUnavailable(f"Kafka broker at {settings.bootstrap} is unreachable: {exc!r}") from exc


def _answers(host: str, port: int, timeout_s: float) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _describe_cluster_and_topic(
    settings: KafkaSettings, topic: str, timeout_s: float | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fresh DescribeCluster and DescribeTopics([topic]) answers, each retried past a dead node;
    BrokerUnavailable (naming the bootstrap) if no broker answers (within about `timeout_s` when given:
    kafka-python's admin client otherwise waits 30 s for its bootstrap)."""
    from kafka.errors import KafkaError

    bounded = {} if timeout_s is None else {"bootstrap_timeout_ms": int(timeout_s * 1000)}
    try:
        admin = clients.admin(settings, **bounded)
    except (KafkaError, OSError) as exc:
        raise BrokerUnavailable(f"Kafka broker at {settings.bootstrap} unreachable: {exc!r}") from exc
    retry_s = 5.0 if timeout_s is None else timeout_s
    try:
        cluster = retrying(admin.describe_cluster, retry_s)
        (described,) = retrying(lambda: admin.describe_topics([topic]), retry_s)
    except KafkaError as exc:
        raise BrokerUnavailable(f"Kafka broker at {settings.bootstrap} failed to describe {topic}: {exc!r}") from exc
    finally:
        admin.close()
    return cluster, described


def leader_problems(settings: KafkaSettings, topic: str, connect_timeout_s: float = 1.0) -> dict[int, str]:
    """Partitions of `topic` without a usable leader, each with what is wrong; {} when all have one.

    From fresh metadata (admin DescribeCluster + DescribeTopics): a partition whose leader id is -1
    has no leader (every in-sync replica is down, or the controller is electing one); a leader that
    is not a live broker, or whose port refuses connections, is a crashed node the controller has
    not fenced yet (`broker.session.timeout.ms`). Raises BrokerUnavailable if no broker answers.
    """
    cluster, described = _describe_cluster_and_topic(settings, topic)
    brokers = {b["broker_id"]: (b["host"], b["port"]) for b in cluster.get("brokers", [])}
    if described.get("error_code"):
        return {}
    problems: dict[int, str] = {}
    for part in described.get("partitions", []):
        partition, leader = part["partition_index"], part.get("leader_id")
        if leader is None or leader < 0:
            problems[partition] = "has no leader (broker failover)"
        elif leader not in brokers:
            problems[partition] = f"has no live leader: broker {leader} left the cluster (broker failover)"
        elif not _answers(*brokers[leader], connect_timeout_s):
            host, port = brokers[leader]
            problems[partition] = (
                f"has no live leader: broker {leader} ({host}:{port}) does not answer (broker failover)"
            )
    return problems


# A probe that has no answer after this long checks the partitions' leaders (a crashed leader stays in
# the metadata until the controller fences it), so a failover is named at once, not after a timeout.
LEADER_CHECK_AFTER_S = 1.0
TIMESTAMP_WAIT_S = 1.0  # after the end offsets are known, how long to poll on for the oldest waiting timestamps

# The record at an offset keeps its timestamp: a probe that saw the oldest waiting row's remembers it, so
# a later probe (the sensor's next tick, in the same code-server process) whose fetches bring the end
# offset but no record within TIMESTAMP_WAIT_S (seen on Tansu under load) still knows how old it is.
# Keyed by bootstrap, topic, partition and offset; a topic deleted and made again under the same name
# is the offset-gap check's business (its offsets name other records), not this cache's.
_OLDEST_STAMPS: OrderedDict[tuple[str, str, int, int], int] = OrderedDict()
OLDEST_STAMPS_KEPT = 4096


def _remember_oldest(settings: KafkaSettings, topic: str, starts: dict[int, int], oldest: dict[int, int]) -> None:
    """Keep each polled oldest waiting timestamp and fill in the partitions this probe missed.

    A timestamp in the future (a producer clock ahead) would make the row's age negative until that
    time, so `batch.max_wait_s` would never fire: such a row counts from when a probe first saw it.
    """
    now_ms = int(time.time() * 1000)
    for partition, start in starts.items():
        key = (settings.bootstrap, topic, partition, start)
        if partition in oldest:
            stamp = min(oldest[partition], now_ms, _OLDEST_STAMPS.get(key, now_ms))
            _OLDEST_STAMPS[key] = oldest[partition] = stamp
            _OLDEST_STAMPS.move_to_end(key)
        elif key in _OLDEST_STAMPS:
            oldest[partition] = _OLDEST_STAMPS[key]
    while len(_OLDEST_STAMPS) > OLDEST_STAMPS_KEPT:
        _OLDEST_STAMPS.popitem(last=False)


def _cluster_id(consumer: Any) -> str | None:
    """The cluster id kafka-python's metadata carries (Metadata v2+); None if it has none."""
    return getattr(getattr(getattr(consumer, "_client", None), "cluster", None), "cluster_id", None)


def _readable(high_water: int | None, stable: int | None) -> int | None:
    """The end a batch may be planned to: the high-water mark, or the last stable offset before it."""
    if high_water is None or stable is None or stable < 0:
        return high_water
    return min(high_water, stable)


def _raise_if_leaderless(settings: KafkaSettings, topic: str) -> None:
    try:
        problems = leader_problems(settings, topic)
    except BrokerUnavailable:
        return  # the probe's own error says more
    if problems:
        raise PartitionsLeaderless(topic, problems)


def _explain_probe_failure(settings: KafkaSettings, topic: str, failure: BrokerUnavailable) -> BrokerUnavailable:
    """`failure`, or PartitionsLeaderless when fresh metadata shows why the probe got no answer."""
    try:
        problems = leader_problems(settings, topic)
    except BrokerUnavailable:
        return failure
    return PartitionsLeaderless(topic, problems) if problems else failure


def topic_identity(settings: KafkaSettings, topic: str, timeout_s: float | None = None) -> TopicIdentity | None:
    """The cluster id and the topic's id (None if the topic does not exist), from standard metadata."""
    cluster, described = _describe_cluster_and_topic(settings, topic, timeout_s)
    cluster_id = cluster.get("cluster_id")
    if described.get("error_code"):
        return None
    topic_id = described.get("topic_id")
    return TopicIdentity(
        cluster_id, None if topic_id in (None, "", "00000000-0000-0000-0000-000000000000") else str(topic_id)
    )


TANSU_CLUSTER_ID = "tansu_cluster"  # what the embedded Tansu broker answers to DescribeCluster
# InitProducerId, AddPartitionsToTxn, AddOffsetsToTxn, EndTxn, TxnOffsetCommit: a transactional producer needs all five.
TRANSACTION_APIS = {
    22: "InitProducerId",
    24: "AddPartitionsToTxn",
    25: "AddOffsetsToTxn",
    26: "EndTxn",
    28: "TxnOffsetCommit",
}


class TransactionSupport(NamedTuple):
    """Whether the cluster's transactions can carry exactly-once delivery, and why (or why not)."""

    works: bool
    reason: str
    cluster_id: str | None


def transaction_support(settings: KafkaSettings) -> TransactionSupport:
    """Do this cluster's transactions hide aborted records from read_committed consumers?

    Decided from what the cluster says about itself, not from a test transaction: Tansu (cluster id
    `tansu_cluster`) accepts transactions but leaves aborted records visible to read_committed
    consumers, so its transactions cannot carry exactly-once; a broker that does not advertise the
    five transaction APIs has none. Anything else (Apache Kafka, and brokers that speak its protocol
    fully) is taken at its word. BrokerUnavailable when no broker answers.
    """
    from kafka.errors import KafkaError

    check_reachable(settings)
    try:
        admin = clients.admin(settings)
    except (KafkaError, OSError) as exc:
        raise BrokerUnavailable(f"Kafka broker at {settings.bootstrap} unreachable: {exc!r}") from exc
    try:
        cluster_id = retrying(admin.describe_cluster).get("cluster_id")
        advertised = {int(key) for key in admin.api_versions()}
    except KafkaError as exc:
        raise BrokerUnavailable(f"Kafka broker at {settings.bootstrap} did not describe itself: {exc!r}") from exc
    finally:
        admin.close()
    if cluster_id == TANSU_CLUSTER_ID:
        return TransactionSupport(
            False,
            f"the broker is Tansu (cluster id {TANSU_CLUSTER_ID!r}), whose transactions leave aborted records "
            "visible to read_committed consumers, so they cannot make delivery exactly-once",
            cluster_id,
        )
    missing = [name for key, name in TRANSACTION_APIS.items() if key not in advertised]
    if missing:
        return TransactionSupport(
            False, f"the broker (cluster id {cluster_id!r}) lacks the transaction APIs {', '.join(missing)}", cluster_id
        )
    return TransactionSupport(
        True, f"the broker (cluster id {cluster_id!r}) supports transactions with read_committed isolation", cluster_id
    )


def read_isolation(settings: KafkaSettings) -> str:
    """The isolation level for consumers of topics a scorer may write in transactions (predictions).

    read_committed wherever transactions work: it hides aborted and still-open transactional records,
    and is harmless on topics written without transactions. read_uncommitted on Tansu, which never
    hides aborted records anyway and where the scorer never writes transactionally.
    """
    return "read_committed" if transaction_support(settings).works else "read_uncommitted"


def topic_changed(
    settings: KafkaSettings, spec: Any, head: Any, reset: dict | None, timeout_s: float | None = None
) -> str | None:
    """How the events topic differs from the one `head` learned from, or None.

    A pending offset reset is the operator's answer to exactly this, so it settles the question.
    """
    if head is None or reset:
        return None
    return identity_change(
        TopicIdentity.from_json(head.meta["offsets"].get("identity")),
        topic_identity(settings, spec.events_topic, timeout_s),
    )


def probe_partitions(
    settings: KafkaSettings, topic: str, next_offsets: dict[int, int], timeout_s: float = 5.0
) -> list[PartitionState]:
    """True end and oldest waiting timestamp of every partition of `topic`, without consuming.

    Partitions absent from `next_offsets` start at the log start (a new stream learns from the
    earliest record the broker has). A partition without a live leader (a broker failover) raises
    PartitionsLeaderless, which names it, rather than a bare timeout.
    """
    from kafka import TopicPartition
    from kafka.errors import KafkaError, KafkaTimeoutError, OffsetOutOfRangeError, TopicAuthorizationFailedError

    consumer = _open_reader(settings, max_partition_fetch_bytes=1024, fetch_max_bytes=64 * 1024)
    try:
        partitions = sorted(retrying(lambda: consumer.partitions_for_topic(topic)) or [])
        if not partitions:
            _raise_if_hidden(settings, topic)
            return []
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        deadline = time.monotonic() + timeout_s
        try:  # a healthy broker answers in milliseconds: a slow answer is worth a look at the leaders
            beginnings = consumer.beginning_offsets(tps, timeout_ms=int(LEADER_CHECK_AFTER_S * 1000))
        except KafkaTimeoutError:
            _raise_if_leaderless(settings, topic)
            beginnings = consumer.beginning_offsets(tps, timeout_ms=int(max(0.1, deadline - time.monotonic()) * 1000))
        log_start = {tp.partition: o for tp, o in beginnings.items()}
        # The last stable offsets (the reader is read_committed): a batch ends before a transaction
        # still open, whose records no reader may learn yet (a Flink or Kafka Streams producer keeps
        # one open for a checkpoint interval); the fetches' high-water marks run past it. Not on
        # Tansu, whose read_committed ListOffsets answers offsets far behind its high-water marks
        # (and whose transactions hide nothing anyway).
        stable: dict[int, int | None] = dict.fromkeys(partitions)
        if _cluster_id(consumer) != TANSU_CLUSTER_ID:
            stable = {tp.partition: o for tp, o in consumer.end_offsets(tps).items()}
        starts = {p: next_offsets.get(p, log_start[p]) for p in partitions}
        for tp in tps:
            consumer.seek(tp, starts[tp.partition])
        oldest: dict[int, int] = {}
        stamps_until: float | None = None
        check_leaders_at: float | None = time.monotonic() + LEADER_CHECK_AFTER_S
        while True:
            try:
                polled = consumer.poll(timeout_ms=50, max_records=100)
            except OffsetOutOfRangeError as exc:
                # Apache Kafka refuses a fetch outside [log start, end] (Tansu answers nothing): the
                # partition's state still says where the model stands; fetch from its end for the
                # high-water mark, and the gap check compares the two.
                out = list(exc.args[0])
                for tp, end in consumer.end_offsets(out).items():
                    consumer.seek(tp, end)
                continue
            for tp, records in polled.items():
                oldest.setdefault(tp.partition, records[0].timestamp)
            high_water = {tp.partition: _readable(consumer.highwater(tp), stable[tp.partition]) for tp in tps}
            if all(h is not None for h in high_water.values()):
                # A fetch may bring the end offset without a record (seen on Tansu under load): the
                # oldest waiting row's timestamp, which the age trigger and the early cut need, then
                # comes with a later poll. Bounded: a timestamp never costs the tick its probe.
                missing = [p for p, h in high_water.items() if h > starts[p] and p not in oldest]
                if not missing:
                    break
                stamps_until = stamps_until or time.monotonic() + TIMESTAMP_WAIT_S
                if time.monotonic() > stamps_until:
                    break
            if check_leaders_at is not None and time.monotonic() > check_leaders_at:
                check_leaders_at = None
                _raise_if_leaderless(settings, topic)
            if time.monotonic() > deadline:
                unknown = [p for p, h in high_water.items() if h is None]
                raise _explain_probe_failure(
                    settings,
                    topic,
                    BrokerUnavailable(f"no fetch answer for {topic} partitions {unknown} within {timeout_s}s"),
                )
        waiting = {p: starts[p] for p, h in high_water.items() if h > starts[p]}
        _remember_oldest(settings, topic, waiting, oldest)
        if unknown := [p for p in waiting if p not in oldest]:
            log.warning("%s: no record polled from partitions %s; their oldest row's age unknown", topic, unknown)
        return [
            PartitionState(
                partition=p,
                next_offset=starts[p],
                log_start=log_start[p],
                high_water=high_water[p],
                oldest_waiting_ts_ms=oldest.get(p),
            )
            for p in partitions
        ]
    except TopicAuthorizationFailedError as exc:  # it may DESCRIBE (metadata listed it) but not READ (fetch)
        raise NotAuthorized(settings, "READ", "topic", topic) from exc
    except KafkaError as exc:
        failure = BrokerUnavailable(f"Kafka broker at {settings.bootstrap} failed while probing {topic}: {exc!r}")
        raise _explain_probe_failure(settings, topic, failure) from exc
    finally:
        consumer.close()


def read_range(
    settings: KafkaSettings, topic: str, ranges: Ranges, stall_timeout_s: float = 15.0
) -> Iterator[RawRecord]:
    """Yield exactly the records in `{partition: [start, end)}`, in offset order per partition.

    Raises if a partition stops short of its end (the range was planned from a high-water mark,
    so the records exist unless the broker lost them). Reads with confluent-kafka when
    `clients.range_reader_client(settings)` says so (several times faster), otherwise kafka-python.
    """
    for chunk in read_range_chunks(settings, topic, ranges, stall_timeout_s):
        yield from chunk


def read_range_chunks(
    settings: KafkaSettings, topic: str, ranges: Ranges, stall_timeout_s: float = 15.0
) -> Iterator[list[RawRecord]]:
    """`read_range` one poll at a time: a list per poll, for callers that keep every record anyway
    (a generator step per record costs as much as building the record at 100 k rows)."""
    return _read_range_polls(settings, topic, ranges, stall_timeout_s, columns=False)


def read_range_columns(
    settings: KafkaSettings, topic: str, ranges: Ranges, stall_timeout_s: float = 15.0
) -> Iterator[RecordColumns]:
    """`read_range_chunks` with each poll as `RecordColumns`: the training read, which builds no tuple per
    record and reads keys and timestamps only for the records that need them (dead letters)."""
    return _read_range_polls(settings, topic, ranges, stall_timeout_s, columns=True)


def _read_range_polls(settings: KafkaSettings, topic: str, ranges: Ranges, stall_timeout_s: float, columns: bool):
    todo = {p: (s, e) for p, (s, e) in ranges.items() if e > s}
    if not todo:
        return
    try:
        client = clients.range_reader_client(settings)
    except BrokerConfigError as exc:
        raise BrokerUnavailable(str(exc)) from exc
    if client == CONFLUENT:
        yield from _read_range_confluent(settings, topic, todo, stall_timeout_s, columns)
    else:
        yield from _read_range_kafka_python(settings, topic, todo, stall_timeout_s, columns)


def _stalled(
    settings: KafkaSettings, topic: str, stall_timeout_s: float, position: dict[int, int], todo: Ranges
) -> BrokerUnavailable:
    short = {p: f"at {position[p]}, expected up to {e}" for p, (_, e) in todo.items()}
    beyond = _beyond_the_topic(settings, topic, todo, position)
    if beyond:
        return RangeBeyondTopic(
            f"{topic}: range read stalled for {stall_timeout_s}s ({short}): {beyond}. Nothing was learned; these "
            "ranges were not planned from this topic as it stands (a hand-edited run config, another cluster, or "
            "records lost to an unclean leader election): let the stream's Kafka sensor plan the batch"
        )
    open_transactions = _behind_open_transactions(settings, topic, todo)
    if open_transactions:
        return BrokerUnavailable(
            f"{topic}: range read stalled for {stall_timeout_s}s ({short}): a producer's transaction is still "
            f"open on these offsets (readable up to {open_transactions}); records past the last stable offset "
            "are read once it commits or aborts (at most the producer's transaction.timeout.ms), so the retry "
            "learns them"
        )
    return BrokerUnavailable(
        f"{topic}: range read stalled for {stall_timeout_s}s ({short}); the broker no longer "
        "has these offsets or is unreachable"
    )


class RangeBeyondTopic(BrokerUnavailable):
    """A range names a partition the topic lacks, or ends past its high-water mark: no retry helps."""


def _beyond_the_topic(settings: KafkaSettings, topic: str, todo: Ranges, position: dict[int, int]) -> str:
    """What of `todo` the topic does not hold (a missing partition, an end past the high-water mark,
    which a transaction does not explain), or "" when all of it exists or the broker cannot say."""
    try:
        partitions, high_water = _fetched_high_waters(settings, topic, {p: position[p] for p in todo})
    except Exception:  # only a better message was at stake
        return ""
    found = [f"{topic} has no partition {p} (it has {len(partitions)})" for p in sorted(todo) if p not in partitions]
    found += [
        f"partition {p} ends at {high_water[p]}, before the range's end {e}"
        for p, (_, e) in sorted(todo.items())
        if high_water.get(p) is not None and high_water[p] < e
    ]
    return "; ".join(found)


def _fetched_high_waters(
    settings: KafkaSettings, topic: str, at: dict[int, int], timeout_s: float = 3.0
) -> tuple[set[int], dict[int, int | None]]:
    """The topic's partitions, and the high-water marks (past any open transaction) that fetches at
    `at` report: Tansu's ListOffsets answers are not its ends, and the probe's stop at the last
    stable offset."""
    from kafka import TopicPartition
    from kafka.errors import OffsetOutOfRangeError

    consumer = _open_reader(settings, isolation_level="read_uncommitted", max_partition_fetch_bytes=1024)
    try:
        partitions = set(retrying(lambda: consumer.partitions_for_topic(topic)) or ())
        tps = [TopicPartition(topic, p) for p in at if p in partitions]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, at[tp.partition])
        deadline = time.monotonic() + timeout_s
        high_water: dict[int, int | None] = {}
        while tps and time.monotonic() < deadline:
            try:
                consumer.poll(timeout_ms=50, max_records=1)
            except OffsetOutOfRangeError as exc:
                for tp in exc.args[0]:
                    consumer.seek_to_end(tp)
                continue
            high_water = {tp.partition: consumer.highwater(tp) for tp in tps}
            if all(h is not None for h in high_water.values()):
                break
        return partitions, high_water
    finally:
        consumer.close()


def _behind_open_transactions(settings: KafkaSettings, topic: str, todo: Ranges) -> dict[int, int]:
    """Partitions whose last stable offset (where read_committed readers stop while a transaction is
    open) lies before the range's end, with that offset; {} if none, or if the broker cannot say."""
    from kafka import TopicPartition

    try:
        consumer = clients.range_reader(settings)
        try:
            tps = [TopicPartition(topic, p) for p in todo]
            stable = consumer.end_offsets(tps)  # the last stable offsets, for a read_committed reader
        finally:
            consumer.close()
    except Exception:  # only a better message was at stake
        return {}
    return {tp.partition: o for tp, o in stable.items() if o < todo[tp.partition][1]}


def _lost(topic: str, offsets: dict[int, int]) -> BrokerUnavailable:
    return BrokerUnavailable(
        f"{topic}: the broker no longer has offsets {offsets} (retention, deletion, or another cluster): an OFFSET "
        "GAP; nothing was learned from this range. Decide, then `streamfit offsets reset <stream> --to earliest|latest`"
    )


def _read_range_kafka_python(settings: KafkaSettings, topic: str, todo: Ranges, stall_timeout_s: float, columns: bool):
    from kafka import TopicPartition
    from kafka.errors import OffsetOutOfRangeError, TopicAuthorizationFailedError

    consumer = _open_reader(settings, fetch_max_wait_ms=READER_FETCH_MAX_WAIT_MS)  # see settings.py
    try:
        tps = {p: TopicPartition(topic, p) for p in todo}
        consumer.assign(list(tps.values()))
        for p, (start, _) in todo.items():
            consumer.seek(tps[p], start)
        position = {p: start for p, (start, _) in todo.items()}
        last_progress = time.monotonic()
        while todo:
            try:
                batch = consumer.poll(timeout_ms=200, max_records=50_000)
            except OffsetOutOfRangeError as exc:
                raise _lost(topic, {tp.partition: offset for tp, offset in exc.args[0].items()}) from exc
            chunk: Any = RecordColumns() if columns else []
            for tp, records in batch.items():
                p = tp.partition
                if p not in todo:
                    continue
                end = todo[p][1]
                for r in records:
                    if r.offset >= end:
                        break
                    if r.offset < position[p]:
                        continue
                    if columns:  # the record itself: its headers are read only if it is dead-lettered
                        chunk.append_message(p, r)
                    else:
                        chunk.append(RawRecord(p, r.offset, r.timestamp, r.key, r.value))
                    position[p] = r.offset + 1
                    last_progress = time.monotonic()
                if position[p] >= end or (records and records[-1].offset + 1 >= end):
                    position[p] = max(position[p], end)
                    del todo[p]
                    consumer.pause(tp)
            if chunk:
                yield chunk
            for p in [p for p in todo if (consumer.position(tps[p]) or 0) >= todo[p][1]]:
                # Only control records (transaction markers, never returned) were left before the end.
                position[p] = todo.pop(p)[1]
                consumer.pause(tps[p])
                last_progress = time.monotonic()
            if todo and time.monotonic() - last_progress > stall_timeout_s:
                raise _stalled(settings, topic, stall_timeout_s, position, todo)
    except TopicAuthorizationFailedError as exc:
        raise NotAuthorized(settings, "READ", "topic", topic) from exc
    finally:
        consumer.close()


CONSUME_MESSAGES = 10_000  # per confluent-kafka consume() call of a range read


def _read_range_confluent(settings: KafkaSettings, topic: str, todo: Ranges, stall_timeout_s: float, columns: bool):
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka import TopicPartition as ConfluentPartition

    check_reachable(settings)
    try:
        consumer = clients.confluent_range_reader(settings, rows=sum(end - start for start, end in todo.values()))
    except (BrokerSecurityError, BrokerConfigError, KafkaException) as exc:
        raise BrokerUnavailable(f"Kafka broker at {settings.bootstrap}: {exc}") from exc
    try:
        consumer.assign([ConfluentPartition(topic, p, start) for p, (start, _) in todo.items()])
        position = {p: start for p, (start, _) in todo.items()}
        last_progress = time.monotonic()
        while todo:
            # consume() waits out its timeout until it has num_messages: ask for no more than the range
            # still holds, or a range that ends at the high-water mark (every planned batch) waits 0.2 s.
            left = sum(end - position[p] for p, (_, end) in todo.items())
            messages = consumer.consume(num_messages=max(1, min(CONSUME_MESSAGES, left)), timeout=0.2)
            if messages:
                last_progress = time.monotonic()
            clean = not any(message.error() is not None for message in messages)
            empty: Any = RecordColumns() if columns else []
            chunk: Any = _in_range(messages, todo, position, columns) if clean else empty
            if clean:
                for p in [p for p, (_, end) in todo.items() if position[p] >= end]:
                    del todo[p]
                    consumer.pause([ConfluentPartition(topic, p)])
            keep = chunk.append
            for message in () if clean else messages:
                if message.error() is not None:
                    if message.error().code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
                        # librdkafka looks up the coordinator of its (unused) group.id even for assign(); the
                        # range reader never commits, so a principal without rights on that group reads fine
                        continue
                    if message.error().code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                        raise NotAuthorized(settings, "READ", "topic", topic)
                    if message.error().code() in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
                        # The same OFFSET GAP kafka-python's reader reports, naming the operator's fix: a bare
                        # "Offset out of range" read as a broker fault, and the step retries could never pass.
                        p = message.partition()
                        raise _lost(topic, {p: position.get(p, message.offset())})
                    raise BrokerUnavailable(
                        f"{topic}: reading partition {message.partition()} from {settings.bootstrap} failed: "
                        f"{message.error().str()}"
                    )
                p = message.partition()
                span = todo.get(p)
                if span is None:
                    continue
                offset = message.offset()
                if offset < position[p]:
                    continue
                if offset < span[1]:
                    keep(RawRecord(p, offset, message.timestamp()[1], message.key(), message.value()))
                position[p] = offset + 1
                if offset + 1 >= span[1]:
                    del todo[p]
                    consumer.pause([ConfluentPartition(topic, p)])
            if chunk:
                yield chunk
            if todo and not messages:
                # A range may end in control records (transaction markers), which are never delivered: the
                # consumer's position still moves past them.
                for part in consumer.position([ConfluentPartition(topic, p) for p in todo]):
                    if part.offset >= 0 and part.offset >= todo[part.partition][1]:
                        position[part.partition] = todo.pop(part.partition)[1]
                        consumer.pause([ConfluentPartition(topic, part.partition)])
                        last_progress = time.monotonic()
            if todo and time.monotonic() - last_progress > stall_timeout_s:
                raise _stalled(settings, topic, stall_timeout_s, position, todo)
    finally:
        _close_meanwhile(consumer)


def _close_meanwhile(consumer: Any) -> None:
    """Close a confluent range reader on its own thread: librdkafka's close() waits ~7 ms for its
    threads, a fixed cost on every batch, and a reader that never joined a group commits nothing.
    Not a daemon thread, so the interpreter still waits for the close before it exits."""
    threading.Thread(target=consumer.close, name="range-reader-close", daemon=False).start()


# RawRecord from a 5-tuple in C: the named tuple's own __new__ is a Python function, 43 vs 30 ms
# per 100 k records.
_record = functools.partial(tuple.__new__, RawRecord)


def _in_range(messages: list, todo: Ranges, position: dict[int, int], columns: bool = False) -> Any:
    """The error-free `messages` inside `[position, end)` of their partition, as RawRecords (or
    `RecordColumns`), advancing `position` past every message seen: the per-message loop's rules, a
    column at a time."""
    partitions = [m.partition() for m in messages]
    offsets = [m.offset() for m in messages]
    kept = [True] * len(messages)
    trimmed = False
    distinct = set(partitions)
    for p in distinct:
        span = todo.get(p)
        mine = range(len(messages)) if len(distinct) == 1 else [i for i, q in enumerate(partitions) if q == p]
        if span is None:
            for i in mine:
                kept[i] = False
            trimmed = True
            continue
        start, end = position[p], span[1]
        first, last = offsets[mine[0]], offsets[mine[-1]]
        if first < start or last >= end:  # a re-delivery before the position, or records past the end
            for i in mine:
                if not start <= offsets[i] < end:
                    kept[i] = False
            trimmed = True
        position[p] = max(position[p], last + 1)
    if trimmed:
        messages = [m for m, k in zip(messages, kept, strict=True) if k]
        partitions = [q for q, k in zip(partitions, kept, strict=True) if k]
        offsets = [o for o, k in zip(offsets, kept, strict=True) if k]
    values = [m.value() for m in messages]
    if columns:
        return RecordColumns(partitions, offsets, values, messages)
    timestamps = [m.timestamp()[1] for m in messages]
    keys = [m.key() for m in messages]
    return list(map(_record, zip(partitions, offsets, timestamps, keys, values, strict=True)))


def commit_group_offsets(settings: KafkaSettings, group_id: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit `offsets` for `group_id` without joining it, so Kafka tooling shows the trainer's lag."""
    from kafka import TopicPartition
    from kafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError
    from kafka.structs import OffsetAndMetadata

    consumer = clients.range_reader(settings, group_id=group_id)
    try:
        consumer.commit({TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()})
    except GroupAuthorizationFailedError as exc:
        raise NotAuthorized(settings, "READ", "group", group_id) from exc
    except TopicAuthorizationFailedError as exc:
        raise NotAuthorized(settings, "READ", "topic", topic) from exc
    finally:
        consumer.close()


def committed_group_offsets(
    settings: KafkaSettings, group_id: str, topic: str, timeout_s: float = 10.0
) -> dict[int, int]:
    """The group's committed offsets on `topic`. Retries retriable errors for up to `timeout_s`: on a fresh
    Apache Kafka cluster the first group lookup creates __consumer_offsets and answers "coordinator not
    available" until it has leaders; during a failover the coordinator moves."""
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    while True:
        admin = clients.admin(settings)
        try:
            found = admin.list_group_offsets(group_id)  # kafka-python 3: {group: {tp: OffsetAndMetadata}}
            break
        except KafkaError as exc:
            if not getattr(exc, "retriable", False) or time.monotonic() > deadline:
                raise
        finally:
            admin.close()
        time.sleep(0.2)
    return {tp.partition: meta.offset for tp, meta in found.get(group_id, {}).items() if tp.topic == topic}
