"""When a group member replaces its consumer: wedged while the brokers answer (its group silent, a call stuck inside
the client, or, for the label joiner, an assignment lacking partitions).

Used by the scorer (serving/scorer.py) and the label joiner (labels/joiner.py), the two long-lived group
members. A broker outage is waited out: there is nothing to do but wait (the scorer reports itself unready).
A client that is wedged while the cluster is fine is different: waiting never ends. Seen on a 3-node Apache
Kafka cluster with kafka-python 3.0: a rebalance whose SyncGroup never completed left the consumer with no
partitions and no heartbeats, polling nothing, for good (the scorer under a failover; the label joiner after
a whole-cluster restart, in CI). A new consumer (a new group member) recovers from that at once, and costs
nothing in correctness: the scorer starts from the group's committed offsets (in exactly-once mode no
transaction is open between batches), the joiner from the positions in its own state; the old member's
partitions move to the new one when the group rebalances.

So a member rejoins when the group has not answered for `REJOIN_AFTER_S` (five session timeouts: a member
is evicted after one) counted from the newest of: the last answer, the consumer's start, and the last time
no broker accepted a connection (an outage restarts the count, so the end of a long outage is not mistaken
for a wedge). Only a member that has had an assignment is replaced: a member leaving while it still joins
can wedge the group on some brokers (Tansu), and replacing a slow joiner every `REJOIN_AFTER_S` repeats that
forever (seen in tests before this rule). A member wedged in its very first join is therefore left to the
group's own session timeout.

A poll that never returns is a wedge too, one no check in the loop can see: kafka-python 3.0's poll waits on
its network loop without a deadline (seen in CI: the joiner's thread waiting inside poll after a whole-cluster
restart). `PollWatch` watches each poll from a thread of its own and, after `STUCK_POLL_S`, stops that
client's network loop (`unblock`), which makes the poll return; the loop then replaces the consumer as above.

A member can also be wedged while its group answers and its polls return: assigned fewer partitions than its
topics have, it never reads the others. Where that cannot be a fair share (the label joiner, alone in its group by
design), `AssignmentWatch` says so after `REJOIN_AFTER_S`, and the member is replaced the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from dagster_project.kafka.io import BrokerUnavailable, check_reachable
from dagster_project.kafka.settings import GROUP_SESSION_TIMEOUT_MS, KafkaSettings

log = logging.getLogger(__name__)

REJOIN_AFTER_S = 5 * GROUP_SESSION_TIMEOUT_MS / 1000
PROBE_INTERVAL_S = 1.0  # at most one connection probe per second while the group is silent
CLOSE_TIMEOUT_S = 10.0  # a wedged client's close may block: it is given this long on a side thread
# One poll call that has not returned this long is stuck inside the client. kafka-python 3.0.12 bounds every wait
# of a poll by the poll's timeout (0.2-1 s here): a JoinGroup or SyncGroup the broker holds (up to the rebalance
# timeout) stays in flight across polls instead, so a healthy poll lasts its timeout, plus 1 s after a retriable
# error (clients.poll) and the rebalance listeners' time (bookkeeping and seeks, run on the network loop).
STUCK_POLL_S = REJOIN_AFTER_S
# Once the member is asked to stop, a call is stuck after this long instead: a stop stuck there, with the close after
# it (CLOSE_TIMEOUT_S), fits Kubernetes' default 30 s SIGTERM grace. Longer than the longest healthy final call, an
# offset commit capped at 10 s (COMMIT_TIMEOUT_MS of the scorer and the joiner).
STOPPING_STUCK_S = 12.0
NETWORK_STOP_TIMEOUT_MS = 2000
POLL_WATCH_INTERVAL_S = 1.0
MAKE_RETRY_S = 1.0  # between attempts to make a consumer while no broker answers

T = TypeVar("T")


def _brokers_answer(settings: KafkaSettings) -> bool:
    """Whether a broker accepts connections (during an outage a new consumer would fare no better)."""
    try:
        check_reachable(settings)
    except BrokerUnavailable:
        return False
    return True


class RejoinWatch:
    """Says when a member's consumer is wedged (the group silent, the brokers up)."""

    def __init__(
        self,
        settings: KafkaSettings,
        last_contact: Callable[[], float | None],
        after_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.last_contact = last_contact
        self.after_s = REJOIN_AFTER_S if after_s is None else after_s
        self._since = time.monotonic()  # the current consumer's start, or the last outage seen
        self._probed_at = float("-inf")

    def restart(self) -> None:
        """A new consumer: its silence counts from now."""
        self._since = time.monotonic()

    def wedged(self) -> str | None:
        """Why the consumer should be replaced, or None."""
        now = time.monotonic()
        silent_since = max(self.last_contact() or self._since, self._since)
        if now - silent_since < self.after_s or now - self._probed_at < PROBE_INTERVAL_S:
            return None
        self._probed_at = now
        if not _brokers_answer(self.settings):
            self._since = now  # an outage: a new consumer would fare no better; count again once it ends
            return None
        return (
            f"no answer from consumer group for {now - silent_since:.0f} s while the brokers at "
            f"{self.settings.bootstrap} accept connections"
        )


def unassigned(consumer: Any, topics: Iterable[str]) -> list[str] | None:
    """What of `topics` kafka-python's `consumer` is not assigned, by its cached metadata (no broker call): one
    description per topic, empty when it has every partition. A topic missing from the metadata counts when none of
    it is assigned (the assignor's "No partition metadata for topic"). None when that metadata cannot be read."""
    partitions_for = getattr(getattr(consumer, "_cluster", None), "partitions_for_topic", None)
    if not callable(partitions_for):
        return None
    assigned = consumer.assignment() or set()
    lacking = []
    for topic in topics:
        known = set(partitions_for(topic) or ())
        have = {tp.partition for tp in assigned if tp.topic == topic}
        if not known and not have:
            lacking.append(f"{topic} (no partition metadata)")
        elif missing := sorted(known - have):
            lacking.append(f"partitions {', '.join(map(str, missing))} of {len(known)} of {topic}")
    return lacking


class AssignmentWatch:
    """Says when a member that should own every partition of its topics has owned fewer for `after_s` (default
    `REJOIN_AFTER_S`) while the brokers accept connections.

    The label joiner is the only member of its group (its store's lock refuses a second joiner), so a partial
    assignment is no share: a rebalance made from incomplete metadata (right after a cluster restart kafka-python's
    assignor logs "No partition metadata for topic ..." and leaves the topic out), or another member holding them.
    Its group answers and its polls return, so neither RejoinWatch nor PollWatch sees it, yet the missing partitions
    are never read. kafka-python's leader rejoins by itself once its metadata differs from what it assigned from
    (within seconds of a healthy refresh); this bounds whatever that misses. An outage restarts the count."""

    def __init__(self, settings: KafkaSettings, after_s: float | None = None) -> None:
        self.settings = settings
        self.after_s = REJOIN_AFTER_S if after_s is None else after_s
        self._since: float | None = None  # since when the assignment has lacked partitions
        self._probed_at = float("-inf")

    def restart(self) -> None:
        """A new consumer: its assignment is judged afresh."""
        self._since = None

    def short(self, consumer: Any, topics: Iterable[str]) -> str | None:
        """Why `consumer` should be replaced (what it lacked, for how long), or None."""
        lacking = unassigned(consumer, topics)
        now = time.monotonic()
        if not lacking:
            self._since = None
            return None
        if self._since is None:
            self._since = now
        if now - self._since < self.after_s or now - self._probed_at < PROBE_INTERVAL_S:
            return None
        self._probed_at = now
        if not _brokers_answer(self.settings):
            self._since = now  # an outage: count again once it ends
            return None
        return (
            f"its assignment has lacked {'; '.join(lacking)} for {now - self._since:.0f} s while the brokers at "
            f"{self.settings.bootstrap} accept connections (a rebalance made from incomplete metadata, or another "
            "member of its group holds them)"
        )


def made_while_brokers_away(make: Callable[[], T], stop: threading.Event, what: str) -> T | None:
    """`make()` (a new consumer), tried again every `MAKE_RETRY_S` while it fails with a retriable Kafka error; None
    if `stop` is set meanwhile. kafka-python cannot make a consumer while no broker answers (KafkaTimeoutError after
    30 s), and a stuck consumer is replaced whether or not the brokers are up (PollWatch does not probe them)."""
    from kafka.errors import KafkaError

    while True:
        try:
            return make()
        except KafkaError as exc:
            if not exc.retriable:
                raise
            log.warning("%s: cannot start a consumer (%r); trying again", what, exc)
            if stop.wait(MAKE_RETRY_S):
                return None


def close_bounded(close: Callable[[], None], what: str) -> None:
    """Close a wedged client without waiting on it for more than CLOSE_TIMEOUT_S."""

    def run() -> None:
        try:
            close()
        except Exception as exc:  # it was wedged: a failed close changes nothing for its successor
            log.warning("closing %s failed: %r", what, exc)

    closer = threading.Thread(target=run, name=f"close-{what}", daemon=True)
    closer.start()
    closer.join(CLOSE_TIMEOUT_S)
    if closer.is_alive():
        log.warning("closing %s did not finish within %g s; left to finish in the background", what, CLOSE_TIMEOUT_S)


def heartbeat_answered_at(consumer: Any) -> float | None:
    """When kafka-python's group coordinator last answered a heartbeat (time.monotonic()), or None.

    kafka-python keeps it on the consumer's coordinator (not public: read defensively). It is what shows that an
    idle member's group still answers: with nothing to fetch there are no records, only heartbeats."""
    coordinator = getattr(consumer, "_coordinator", None)
    received = getattr(getattr(coordinator, "heartbeat", None), "last_receive", None)
    return received if isinstance(received, float) and received > 0 else None


def unblock(consumer: Any, what: str) -> None:
    """Make a call stuck inside a kafka-python consumer return, from another thread; the consumer is unusable after.

    kafka-python 3.0 runs the consumer's network I/O on its own loop thread, and `poll` waits for that loop's
    answers without a deadline. Stopping the loop fails every waiting call at once (`KafkaConnectionError:
    Event loop stopped`), even when the loop thread itself is wedged. A client without that loop (internals
    moved) is closed instead, bounded."""
    stop = getattr(getattr(consumer, "_net", None), "stop", None)
    if not callable(stop):
        close_bounded(lambda: consumer.close(autocommit=False), what)
        return
    try:
        stop(timeout_ms=NETWORK_STOP_TIMEOUT_MS)
    except Exception as exc:  # the waiters are failed even when the join times out; anything else is logged
        log.warning("stopping %s's network loop failed: %r", what, exc)


class PollWatch:
    """Unblocks a member's poll that has not returned for `STUCK_POLL_S`, from a thread beside the loop.

    The loop polls through `poll` while `watching()`; a poll the watch unblocked returns `nothing`, and
    `abandoned(generation)` then tells the loop to replace that consumer. Each consumer is unblocked once.
    Once `stopping` is set the limit is `STOPPING_STUCK_S`: a member stuck at its stop still exits in its grace."""

    def __init__(self, what: str, stopping: threading.Event | None = None) -> None:
        self.what = what
        self._stopping = stopping
        self._polling: tuple[float, int, Callable[[], None]] | None = None  # (started, generation, unblock)
        self._abandoned: int | None = None  # the consumer generation whose stuck poll was unblocked

    @contextmanager
    def watching(self) -> Iterator[None]:
        """The watch thread runs while in this block."""
        ended = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(ended,), name=f"{self.what}-poll-watch", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            ended.set()

    def poll(self, generation: int, unblock: Callable[[], None], poll: Callable[[], T], nothing: T) -> T:
        """`poll()`, watched: `unblock()` makes it return if it gets stuck; then `nothing` is returned."""
        self._polling = (time.monotonic(), generation, unblock)
        try:
            return poll()
        except Exception:
            if not self.abandoned(generation):
                raise
            return nothing  # the error of the stopped client: it is replaced next
        finally:
            self._polling = None

    def call(self, generation: int, unblock: Callable[[], None], call: Callable[[], T], nothing: T) -> T:
        """`poll(...)` for any call that waits on the client's network loop (a poll, a commit, an offset or metadata
        lookup): `nothing` at once if this consumer was unblocked before (its loop is stopped, and kafka-python would
        then run the call on the caller's thread, without a deadline)."""
        if self.abandoned(generation):
            return nothing
        return self.poll(generation, unblock, call, nothing)

    def abandoned(self, generation: int) -> bool:
        """Whether the consumer of `generation` had its stuck poll unblocked (it is unusable: replace it)."""
        return self._abandoned == generation

    def _watch(self, ended: threading.Event) -> None:
        while not ended.wait(POLL_WATCH_INTERVAL_S):
            self._check()

    def stuck_after_s(self) -> float:
        """How long a call runs before it counts as stuck: shorter once the member is stopping."""
        if self._stopping is not None and self._stopping.is_set():
            return min(STUCK_POLL_S, STOPPING_STUCK_S)
        return STUCK_POLL_S

    def _check(self) -> None:
        """Unblock the poll under way if it has been stuck for `stuck_after_s()`."""
        polling = self._polling
        if polling is None:
            return
        started, generation, unblock = polling
        stuck_s = time.monotonic() - started
        if self.abandoned(generation) or stuck_s < self.stuck_after_s():
            return
        self._abandoned = generation  # before unblocking: the poll returns at once and asks
        log.warning(
            "%s: a call into its consumer has not returned for %.0f s: the Kafka client is stuck inside it; stopping "
            "that client so that a new consumer takes its place",
            self.what,
            stuck_s,
        )
        unblock()
