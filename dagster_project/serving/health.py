"""Liveness and readiness of a scorer, kept apart because they call for different actions.

Live means the process answers HTTP: restarting it would not help anything else. Ready means it
is doing its job: a model is loaded and the Kafka consumer is in its group and has heard from the
broker recently. A broker outage makes a scorer unready (take it out of rotation, alert) but not
dead (a restart cannot fix the broker and would only lose the loaded model).

`KafkaLink` is written by the Kafka loop and read by HTTP handlers, so it holds only timestamps and
one consumer reference; reading them needs no lock. Contact with the broker is the newest of: a
heartbeat answered by the group coordinator (kafka-python heartbeats in the background every
second, so this is fresh while the loop is busy), a fetch that returned records, an offset commit
and a group assignment.

A member the group gave no partitions (more scorers than the topic has partitions) stays ready: it
answers /predict like any other, and it is the standby that takes partitions over when a member
leaves; taking it out of rotation would cut HTTP capacity for nothing. /healthz says so (`partitions`
empty, `idle`) and `streamfit_scorer_partitions` is 0.

An assigned partition the consumer cannot fetch from (its leader is down and no replica took over, or
the leader's broker does not answer this scorer) leaves the scorer ready too, for the same reason: the
group coordinator still answers, so the group keeps the partition here, and any other member would
be in the same place; readiness only steers HTTP traffic, /predict does not need that partition, and
a broker that leads partitions of every replica would take /predict down everywhere for a problem it
does not have. So it is a warning, not a reason: past the stale limit (a session timeout, long enough
for a leader election) /healthz names it in `warnings` and `kafka.unfetched` ("no fetch from
partitions [1] of <events> for 12.0 s (limit 6 s): no leader ..."), and
`streamfit_scorer_partition_unfetched_seconds` shows it per partition, for alert
StreamfitScorerPartitionUnfetched. The scorer's own link is different: no answer from the broker at
all (the stale limit) is this member's problem, and the group evicts it, so that stays unready.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dagster_project.serving.champion import ChampionWatcher


def _heartbeat_answered_at(consumer: Any) -> float | None:
    """When the group coordinator last answered (time.monotonic()), as the scorer's consumer reports it
    (`ScorerConsumer.heartbeat_answered_at`: kafka-python's background heartbeat, confluent's statistics).

    This is what keeps an idle scorer ready: with no events to fetch there are no records or commits,
    only the group's heartbeats, to show that the broker still answers."""
    answered = getattr(consumer, "heartbeat_answered_at", None)
    return answered() if callable(answered) else None


def _coordinator_known(consumer: Any) -> bool | None:
    known = getattr(consumer, "coordinator_known", None)
    return known() if callable(known) else None


def _unfetchable(consumer: Any, partitions: frozenset[int]) -> dict[int, str]:
    """Assigned partitions the consumer cannot fetch from now, each with why (`ScorerConsumer.unfetchable`)."""
    unfetchable = getattr(consumer, "unfetchable", None)
    return unfetchable(partitions) if callable(unfetchable) and partitions else {}


# A batch retried this often is not a blip: /readyz says so (a dead letter over 1 MB was retried for
# ever, each retry writing the batch's predictions again, while /healthz said ok).
STUCK_AFTER_FAILURES = 3


