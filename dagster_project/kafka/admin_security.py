"""Setting up a secured Kafka cluster for Streamfit: SCRAM users and the ACLs each component needs.

For an operator (or a test) holding admin rights on the cluster: `settings` are the admin's own
connection settings (a super user, or a principal with ALTER on the cluster). Everything goes through
the Kafka admin API (kafka-python's KafkaAdminClient): SCRAM credentials with
AlterUserScramCredentials (KIP-554, no broker restart, no StorageTool), ACLs with CreateAcls.
Both calls are upserts: running the setup twice changes nothing.

    from dagster_project.kafka.admin_security import create_scram_user, grant_component
    create_scram_user(admin, "trainer", password)
    grant_component(admin, "User:trainer", spec, "trainer")

`COMPONENT_ACLS` is the least each component needs for one stream (README, "Running on other brokers").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from dagster_project.kafka import clients
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.spec import StreamSpec

SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
OPERATIONS = ("READ", "WRITE", "CREATE", "DELETE", "ALTER", "DESCRIBE", "DESCRIBE_CONFIGS", "ALTER_CONFIGS")
Component = Literal["producer", "trainer", "scorer", "label-joiner"]


class SecuritySetupError(RuntimeError):
    """The broker refused a user or ACL change; the message says which and why."""


@dataclass(frozen=True)
class Grant:
    """Operations a principal needs on one resource: a topic, a consumer group or a transactional id,
    by exact name (or every name starting with `name` when `prefixed`)."""

    resource: Literal["topic", "group", "transactional_id"]
    name: str
    operations: tuple[str, ...]
    prefixed: bool = False


def component_grants(spec: StreamSpec, component: Component) -> list[Grant]:
    """The ACLs `component` needs for `spec`'s stream and nothing more (READ and WRITE imply DESCRIBE).

    producer: writes events and labels (CREATE: `streamfit produce` creates them when missing).
    trainer (sensor, training runs): reads events, dead-letters to the DLQ (reading it on a retry, to send
    no letter twice: `ingest.sent_letters`), commits its group's offsets.
    scorer: reads events in the scorers' group, writes predictions and dead letters, and (exactly-once)
    uses the transactional ids `streamfit-<stream>-scorer-<replica id>` of its replicas.
    label-joiner: reads predictions and labels in its group, dead-letters unreadable ones.
    """
    from dagster_project.labels.joiner import labels_group
    from dagster_project.serving.delivery import transactional_id_prefix
    from dagster_project.serving.scorer import scorer_group

    events, labels, dlq, predictions = spec.events_topic, spec.labels_topic, spec.dlq_topic, spec.predictions_topic
    table: dict[str, list[Grant]] = {
        "producer": [
            Grant("topic", events, ("WRITE", "DESCRIBE", "CREATE")),
            Grant("topic", labels, ("WRITE", "DESCRIBE", "CREATE")),
        ],
        "trainer": [
            Grant("topic", events, ("READ", "DESCRIBE")),
            # READ: a retried run (and a partition-group read) reads which messages it already dead-lettered
            Grant("topic", dlq, ("READ", "WRITE")),
            Grant("group", spec.trainer_group, ("READ",)),
        ],
        "scorer": [
            Grant("topic", events, ("READ",)),
            Grant("topic", predictions, ("WRITE",)),
            Grant("topic", dlq, ("WRITE",)),
            Grant("group", scorer_group(spec), ("READ",)),
            Grant("transactional_id", transactional_id_prefix(spec), ("WRITE", "DESCRIBE"), prefixed=True),
        ],
        "label-joiner": [
            Grant("topic", predictions, ("READ",)),
            Grant("topic", labels, ("READ",)),
            Grant("topic", dlq, ("WRITE",)),
            Grant("group", labels_group(spec), ("READ",)),
        ],
    }
    if component not in table:
        raise ValueError(f"unknown component {component!r}: one of {sorted(table)}")
    return table[component]


def create_scram_user(
    settings: KafkaSettings,
    name: str,
    password: str,
    mechanism: str = "SCRAM-SHA-512",
    iterations: int = 8192,
) -> None:
    """Create `name`'s SCRAM credential, or replace its password (an upsert), through the admin API.

    Only the salted password leaves this process (the client derives it with PBKDF2, `iterations`
    rounds; Kafka wants at least 4096). The user can log in on SASL listeners with `mechanism` as soon
    as the change reaches the brokers' metadata, typically well under a second.
    """
    from kafka.admin import UserScramCredentialUpsertion

    mechanism = mechanism.strip().upper()
    if mechanism not in SCRAM_MECHANISMS:
        raise ValueError(f"SCRAM mechanism must be one of {list(SCRAM_MECHANISMS)}, not {mechanism!r}")
    if not name or not password:
        raise ValueError("a SCRAM user needs a name and a password")
    upsert = UserScramCredentialUpsertion(name, mechanism, password, iterations=iterations)
    admin = clients.admin(settings)
    try:
        errors = admin.alter_user_scram_credentials([upsert])
    finally:
        admin.close()
    if errors.get(name):
        raise SecuritySetupError(f"the broker refused the {mechanism} credential of {name!r}: {errors[name]}")


def delete_scram_user(settings: KafkaSettings, name: str, mechanism: str = "SCRAM-SHA-512") -> None:
    """Remove `name`'s `mechanism` credential: its next SASL login fails (open connections stay until closed)."""
    from kafka.admin import UserScramCredentialDeletion

    admin = clients.admin(settings)
    try:
        errors = admin.alter_user_scram_credentials([UserScramCredentialDeletion(name, mechanism.strip().upper())])
    finally:
        admin.close()
    if errors.get(name):
        raise SecuritySetupError(f"the broker refused to delete the {mechanism} credential of {name!r}: {errors[name]}")


