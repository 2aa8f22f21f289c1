"""A sample learned through the training path without a broker: what it learns, refuses and blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


def _xor(rows: int, seed: int = 3) -> list[bytes]:
    """Two features whose product's sign is the class: no linear model beats chance, trees do."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(rows, 2))
    return [make_event(f"e{i}", {"a": float(a), "b": float(b)}, int(a * b > 0), float(i)) for i, (a, b) in enumerate(X)]


def _contiguous(result) -> dict[int, int]:
    """Each partition's learned ranges follow one another with no gap or overlap; returns their ends."""
    ends: dict[int, int] = {}
    for batch in result.batches:
        for p, (start, end) in batch.ranges.items():
            assert start == ends.get(p, 0) and end > start, (batch.number, p, start, end, ends)
            ends[p] = end
    return ends


def test_a_sample_is_learned_exactly_once_and_its_bad_messages_are_counted_with_their_reason() -> None:
    messages = _messages(census_events, 3_000)
    messages[1_500] = b"{not json"
    wrong_type = orjson.loads(messages[2_200])
    wrong_type["features"]["age"] = "forty"
    messages[2_200] = orjson.dumps(wrong_type)
    messages[990:1_000] = [b"[]"] * 10  # the first batch's last lines: most are in its tail, learned next

    result = backtest(_spec("census"), messages, batch_rows=1_000)

    assert _contiguous(result) == {p: n for p, n in result.partitions.items()}  # every offset, once
    assert sum(b.messages for b in result.batches) == 3_000 and sum(result.partitions.values()) == 3_000
    assert result.learned == 2_988 and sum(b.refused for b in result.batches) == result.refusals.total() == 12
    assert all(b.tail for b in result.batches[:3])  # the promotion tail is held back and learned next
    assert result.refusal_examples["event must be a JSON object, got list"][0] in range(990, 1_000)
    examples = sorted(v for k, v in result.refusal_examples.items() if "got list" not in k)
    assert [position for position, _ in examples] == [1_500, 2_200]
    assert examples[0][1].startswith("not valid JSON") and "'age'" in examples[1][1] and "forty" in examples[1][1]
    assert result.batches[0].metrics == {}  # no model before the first batch
    assert result.mean_metrics()["accuracy"] > result.mean_baseline() + 0.1  # learned what the prior does not know
    assert result.onnx["passed"] and result.onnx["rows"] == 1_000 and result.problems == []  # a batch's worth


def test_lines_are_placed_on_partitions_as_streamfit_produce_keys_them() -> None:
    """Sensors key by device (derived features are per partition): each device on one partition, so
    its rolling level sees its whole history and the label it explains is learned."""
    from dagster_project.check.backtest import _Placement

    spec = _spec("sensors")
    messages = _messages(sensor_events, 4_000)
    place = _Placement(spec, messages)
    devices = [orjson.loads(m)["device"] for m in messages]
    assert all(len(set(place.partitions[[d == name for d in devices]])) == 1 for name in set(devices))
    assert set(place.partitions.tolist()) == {0, 1}

    result = backtest(spec, messages)
    assert result.refusals.total() == 0 and result.learned == 4_000
    assert result.mean_metrics()["accuracy"] > 0.95 > result.mean_baseline()
    assert result.onnx["passed"]


def test_a_batch_that_fails_its_quality_checks_is_blocked_and_not_learned() -> None:
    messages = _messages(census_events, 3_000)
    for i in range(1_500, 3_000):  # every age from here on is 110: within min/max, not within the mean bound
        event = orjson.loads(messages[i])
        event["features"]["age"] = 110
        messages[i] = orjson.dumps(event)
    spec = _spec("census", quality={"mean_bounds": {"age": [18, 80]}})

    result = backtest(spec, messages, batch_rows=1_000)

    assert result.batches[0].quality == "train" and result.blocked
    assert all(b.learned == 0 and "age" in b.quality_detail for b in result.blocked)
    assert result.learned == sum(b.learned for b in result.batches if b.quality == "train") < 3_000
    assert all(" would halt the stream:" in problem for problem in result.problems)
    assert not any("labelled" in problem for problem in result.problems)


def test_an_unseen_category_s_block_quotes_the_raw_value_as_production_does() -> None:
    messages = _messages(census_events, 2_000)
    for i in range(1_000, 2_000):  # the upstream renamed a category
        event = orjson.loads(messages[i])
        if event["features"]["workclass"] == "Private":
            event["features"]["workclass"] = "Space-0"
            messages[i] = orjson.dumps(event)

    result = backtest(_spec("census"), messages, batch_rows=1_000)

    blocked = [b for b in result.blocked if "unseen categories in 'workclass'" in b.quality_detail]
    assert blocked and all("'Space-0' at " in b.quality_detail for b in blocked), blocked  # not its code