class KafkaLink:
    """What the scorer's Kafka loop knows about its connection, for /readyz and /healthz."""

    def __init__(self, bootstrap: str, group: str, stale_after_s: float, stall_after_s: float) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self.stale_after_s = stale_after_s  # no contact for this long: the broker is gone for us
        self.stall_after_s = stall_after_s  # no poll for this long: the loop itself is stuck
        self._consumer: Any = None
        self._state = "waiting for a model"  # before a consumer exists, or after it closed
        self._polled_at: float | None = None
        self._contact_at: float | None = None
        self._assigned_at: float | None = None
        self._failed_in_a_row = 0  # poll batches whose predictions or dead letters were not all acknowledged
        self._last_failure: str | None = None
        self._failing_partitions: set[int] = set()
        self._partitions: frozenset[int] = frozenset()  # of the events topic, assigned to this member now
        self._member_assigned = False  # the current consumer (not an earlier one) has had an assignment
        self._unfetched: dict[int, tuple[float, str]] = {}  # assigned partition -> (cannot fetch since, why)

    # Written by the Kafka loop.
    def preparing(self, what: str) -> None:
        """What the loop does before its consumer exists (topics, the transactional producer)."""
        self._state = what

    def attach(self, consumer: Any) -> None:
        # The stall clock starts here: a loop stuck before its first poll returns is stuck too.
        self._consumer, self._state = consumer, "joining"
        self._polled_at, self._partitions, self._member_assigned = time.monotonic(), frozenset(), False
        self._unfetched = {}

    def detach(self, state: str) -> None:
        self._consumer, self._state = None, state
        self.batch_settled()  # the failing batch's partitions are no longer this consumer's

    def polled(self, got_records: bool) -> None:
        now = time.monotonic()
        self._polled_at = now
        if got_records:
            self._contact_at = now

    def contact(self) -> None:
        """The broker answered (a commit, a group assignment)."""
        self._contact_at = time.monotonic()

    def assigned(self, partitions: Iterable[int] = ()) -> None:
        """The group gave this member `partitions` (added to what it has: cooperative rebalances are incremental)."""
        self._partitions, self._member_assigned = self._partitions | frozenset(partitions), True
        self._assigned_at = self._contact_at = time.monotonic()

    def batch_failed(self, error: str, partitions: Iterable[int]) -> None:
        """A batch's writes failed: it is scored again from its first offset."""
        self._failed_in_a_row += 1
        self._last_failure = " ".join(error.split())[:500]
        self._failing_partitions = set(partitions)

    def batch_settled(self) -> None:
        self._failed_in_a_row, self._last_failure, self._failing_partitions = 0, None, set()

    def revoked(self, partitions: Iterable[int]) -> None:
        """The failing batch's partitions went to another member: its failures are no longer this one's.
        (Only then: a cooperative rebalance reports other members' changes too.)"""
        self._partitions = self._partitions - frozenset(partitions)
        self._unfetched = {p: seen for p, seen in self._unfetched.items() if p in self._partitions}
        if self._failing_partitions & set(partitions):
            self.batch_settled()

    def check_fetches(self) -> dict[int, float]:
        """Ask the consumer which assigned partitions it cannot fetch from; returns each assigned partition's
        seconds without a fetch (0 while it can). Called by the Kafka loop, about once a second."""
        now = time.monotonic()
        partitions = self._partitions
        blocked = _unfetchable(self._consumer, partitions)
        before = self._unfetched
        self._unfetched = {
            p: (before[p][0] if p in before else now, why) for p, why in blocked.items() if p in partitions
        }
        return {p: round(now - self._unfetched[p][0], 3) if p in self._unfetched else 0.0 for p in partitions}

    # Read from any thread.
    def last_contact(self) -> float | None:
        stamps = [t for t in (self._contact_at, _heartbeat_answered_at(self._consumer)) if t is not None]
        return max(stamps) if stamps else None

    def problem(self) -> str | None:
        """Why the consumer is not doing its job, or None when it is."""
        consumer, now = self._consumer, time.monotonic()
        if consumer is None:
            return f"the Kafka consumer is not running ({self._state})"
        where = f"the Kafka broker at {self.bootstrap}"
        contact = self.last_contact()
        if self._assigned_at is None:
            if contact is None or now - contact > self.stale_after_s:
                return f"no answer from {where} while joining consumer group {self.group}"
            return f"joining consumer group {self.group} at {self.bootstrap} (no partitions assigned yet)"
        if contact is None or now - contact > self.stale_after_s:
            silent = "ever" if contact is None else f"for {now - contact:.1f} s"
            polled = self._polled_at
            if polled is not None and now - polled > self.stale_after_s:
                # confluent serves its heartbeat statistics inside poll: a loop that does not poll hears nothing,
                # and a healthy broker behind a stuck loop was reported as "no answer from the Kafka broker".
                return (
                    f"the Kafka loop has not polled for {now - polled:.1f} s, so nothing shows that {where} answers "
                    f"(no answer {silent}): it is stuck in one batch (a hung call, or a flush waiting for an "
                    "unreachable broker); the scorer's log says which"
                )
            known = _coordinator_known(consumer)
            suffix = "; group coordinator unknown" if known is False else ""
            return f"no answer from {where} {silent} (limit {self.stale_after_s:g} s){suffix}"
        if self._failed_in_a_row >= STUCK_AFTER_FAILURES:
            return (
                f"the same batch failed {self._failed_in_a_row} times in a row, so nothing past it is committed "
                f"(its predictions are written again on each retry): {self._last_failure}"
            )
        if self._polled_at is not None and now - self._polled_at > self.stall_after_s:
            return f"the Kafka loop has not polled for {now - self._polled_at:.1f} s (limit {self.stall_after_s:g} s)"
        return None

    def unfetched(self) -> dict[str, Any] | None:
        """The assigned partitions without a fetch for longer than the stale limit: which, since when, why."""
        now, unfetched = time.monotonic(), dict(self._unfetched)
        late = {p: (now - since, why) for p, (since, why) in unfetched.items() if now - since > self.stale_after_s}
        if self._consumer is None or not late:
            return None
        by_reason: dict[str, list[int]] = {}
        for p in sorted(late):
            by_reason.setdefault(late[p][1], []).append(p)
        warning = "; ".join(
            f"no fetch from partitions {ps} of the events topic for {max(late[p][0] for p in ps):.1f} s "
            f"(limit {self.stale_after_s:g} s): {why}"
            for why, ps in by_reason.items()
        )
        return {
            "partitions": sorted(late),
            "seconds": {str(p): round(s, 1) for p, (s, _) in sorted(late.items())},
            "reasons": {str(p): why for p, (_, why) in sorted(late.items())},
            "warning": warning
            + ": its events are not scored until it is back (the scorer stays ready: /predict does not need it)",
        }

    def describe(self) -> dict[str, Any]:
        now = time.monotonic()
        contact = self.last_contact()
        assigned = self._assigned_at is not None
        partitions = sorted(self._partitions)
        return {
            "bootstrap": self.bootstrap,
            "group": self.group,
            "state": "running" if self._consumer is not None else self._state,
            "assigned": assigned,
            "partitions": partitions,
            "idle": (
                "the group gave this scorer no partitions (more scorers than the topic has partitions): it "
                "answers HTTP and takes partitions over when another scorer leaves"
                if self._member_assigned and not partitions and self._consumer is not None
                else None
            ),
            "last_contact_s_ago": round(now - contact, 3) if contact is not None else None,
            "unfetched": self.unfetched(),
            "problem": self.problem(),
        }