def grant(
    settings: KafkaSettings,
    principal: str,
    *,
    topic: str | None = None,
    group: str | None = None,
    transactional_id: str | None = None,
    operations: Iterable[str],
    prefixed: bool = False,
    host: str = "*",
) -> int:
    """ALLOW `principal` (e.g. "User:trainer", or "User:CN=..." for a TLS client) `operations` on `topic`,
    consumer `group` and/or `transactional_id`; returns how many ACLs were sent (creating an existing ACL is
    a no-op).

    Names are literal unless `prefixed` (then every topic/group whose name starts with it). Operations are
    Kafka's ACL operations by name: READ, WRITE, CREATE, DESCRIBE, ... A group accepts READ, DESCRIBE, DELETE.
    """
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType

    if ":" not in principal:
        raise ValueError(f"a principal has a type: 'User:{principal}', not {principal!r}")
    names = [op.strip().upper() for op in operations]
    unknown = [op for op in names if op not in OPERATIONS]
    if unknown or not names:
        raise ValueError(f"operations must be some of {list(OPERATIONS)}, not {list(operations)}")
    if topic is None and group is None and transactional_id is None:
        raise ValueError("grant needs a topic, a group or a transactional id")
    pattern = ACLResourcePatternType.PREFIXED if prefixed else ACLResourcePatternType.LITERAL
    resources = [
        (ResourceType.TOPIC, topic),
        (ResourceType.GROUP, group),
        (ResourceType.TRANSACTIONAL_ID, transactional_id),
    ]
    acls = [
        ACL(principal, host, ACLOperation[op], ACLPermissionType.ALLOW, ResourcePattern(kind, name, pattern))
        for kind, name in resources
        if name is not None
        for op in names
    ]
    admin = clients.admin(settings)
    try:
        result = admin.create_acls(acls)
    finally:
        admin.close()
    if result["failed"]:
        raise SecuritySetupError(
            f"the broker refused {len(result['failed'])} of {len(acls)} ACLs for {principal}: {result['failed'][0]!r} "
            "(the admin settings need a super user, or ALTER on the cluster, and the broker an authorizer)"
        )
    return len(acls)


def grant_component(settings: KafkaSettings, principal: str, spec: StreamSpec, component: Component) -> int:
    """Grant `principal` exactly what `component` needs for `spec`'s stream (`component_grants`)."""
    sent = 0
    for needed in component_grants(spec, component):
        where = {needed.resource: needed.name}
        sent += grant(settings, principal, operations=needed.operations, prefixed=needed.prefixed, **where)
    return sent