def test_a_batch_of_only_refused_messages_is_passed_over_as_production_does() -> None:
    """Its learned part has no row: production passes it over (quality.passed_over) where the suite's
    row count (quality.min_rows 1) halted the stream, and so does the backtest."""
    messages = _messages(census_events, 2_000)
    messages[:1_000] = [b"{bad" for _ in range(1_000)]
    result = backtest(_spec("census"), messages, batch_rows=1_000)
    first = result.batches[0]
    assert first.refused == first.messages and first.quality == "passed_over" and first.learned == 0
    assert "nothing to learn" in first.quality_detail and not result.blocked
    assert not any(problem.startswith("batch 1 p0[") for problem in result.problems)
    assert result.learned > 0


def test_the_leader_is_chosen_on_each_batch_s_tail_and_a_non_linear_family_takes_over() -> None:
    spec = StreamSpec.model_validate(
        {
            "name": "xor",
            "task": "classification",
            "features": [{"name": "a"}, {"name": "b"}],
            "label": {"classes": [0, 1]},
            "model": {"candidates": "recommended"},
        }
    )
    result = backtest(spec, _xor(6_000), batch_rows=1_000)
    labels = [f.label for f in spec.model.families]
    assert set(result.batches[1].families) == set(labels) and labels[0] == "sgd"
    # the first batch's tail, which neither family had learned, already shows the trees far ahead
    assert result.batches[0].leader_reason.startswith("hgb leads: roc_auc better than sgd by")
    assert f"on {result.batches[1].tail} unseen rows" in result.batches[1].leader_reason  # the tail, not the batch
    assert all(b.leader == "hgb" for b in result.batches)
    assert result.mean_metrics("hgb")["accuracy"] > 0.9 > 0.6 > result.mean_metrics("sgd")["accuracy"]
    for batch in result.batches[1:]:  # from the second batch on, what serves (and is measured) is hgb
        assert batch.metrics["accuracy"] == pytest.approx(batch.families["hgb"]["accuracy"])
    assert result.onnx["passed"]


def test_a_windowed_refit_reads_its_window_back_from_the_rows_seen() -> None:
    spec = _spec("census", partitions=1, model={"estimator": "hist_gradient_boosting_classifier", "window_rows": 2_000})
    messages = [  # every third row unlabelled: a window read keeps labelled rows only, as kafka_reader does
        make_event(e.event_id, e.features, None if i % 3 == 0 else e.label, e.ts)
        for i, e in enumerate(census_events(rows=4_000))
    ]
    result = backtest(spec, messages, batch_rows=1_000)
    fitted_on = result.model.describe()["fitted_on"]
    window, offsets, total = [], 0, 0
    for batch in reversed(result.batches):  # the newest whole batches within window_rows offsets
        start, end = batch.ranges[0]
        if offsets + end - start > 2_000:
            break
        window.append((start, end))
        offsets += end - start
        total += batch.learned
    assert total < offsets * 0.7
    assert fitted_on["ranges"] == {"0": [[window[-1][0], window[0][1]]]}
    assert fitted_on["read"] == {"0": [window[-1][0], window[0][0]]}  # the last batch was in memory
    assert fitted_on["rows"] == total and result.onnx["passed"] and result.problems == []


def test_a_windowed_classifier_whose_first_window_misses_a_class_fails_like_its_run() -> None:
    messages = [
        make_event(f"e{i}", {"a": float(i % 7), "b": 1.0}, 0 if i < 1_500 else 1, float(i)) for i in range(2_500)
    ]
    spec = StreamSpec.model_validate(
        {
            "name": "oneclass",
            "task": "classification",
            "features": [{"name": "a"}, {"name": "b"}],
            "label": {"classes": [0, 1]},
            "model": {"estimator": "hist_gradient_boosting_classifier", "window_rows": 1_000},
        }
    )
    result = backtest(spec, messages, batch_rows=1_000)
    assert result.failure and "the first window holds no labelled row of class(es) [1]" in result.failure
    assert "Make batch.rows large enough" in result.failure and "model.candidates" in result.failure
    (problem,) = result.problems
    assert problem.startswith("training would fail, and the stream halt after its retries:")

    # With an incremental family beside it, the SGD family serves while the windowed one waits for
    # class 1, and the windowed one fits (and may lead) once a batch brings it.
    candidates = spec.model_copy(
        update={
            "model": spec.model.model_validate(
                {
                    "candidates": [
                        {"estimator": "sgd_classifier"},
                        {"estimator": "hist_gradient_boosting_classifier", "window_rows": 1_000},
                    ]
                }
            )
        }
    )
    result = backtest(candidates, messages, batch_rows=1_000)
    assert result.failure is None, result.failure
    assert sum(b.messages for b in result.batches) == 2_500  # every batch learned (tails held out in turn)
    waiting = result.model.members["hist_gradient_boosting_classifier"]
    assert waiting.pipeline is not None and waiting.refits >= 1