@dataclass(frozen=True)
class HealthReport:
    live: bool
    ready: bool
    reasons: list[str] = field(default_factory=list)  # why not ready, each naming what to look at
    detail: dict[str, Any] = field(default_factory=dict)  # the /healthz JSON


class ScorerHealth:
    """Combines the watcher (model) and the Kafka link (delivery) into liveness and readiness.

    Without a Kafka link (an HTTP-only server, as in tests and benchmarks) readiness is the model alone.
    """

    def __init__(
        self,
        stream: str,
        watcher: ChampionWatcher,
        kafka: KafkaLink | None = None,
        delivery: Callable[[], dict[str, Any]] | None = None,
        features: Any = None,
    ) -> None:
        self.stream = stream
        self.watcher = watcher
        self.kafka = kafka
        self.features = features  # the derived-feature state (`features.ServingFeatures`), when the stream has one
        self.delivery = delivery  # the Kafka loop's delivery mode and why (exactly_once / at_least_once)

    def report(self) -> HealthReport:
        served = self.watcher.current
        status = self.watcher.status
        reasons = []
        if served is None:
            where = self.watcher.registry.address
            reasons.append(
                f"no model loaded: {status.problem}"
                if status.problem
                else f"waiting for a champion in {where} (not the registry training writes? set STREAMFIT_HOME or "
                "STREAMFIT_REGISTRY as the trainer has them)"
            )
        kafka = self.kafka.describe() if self.kafka is not None else None
        if kafka is not None and kafka["problem"]:
            reasons.append(kafka["problem"])
        # What an operator must hear about that does not make the scorer unready (see the module docstring).
        warnings = [kafka["unfetched"]["warning"]] if kafka is not None and kafka["unfetched"] else []
        detail: dict[str, Any] = {
            "status": "ok" if served is not None else "waiting for a champion",
            "stream": self.stream,
            "pid": os.getpid(),  # which process answered: several serve one port with --http-processes
            "live": True,
            "ready": not reasons,
            "reasons": reasons,
            "warnings": warnings,
            "model_version": served.version if served is not None else None,
            "champion": status.alias,
            "refused": status.refused,
            "fallback": bool(served is not None and status.degraded),
            "degraded": status.problem,
            "registry": {
                "location": self.watcher.registry.address,
                "reachable": status.registry_error is None,
                "error": status.registry_error,
            },
            "kafka": kafka,
        }
        if self.delivery is not None:
            detail["delivery"] = self.delivery()
        if self.features is not None:  # not a readiness reason: every replica swaps at once, and Kafka goes on
            detail["derived_features"] = {"following": self.features.version, "catching_up": self.features.catching_up}
        return HealthReport(live=True, ready=not reasons, reasons=reasons, detail=detail)
