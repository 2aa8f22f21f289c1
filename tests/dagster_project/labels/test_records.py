"""Prediction and label records: class values compared by the event rule, contract violations refused."""

from __future__ import annotations

import orjson
import pytest

from dagster_project.labels import RecordParser, make_label
from tests.conftest import synthetic_spec
from tests.helpers import prediction


def test_record_parser_uses_the_event_label_rule() -> None:
    numbers = RecordParser(synthetic_spec(label={"classes": [0, 1]}))
    assert numbers.label(make_label("e", 1.0)) == ("e", 1.0)
    with pytest.raises(ValueError, match="not one of the spec's classes"):
        numbers.label(make_label("e", True))
    booleans = RecordParser(synthetic_spec(label={"classes": [False, True]}))
    with pytest.raises(ValueError, match="not one of the spec's classes"):
        booleans.prediction(prediction("e", "v1", 1)[1])
    assert booleans.prediction(prediction(7, "v1", True)[1]) == ("7", "v1", True)
    with pytest.raises(ValueError, match="model_version"):
        numbers.prediction(orjson.dumps({"id": "e", "prediction": 1}))
    regression = RecordParser(synthetic_spec(task="regression", model={"estimator": "sgd_regressor"}, label={}))
    with pytest.raises(ValueError, match="finite number"):
        regression.label(make_label("e", True))
    # 1e200 is finite, but its squared error is not: the joiner's checkpoint stored null and every
    # restart crashed on it. Refused as training refuses it.
    with pytest.raises(ValueError, match="regression label 1e\\+200 is beyond the magnitude limit"):
        regression.label(make_label("e", 1e200))
    with pytest.raises(ValueError, match="'id' must be a string or an integer within 64 bits, got a number beyond"):
        numbers.label(b'{"id": 123456789012345678901234567890, "label": 1}')
    # An event id over 1,024 characters is dead-lettered, so its label could only wait to expire
    with pytest.raises(ValueError, match="record 'id' is 1,025 characters long, over the 1,024 an event id may have"):
        numbers.label(make_label("i" * 1025, 1))


def test_a_prediction_s_event_time_is_its_ts_less_its_latency() -> None:
    parser = RecordParser(synthetic_spec(label={"classes": [0, 1]}))
    body = {"id": "e", "prediction": 1, "model_version": "v1", "ts": 1000.5, "latency_ms": 250.0}
    assert parser.timed_prediction(orjson.dumps(body)) == ("e", "v1", 1, 1_000_250.0)
    for missing in ({"latency_ms": None}, {"ts": None}, {"latency_ms": "250"}, {"ts": 1e306}):  # 1e306 s: inf ms
        assert parser.timed_prediction(orjson.dumps(body | missing))[3] is None


@pytest.mark.parametrize(
    ("raw", "token", "position"),
    [(b'{"id": "e", "label": NaN}', "NaN", 21), (b'{"id": "e", "label": -Infinity}', "Infinity", 22)],
)
def test_a_nan_or_infinity_label_is_named_as_training_names_it(raw: bytes, token: str, position: int) -> None:
    """The labels topic's dead letter said only "unexpected character, expected a JSON value", where
    training's names the literal and the fix: one producer's json.dumps, two different reasons."""
    regression = RecordParser(synthetic_spec(task="regression", model={"estimator": "sgd_regressor"}, label={}))
    with pytest.raises(ValueError) as info:
        regression.label(raw)
    assert str(info.value) == (
        f"label is not valid JSON: {token} at character {position} is not a JSON number (Python's json.dumps "
        "writes it unless allow_nan=False): send a finite number, or null for a nullable feature"
    )
    with pytest.raises(
        ValueError, match="label is not valid JSON: str is not valid UTF-8"
    ):  # not a literal: orjson's words
        regression.label(b'{"id": "e", "label": \xff}')
