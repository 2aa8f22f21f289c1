"""The ACLs each component is granted (kafka/admin_security.py) cover every topic it reads."""

from __future__ import annotations

from dagster_project.kafka.admin_security import component_grants
from tests.conftest import synthetic_spec


def test_the_trainer_may_read_the_dead_letters_it_wrote() -> None:
    """A retried or re-executed run reads the DLQ to send no dead letter twice (ingest/sent_letters.py),
    and a partition-group read does on every attempt. The trainer was granted WRITE alone there, so with
    the documented least-privilege ACLs such a run failed with NotAuthorized (READ on <stream>.dlq) on
    every attempt: the batch could never be learned."""
    spec = synthetic_spec()
    grants = {(g.resource, g.name): set(g.operations) for g in component_grants(spec, "trainer")}
    assert {"READ", "WRITE"} <= grants[("topic", spec.dlq_topic)]
