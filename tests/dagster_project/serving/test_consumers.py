"""Which consumer client the scorer uses: the option, then $STREAMFIT_SCORER_CLIENT, then kafka-python."""

from __future__ import annotations

import pytest

from dagster_project.serving.consumers import CONFLUENT, requested_client


def test_the_client_comes_from_the_option_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMFIT_SCORER_CLIENT", raising=False)
    assert requested_client() == "kafka-python"
    monkeypatch.setenv("STREAMFIT_SCORER_CLIENT", "confluent-kafka")
    assert requested_client() == CONFLUENT
    assert requested_client("kafka-python") == "kafka-python"
    with pytest.raises(ValueError, match="unknown scorer client 'rdkafka'.*STREAMFIT_SCORER_CLIENT"):
        requested_client("rdkafka")
