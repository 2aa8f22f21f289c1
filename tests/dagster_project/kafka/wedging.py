"""A real kafka-python consumer that can be wedged on demand, for the tests of replacing a wedged group member."""

from __future__ import annotations

import threading
import time
from typing import Any

from kafka.future import Future


class WedgingConsumer:
    """A real kafka-python consumer that, once `wedge` is set, is wedged in one of seven ways. `silent`: it polls
    nothing and hears no heartbeat answer (a member whose rebalance never completed). `stuck`: its poll waits on
    kafka-python's own network loop for an answer that never comes (the CI joiner's stack: poll -> fetcher ->
    net.run -> event.wait). `stuck_commit`: the same, in its next offset commit. `stuck_committed`: the same, in its
    next committed-offset lookup. `partial`: its assignment loses the partitions of `drop_topic` while its group still
    answers and its polls return the rest (an assignment made from metadata without that topic: kafka-python's "No
    partition metadata for topic"); nothing in the client corrects it, its metadata being unchanged.
    `stuck_metadata`: its wait for a topic's metadata (partitions_for_topic, before subscribing) waits on the network
    loop the same way (kafka-python waits for that answer without a deadline). `stuck_close`: its close waits so
    (kafka-python's close-prepare step has no deadline either)."""

    def __init__(self, consumer: Any, how: str, drop_topic: str | None = None) -> None:
        self._consumer = consumer
        self.how = how
        self.drop_topic = drop_topic
        self.wedge = threading.Event()
        self._dropped = False

    def _drop(self) -> None:
        """On kafka-python's network loop, where its coordinator assigns: the assignment without `drop_topic`."""
        subscription = self._consumer._subscription
        subscription.assign_from_subscribed(
            [tp for tp in subscription.assigned_partitions() if tp.topic != self.drop_topic]
        )

    def poll(self, timeout_ms: int = 0, max_records: int | None = None, **kwargs: Any) -> dict:
        if self.how == "partial":
            if self.wedge.is_set() and not self._dropped:
                self._dropped = True
                self._consumer._net.run(self._drop)
            return self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records, **kwargs)
        if self.wedge.is_set() and self.how == "stuck":
            self._consumer._net.run(Future())  # returns only when the loop is stopped under it
        if self.wedge.is_set() and self.how == "silent":
            time.sleep(timeout_ms / 1000)
            return {}
        return self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records, **kwargs)

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        if self.wedge.is_set() and self.how == "stuck_commit":
            self._consumer._net.run(Future())  # returns only when the loop is stopped under it
        return self._consumer.commit(*args, **kwargs)

    def committed(self, *args: Any, **kwargs: Any) -> Any:
        if self.wedge.is_set() and self.how == "stuck_committed":
            self._consumer._net.run(Future())  # returns only when the loop is stopped under it
        return self._consumer.committed(*args, **kwargs)

    def partitions_for_topic(self, topic: str) -> Any:
        if self.wedge.is_set() and self.how == "stuck_metadata":
            self._consumer._net.run(Future())  # returns only when the loop is stopped under it
        return self._consumer.partitions_for_topic(topic)

    def close(self, *args: Any, **kwargs: Any) -> None:
        if self.wedge.is_set() and self.how == "stuck_close":
            self._consumer._net.run(Future())  # returns only when the loop is stopped under it
        self._consumer.close(*args, **kwargs)

    @property
    def _coordinator(self) -> Any:
        return None if self.wedge.is_set() and self.how == "silent" else self._consumer._coordinator

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)