def test_unlabelled_rows_are_counted_not_learned() -> None:
    messages = [
        make_event(e.event_id, e.features, None if i % 2 else e.label, e.ts)
        for i, e in enumerate(census_events(rows=2_000))
    ]
    result = backtest(_spec("census"), messages, batch_rows=1_000)
    assert result.learned == 1_000 and sum(b.unlabelled for b in result.batches) == 1_000


def test_a_label_sent_under_label_name_is_named_with_where_the_label_must_be() -> None:
    """label.name only names the target: an event's label is its top-level "label", whatever the name."""
    rows = [orjson.loads(m) for m in _messages(census_events, 300)]
    spec = _spec("census")  # label.name: income_over_50k
    unlabelled = [orjson.dumps({k: v for k, v in e.items() if k != "label"}) for e in rows]
    (problem,) = backtest(spec, unlabelled).problems
    assert problem == (
        "no labelled row was learned: the sample needs labelled events, the label in each event's "
        'top-level "label" key; label.name only names it'
    )

    misplaced = [
        orjson.dumps({**{k: v for k, v in e.items() if k != "label"}, "income_over_50k": e["label"]}) for e in rows
    ]
    result = backtest(spec, misplaced)
    assert result.learned == 0 and result.named_label_events == 300
    (problem,) = result.problems
    assert problem == (
        'no labelled row was learned: 300 event(s) carry a top-level "income_over_50k" (the spec\'s label.name) '
        'but no "label": send the label in each event\'s top-level "label" key; label.name only names it'
    )


def test_a_sample_the_spec_does_not_describe_is_a_problem_naming_an_example() -> None:
    messages = [orjson.dumps({"id": f"e{i}", "features": {"other": 1.0}, "label": 0}) for i in range(50)]
    result = backtest(_spec("census"), messages)
    assert result.learned == 0
    (first, *_) = result.problems
    assert first.startswith("every message was refused, e.g. message 0:")
    assert "does the spec match the data?" in first


def test_sample_messages_reads_lines_up_to_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "sample.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"b": 2}\n{"c": 3}\n')
    assert sample_messages(path) == [b'{"a": 1}', b'{"b": 2}', b'{"c": 3}']
    assert sample_messages(path, limit=2) == [b'{"a": 1}', b'{"b": 2}']


@pytest.mark.parametrize("rows", [1, 999, 2_500])
def test_every_line_is_learned_once_whatever_the_sample_s_length(rows: int) -> None:
    result = backtest(_spec("census"), _messages(census_events, rows), batch_rows=1_000)
    assert sum(b.messages for b in result.batches) == rows == result.learned
    _contiguous(result)


def test_a_window_reaching_back_past_a_blocked_batch_reads_the_learned_batch_before_it() -> None:
    """A blocked batch is not in the model's window: the window's older part is the learned batch
    before it, which the backtest must still hold (it keeps as many learned batches as a window spans)."""
    messages = _messages(census_events, 1_500)
    for i in range(500, 1_000):  # the second batch fails its mean bound and is not learned
        event = orjson.loads(messages[i])
        event["features"]["age"] = 110
        messages[i] = orjson.dumps(event)
    spec = _spec(
        "census",
        partitions=1,
        quality={"mean_bounds": {"age": [18, 80]}},
        model={"estimator": "hist_gradient_boosting_classifier", "window_rows": 1_000},
        promotion={"tail_rows": 0},  # batches on the 500-row boundaries
    )
    result = backtest(spec, messages, batch_rows=500)
    assert [b.quality for b in result.batches] == ["train", "halt", "train"]
    fitted_on = result.model.describe()["fitted_on"]
    assert fitted_on["ranges"] == {"0": [[0, 500], [1_000, 1_500]]}
    assert fitted_on["rows"] == result.batches[0].learned + result.batches[2].learned


def test_a_batch_refused_whole_by_a_schema_change_is_blocked_as_production_does() -> None:
    """Every message naming a feature the spec lacks: production halts there (a schema change is not
    junk, quality.passed_over.SCHEMA_KINDS), but the backtest said it would be passed over."""
    messages = _messages(census_events, 2_000)
    for i in range(1_000):  # the producers added a field
        event = orjson.loads(messages[i])
        event["features"]["browser"] = "firefox"
        messages[i] = orjson.dumps(event)
    result = backtest(_spec("census"), messages, batch_rows=1_000)
    first = result.batches[0]
    assert first.refused == first.messages and first.quality != "passed_over", first.quality_detail
    assert result.blocked and result.blocked[0] is first
