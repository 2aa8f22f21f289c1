"""Which consumer client the scorer uses: the option, then $STREAMFIT_SCORER_CLIENT, then auto
(confluent-kafka when installed, else kafka-python)."""

from __future__ import annotations

import sys

import pytest

from dagster_project.serving.consumers import CONFLUENT, KAFKA_PYTHON, requested_client


def test_the_client_comes_from_the_option_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMFIT_SCORER_CLIENT", "confluent-kafka")
    assert requested_client() == CONFLUENT
    assert requested_client("kafka-python") == KAFKA_PYTHON
    with pytest.raises(ValueError, match="unknown scorer client 'rdkafka'.*STREAMFIT_SCORER_CLIENT"):
        requested_client("rdkafka")


def test_by_default_the_scorer_consumes_with_confluent_kafka_when_it_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("confluent_kafka")
    monkeypatch.delenv("STREAMFIT_SCORER_CLIENT", raising=False)
    assert requested_client() == CONFLUENT
    assert requested_client("auto") == CONFLUENT


def test_without_confluent_kafka_the_default_falls_back_and_an_explicit_request_names_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STREAMFIT_SCORER_CLIENT", raising=False)
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # find_spec raises ValueError for a None entry
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "confluent_kafka" else object())
    assert requested_client() == KAFKA_PYTHON
    assert requested_client("auto") == KAFKA_PYTHON
    with pytest.raises(ValueError, match=r"pip install 'streamfit\[fast\]'"):
        requested_client(CONFLUENT)
