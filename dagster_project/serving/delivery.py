"""How the scorer delivers predictions: exactly once (Kafka transactions) or at least once.

- `exactly_once`: each poll batch is one Kafka transaction: its predictions and dead letters, and the
  consumer group's next offsets (`send_offsets_to_transaction`), commit together or not at all.
  Readers with `isolation_level=read_committed` see every event's prediction exactly once, across
  crashes, restarts and broker failovers. Needs a broker whose transactions work (Apache Kafka).
- `at_least_once`: predictions are acknowledged, then the offsets committed; a crash repeats at most
  the batch in flight (same event ids). The only mode on Tansu, whose aborted records stay visible.

`auto` (the default) picks exactly-once where transactions work and says why it did not elsewhere.

The transactional id is per replica, `streamfit-<stream>-scorer-<replica id>`, and must be stable
across restarts of the same replica: the restarted process then fences its predecessor and aborts
its open transaction at once, instead of downstream read_committed readers waiting for the broker to
time it out. Two live replicas must never share a replica id: the newer one fences the older, which
stops (loudly) at its next transaction.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass

from dagster_project.kafka.io import transaction_support
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.spec import StreamSpec

DELIVERY_ENV = "STREAMFIT_SCORER_DELIVERY"
REPLICA_ENV = "STREAMFIT_SCORER_REPLICA_ID"
EXACTLY_ONCE = "exactly_once"
AT_LEAST_ONCE = "at_least_once"
AUTO = "auto"
MODES = (EXACTLY_ONCE, AT_LEAST_ONCE)
CHOICES = ("exactly-once", "at-least-once", "auto")  # as the CLI and the environment spell them


class DeliveryUnavailable(ValueError):
    """Exactly-once was asked for explicitly on a broker whose transactions cannot carry it."""


def normalise(requested: str | None) -> str:
    """'exactly-once' / 'exactly_once' / 'EXACTLY-ONCE' -> 'exactly_once'; None or '' -> 'auto'."""
    value = (requested or AUTO).strip().lower().replace("-", "_")
    if value not in (*MODES, AUTO):
        raise ValueError(f"unknown delivery {requested!r}: use one of {list(CHOICES)} (or set {DELIVERY_ENV})")
    return value


def requested_delivery(option: str | None = None) -> str:
    """The CLI option, else $STREAMFIT_SCORER_DELIVERY, else auto (normalised)."""
    return normalise(option or os.environ.get(DELIVERY_ENV))


@dataclass(frozen=True)
class Delivery:
    """The resolved mode, what was asked for, and why this mode (shown in /healthz)."""

    mode: str  # exactly_once | at_least_once
    requested: str  # exactly_once | at_least_once | auto
    reason: str

    @property
    def exactly_once(self) -> bool:
        return self.mode == EXACTLY_ONCE

    def as_json(self) -> dict[str, str]:
        return {"mode": self.mode, "requested": self.requested, "reason": self.reason}


def resolve_delivery(settings: KafkaSettings, requested: str | None = AUTO) -> Delivery:
    """Turn `requested` into a mode for this broker; DeliveryUnavailable for an impossible explicit ask."""
    wanted = normalise(requested)
    if wanted == AT_LEAST_ONCE:
        return Delivery(AT_LEAST_ONCE, wanted, "at-least-once was asked for (--delivery / " + DELIVERY_ENV + ")")
    support = transaction_support(settings)
    if wanted == EXACTLY_ONCE:
        if not support.works:
            raise DeliveryUnavailable(
                f"exactly-once delivery needs working Kafka transactions, but {support.reason}: "
                f"use --delivery at-least-once (or auto), or point the scorer at Apache Kafka"
            )
        return Delivery(EXACTLY_ONCE, wanted, f"exactly-once was asked for and {support.reason}")
    if support.works:
        return Delivery(EXACTLY_ONCE, wanted, f"auto: {support.reason}")
    return Delivery(AT_LEAST_ONCE, wanted, f"auto: {support.reason}; predictions are at-least-once")


def default_replica_id(port: int, host: str | None = None) -> str:
    """`<hostname>-<port>`: stable across restarts of a replica that keeps its host name and HTTP port."""
    return f"{host or socket.gethostname()}-{port}"


def replica_id_or_default(replica_id: str | None, port: int) -> str:
    """The given id, else $STREAMFIT_SCORER_REPLICA_ID, else `default_replica_id(port)`."""
    chosen = (replica_id or os.environ.get(REPLICA_ENV) or "").strip() or default_replica_id(port)
    if not re.fullmatch(r"[A-Za-z0-9._\-]{1,200}", chosen):
        raise ValueError(f"replica id {chosen!r}: use letters, digits, '.', '_' and '-' (at most 200)")
    return chosen


def transactional_id(spec: StreamSpec, replica_id: str) -> str:
    """The scorer replica's Kafka transactional id (also what ACLs grant: prefix `streamfit-<stream>-scorer-`)."""
    return f"{transactional_id_prefix(spec)}{replica_id}"


def transactional_id_prefix(spec: StreamSpec) -> str:
    return f"streamfit-{spec.name}-scorer-"
