"""A real kafka-python consumer that can be wedged on demand, for the tests of replacing a wedged group member."""

from __future__ import annotations

import threading
import time
from typing import Any

from kafka.future import Future


class WedgingConsumer:
    """A real kafka-python consumer that, once `wedge` is set, is wedged in one of two ways. `silent`: it polls
    nothing and hears no heartbeat answer (a member whose rebalance never completed). `stuck`: its poll waits on
    kafka-python's own network loop for an answer that never comes (the CI joiner's stack: poll -> fetcher ->
    net.run -> event.wait)."""

    def __init__(self, consumer: Any, how: str) -> None:
        self._consumer = consumer
        self.how = how
        self.wedge = threading.Event()

    def poll(self, timeout_ms: int = 0, max_records: int | None = None, **kwargs: Any) -> dict:
        if self.wedge.is_set() and self.how == "stuck":
            self._consumer._net.run(Future())  # returns only when the loop is stopped under it
        if self.wedge.is_set():
            time.sleep(timeout_ms / 1000)
            return {}
        return self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records, **kwargs)

    @property
    def _coordinator(self) -> Any:
        return None if self.wedge.is_set() and self.how == "silent" else self._consumer._coordinator

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)
