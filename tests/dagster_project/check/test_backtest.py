"""A sample learned through the training path without a broker: what it learns, refuses and blocks."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from dagster_project.check.backtest import backtest, sample_messages
from dagster_project.dev.datasets import census_events, sensor_events
from dagster_project.ingest.events import make_event
from dagster_project.spec import StreamSpec, load_spec

SHIPPED = Path(__file__).resolve().parents[3] / "streams"


def _messages(source, rows: int) -> list[bytes]:
    return [make_event(e.event_id, e.features, e.label, e.ts, **e.fields) for e in source(rows=rows)]


def _spec(name: str, **changes) -> StreamSpec:
    raw = load_spec(SHIPPED / f"{name}.yaml").model_dump(mode="json", exclude_defaults=True)
    return StreamSpec.model_validate(raw | changes)


def test_a_sample_is_learned_in_batches_and_its_bad_messages_are_counted_with_their_reason() -> None:
    messages = _messages(census_events, 3_000)
    messages[1_500] = b"{not json"
    wrong_type = orjson.loads(messages[2_200])
    wrong_type["features"]["age"] = "forty"
    messages[2_200] = orjson.dumps(wrong_type)
    spec = _spec("census")

    result = backtest(spec, messages, batch_rows=1_000)

    assert [(b.start, b.end, b.refused) for b in result.batches] == [
        (0, 1_000, 0),
        (1_000, 2_000, 1),
        (2_000, 3_000, 1),
    ]
    assert result.learned == 2_998 and sum(b.learned for b in result.batches) == 2_998
    examples = sorted(result.refusal_examples.values())
    assert [position for position, _ in examples] == [1_500, 2_200]
    assert examples[0][1].startswith("not valid JSON") and "'age'" in examples[1][1] and "forty" in examples[1][1]
    assert sorted(result.refusals.values()) == [1, 1]
    assert result.batches[0].metrics == {}  # no model before the first batch
    means = result.mean_metrics()
    assert means["accuracy"] > result.mean_baseline() + 0.1  # the model learned something the prior does not know
    assert result.onnx["passed"] and result.onnx["rows"] == 999 and result.problems == []  # the last batch's rows


def test_derived_features_carry_their_state_from_batch_to_batch() -> None:
    """Sensors' label needs each device's rolling level: without the state carried across batches
    the model could not reach the accuracy the feature benchmark measures."""
    result = backtest(_spec("sensors"), _messages(sensor_events, 4_000))
    assert result.refusals.total() == 0 and result.learned == 4_000
    assert result.mean_metrics()["accuracy"] > 0.95 > result.mean_baseline()
    assert result.onnx["passed"]


def test_a_batch_that_fails_its_quality_checks_is_blocked_and_not_learned() -> None:
    messages = _messages(census_events, 3_000)
    for i in range(1_000, 2_000):  # every age in the second batch is 110: within min/max, not within the mean bound
        event = orjson.loads(messages[i])
        event["features"]["age"] = 110
        messages[i] = orjson.dumps(event)
    spec = _spec("census", quality={"mean_bounds": {"age": [18, 80]}})

    result = backtest(spec, messages, batch_rows=1_000)

    assert [b.quality for b in result.batches] == ["train", "halt", "train"]
    assert result.batches[1].learned == 0 and "age" in result.batches[1].quality_detail
    assert result.learned == 2_000
    (problem,) = result.problems
    assert problem.startswith("batch 2 [1000, 2000) would halt the stream:")


def test_every_family_of_a_candidate_set_is_scored_and_a_leader_chosen() -> None:
    spec = _spec("census", model={"candidates": "recommended"})
    result = backtest(spec, _messages(census_events, 3_000), batch_rows=1_000)
    labels = [f.label for f in spec.model.families]
    assert set(result.batches[1].families) == set(labels)
    assert all(result.mean_metrics(label).get("roc_auc") for label in labels[:1])
    assert all(b.leader in labels for b in result.batches)
    assert result.onnx["passed"]


def test_a_windowed_refit_reads_its_window_back_from_the_rows_seen() -> None:
    spec = _spec("census", model={"estimator": "hist_gradient_boosting_classifier", "window_rows": 2_000})
    result = backtest(spec, _messages(census_events, 4_000), batch_rows=1_000)
    fitted_on = result.model.describe()["fitted_on"]
    assert fitted_on["ranges"] == {"0": [[2_000, 4_000]]}  # the newest whole batches within window_rows
    assert fitted_on["read"] == {"0": [2_000, 3_000]} and fitted_on["rows"] == 2_000  # the last batch was in memory
    assert result.onnx["passed"] and result.problems == []


def test_unlabelled_rows_are_counted_not_learned() -> None:
    messages = [
        make_event(e.event_id, e.features, None if i % 2 else e.label, e.ts)
        for i, e in enumerate(census_events(rows=2_000))
    ]
    result = backtest(_spec("census"), messages, batch_rows=1_000)
    assert result.learned == 1_000 and sum(b.unlabelled for b in result.batches) == 1_000


def test_a_sample_the_spec_does_not_describe_is_a_problem_naming_an_example() -> None:
    messages = [orjson.dumps({"id": f"e{i}", "features": {"other": 1.0}, "label": 0}) for i in range(50)]
    result = backtest(_spec("census"), messages)
    assert result.learned == 0
    (problem,) = result.problems
    assert (
        problem.startswith("every message was refused, e.g. message 0:") and "does the spec match the data?" in problem
    )


def test_sample_messages_reads_lines_up_to_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "sample.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"b": 2}\n{"c": 3}\n')
    assert sample_messages(path) == [b'{"a": 1}', b'{"b": 2}', b'{"c": 3}']
    assert sample_messages(path, limit=2) == [b'{"a": 1}', b'{"b": 2}']


@pytest.mark.parametrize("rows", [1, 999])
def test_a_batch_shorter_than_the_spec_is_learned(rows: int) -> None:
    result = backtest(_spec("census"), _messages(census_events, 1_000 + rows), batch_rows=1_000)
    assert [b.learned for b in result.batches] == [1_000, rows]
