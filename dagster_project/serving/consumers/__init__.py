"""The scorer's group consumer, behind one small interface, in two clients.

The Kafka loop (`serving/scorer.py`) and the batch work (`serving/scoring.py`) only see
`ScorerConsumer` and `PollBatch`; `kafka_python.py` and `confluent.py` each wrap one client.
confluent-kafka (librdkafka) is the default when it is installed (`auto`; the `fast` extra): it decodes
records in C and joins the group with cooperative rebalancing, which made one replica 1.8x the kafka-python
scorer (benchmarks/README.md, "Scorer near its floor"). kafka-python, a required dependency, is the
fallback and stays selectable. Choose with `streamfit serve --client` or $STREAMFIT_SCORER_CLIENT.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterable
from typing import Any

from dagster_project.serving.consumers.base import CommitFailed, PollBatch, ScorerConsumer

CLIENT_ENV = "STREAMFIT_SCORER_CLIENT"
KAFKA_PYTHON = "kafka-python"
CONFLUENT = "confluent"
AUTO = "auto"
CHOICES = (KAFKA_PYTHON, CONFLUENT)

__all__ = [
    "AUTO",
    "CHOICES",
    "CLIENT_ENV",
    "CONFLUENT",
    "KAFKA_PYTHON",
    "CommitFailed",
    "PollBatch",
    "ScorerConsumer",
    "open_consumer",
    "requested_client",
]


def requested_client(option: str | None = None) -> str:
    """The `--client` option, else $STREAMFIT_SCORER_CLIENT, else auto; checked to be usable.

    auto: confluent when confluent-kafka is installed, else kafka-python (always installed)."""
    client = (option or os.environ.get(CLIENT_ENV) or AUTO).strip().lower()
    client = CONFLUENT if client == "confluent-kafka" else client
    if client == AUTO:
        return CONFLUENT if importlib.util.find_spec("confluent_kafka") is not None else KAFKA_PYTHON
    if client not in CHOICES:
        raise ValueError(f"unknown scorer client {client!r}: use one of {list(CHOICES)} (--client or {CLIENT_ENV})")
    if client == CONFLUENT and importlib.util.find_spec("confluent_kafka") is None:
        raise ValueError(
            f"the {CONFLUENT} scorer client needs confluent-kafka: pip install 'streamfit[fast]', "
            f"or use --client {KAFKA_PYTHON}"
        )
    return client


def open_consumer(
    client: str,
    settings: Any,
    group_id: str,
    topic: str,
    on_assigned: Callable[[Iterable[int]], None],
    on_revoked: Callable[[Iterable[int]], None],
    **options: Any,
) -> ScorerConsumer:
    """A consumer of `client` in `group_id`, subscribed to `topic`, telling the callbacks what it got and lost."""
    if client == CONFLUENT:
        from dagster_project.serving.consumers.confluent import ConfluentScorerConsumer

        return ConfluentScorerConsumer(settings, group_id, topic, on_assigned, on_revoked, **options)
    from dagster_project.serving.consumers.kafka_python import KafkaPythonScorerConsumer

    return KafkaPythonScorerConsumer(settings, group_id, topic, on_assigned, on_revoked, **options)
