"""The event contract: which messages become training rows, and why the others are dead-lettered."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from dagster_project.ingest.events import (
    MAX_ID_CHARS,
    EventParser,
    InvalidEvent,
    ParsedEvent,
    coerce_feature,
    make_event,
    reason_kind,
)
from dagster_project.spec import StreamSpec

FEATURES = [
    {"name": "f", "type": "float"},
    {"name": "i", "type": "int"},
    {"name": "b", "type": "bool"},
    {"name": "n", "type": "float", "nullable": True},
]
GOOD = {"f": 1.5, "i": 3, "b": True, "n": 0.25}


def make_spec(task: str = "classification", classes: list | None = None) -> StreamSpec:
    return StreamSpec(
        name="events",
        task=task,
        features=FEATURES,
        label={"classes": [0, 1] if classes is None else classes} if task == "classification" else {},
        model={"estimator": "sgd_classifier" if task == "classification" else "sgd_regressor"},
    )


DROP = object()  # a value that removes its key from the event


def event(**changes) -> bytes:
    """A valid event with top-level keys replaced; `features={...}` replaces single features."""
    features = changes.pop("features", {})
    if isinstance(features, dict):
        features = {k: v for k, v in (GOOD | features).items() if v is not DROP}
    body = {"id": "e1", "ts": 1.0, "features": features, "label": 1} | changes
    return orjson.dumps({k: v for k, v in body.items() if v is not DROP})


@pytest.fixture(scope="module")
def parser() -> EventParser:
    return EventParser(make_spec())


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(event(), ParsedEvent("e1", 1.0, [1.5, 3.0, 1.0, 0.25], 1, None), id="all-types"),
        pytest.param(
            event(id=42, ts=None, label=0), ParsedEvent("42", None, [1.5, 3.0, 1.0, 0.25], 0, None), id="int-id"
        ),
        pytest.param(event(label=DROP), ParsedEvent("e1", 1.0, [1.5, 3.0, 1.0, 0.25], None, None), id="unlabelled"),
        pytest.param(
            event(features={"i": 4.0, "b": 0, "f": -7}),
            ParsedEvent("e1", 1.0, [-7.0, 4.0, 0.0, 0.25], 1, None),
            id="integral-float-for-int-and-0-for-bool",
        ),
        pytest.param(event(ts=DROP), ParsedEvent("e1", None, [1.5, 3.0, 1.0, 0.25], 1, None), id="no-ts"),
        pytest.param(
            make_event("e9", GOOD, label=0, ts=2.5),
            ParsedEvent("e9", 2.5, [1.5, 3.0, 1.0, 0.25], 0, None),
            id="make_event",
        ),
    ],
)
def test_good_messages(parser: EventParser, raw: bytes, expected: ParsedEvent) -> None:
    assert parser.parse(raw) == expected


def test_null_in_nullable_feature_is_nan(parser: EventParser) -> None:
    parsed = parser.parse(event(features={"n": None}))
    assert math.isnan(parsed.values[3])
    assert parsed.values[:3] == [1.5, 3.0, 1.0]


@pytest.mark.parametrize(
    ("raw", "fragments"),
    [
        pytest.param(None, ["empty message"], id="null-value"),
        pytest.param(b"{not json", ["not valid JSON"], id="malformed-json"),
        pytest.param(b"", ["not valid JSON"], id="empty-bytes"),
        pytest.param(b'{"id": "e1", "features": {"f": NaN}}', ["not valid JSON"], id="nan-literal"),
        pytest.param(b'{"id": "e1", "features": {"f": 1e400}}', ["not valid JSON"], id="overflow-to-inf"),
        pytest.param(
            b'{"id": "e1\xff", "features": {}}',
            ["not valid JSON: byte 10 (0xff) is not UTF-8 (invalid start byte): JSON messages must be UTF-8 text"],
            id="not-utf8-where-and-why",  # orjson said "surrogates not allowed: line 1 column 1"
        ),
        pytest.param(b"[1, 2]", ["must be a JSON object", "list"], id="array"),
        pytest.param(b'"text"', ["must be a JSON object", "str"], id="string"),
        pytest.param(event(id=DROP), ["no 'id'"], id="missing-id"),
        pytest.param(event(id=""), ["no 'id'"], id="empty-id"),
        pytest.param(event(id=True), ["no 'id'"], id="bool-id"),
        pytest.param(event(id=1.5), ["'id' must be a string or an integer within 64 bits"], id="float-id"),
        pytest.param(b'{"id": 100000000000000000000000}', ["integer within 64 bits, got 1e+23"], id="huge-id"),
        pytest.param(event(features=DROP), ["no 'features' object"], id="missing-features"),
        pytest.param(event(features=[1.5, 3]), ["no 'features' object"], id="features-not-object"),
        pytest.param(event(features={"i": DROP}), ["missing feature(s) ['i']"], id="missing-feature"),
        pytest.param(event(features={"zz": 1.0}), ["unknown feature(s) ['zz']"], id="unknown-feature"),
        pytest.param(event(features={"f": "1.5"}), ["'f'", "must be a number", "str"], id="string-for-float"),
        pytest.param(event(features={"f": True}), ["'f'", "must be a number", "bool"], id="bool-for-float"),
        pytest.param(event(features={"f": [1.0]}), ["'f'", "must be a number"], id="list-for-float"),
        pytest.param(event(features={"i": 3.5}), ["'i'", "must be an integer", "3.5"], id="float-for-int"),
        pytest.param(event(features={"i": "3"}), ["'i'", "must be a number"], id="string-for-int"),
        pytest.param(event(features={"b": 2}), ["'b'", "must be a bool", "2"], id="two-for-bool"),
        pytest.param(event(features={"b": "true"}), ["'b'", "must be a bool", "str"], id="string-for-bool"),
        pytest.param(event(features={"b": 0.5}), ["'b'", "must be a bool"], id="half-for-bool"),
        pytest.param(event(features={"f": None}), ["'f'", "is null", "does not allow nulls"], id="null-non-nullable"),
        pytest.param(event(features={"b": None}), ["'b'", "is null"], id="null-bool"),
        pytest.param(event(ts="yesterday"), ["'ts' must be a number"], id="string-ts"),
        pytest.param(event(ts=True), ["'ts' must be a number"], id="bool-ts"),
        pytest.param(event(label=2), ["label 2 is not one of the spec's classes [0, 1]"], id="unknown-class"),
        pytest.param(event(label="1"), ["label '1' is not one of"], id="string-class"),
        pytest.param(event(label=True), ["label True is not one of"], id="true-is-not-1"),
    ],
)
def test_bad_messages_say_why(parser: EventParser, raw: bytes | None, fragments: list[str]) -> None:
    with pytest.raises(InvalidEvent) as info:
        parser.parse(raw)
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("raw", "token", "position"),
    [
        (b'{"id": "e1", "features": {"f": NaN}}', "NaN", 31),
        (b'{"id": "e1", "features": {"f": -Infinity}}', "Infinity", 32),
        ('{"id": "é€1", "features": {"f": Infinity}}'.encode(), "Infinity", 32),  # characters, not bytes
        (b'{"id": "e1", "features": {"f": nan}}', "nan", 31),
    ],
)
def test_a_nan_or_infinity_literal_is_named_with_the_fix(
    parser: EventParser, raw: bytes, token: str, position: int
) -> None:
    """Python's json.dumps writes NaN/Infinity by default; the dead letter said only "unexpected
    character, expected a JSON value: line 1 column 32", naming neither the value nor the fix."""
    reason = (
        f"not valid JSON: {token} at character {position} is not a JSON number (Python's json.dumps writes it "
        "unless allow_nan=False): send a finite number, or null for a nullable feature"
    )
    with pytest.raises(InvalidEvent) as info:
        parser.parse(raw)
    assert str(info.value) == reason
    assert [reason for _, reason in parser.parse_many([event(), raw]).failures] == [reason]  # the training read's
    assert reason_kind(reason) == "not valid JSON"  # counted with the other unparsable messages


def test_a_label_inside_features_says_where_the_label_goes(parser: EventParser) -> None:
    """It said "add them to the stream spec": the target would have become a model input."""
    with pytest.raises(InvalidEvent) as info:
        parser.parse(event(label=DROP, features={"label": 1}))
    assert str(info.value) == (
        "unknown feature(s) ['label']: the label goes at the event's top level: "
        '{"id": ..., "ts": ..., "features": {...}, "label": ...}, not inside \'features\''
    )
    with pytest.raises(InvalidEvent) as info:  # among other unknown names: both fixes
        parser.parse(event(features={"label": 1, "zz": 2.0}))
    assert "add them to the stream spec or stop sending them; the label goes at the event's top level" in str(
        info.value
    )


@pytest.mark.parametrize(
    ("feature", "value", "fragment"),
    [
        ("f", math.nan, "not finite"),
        ("f", math.inf, "not finite"),
        ("n", -math.inf, "not finite"),  # nullable accepts null, not infinity
        ("i", math.inf, "must be an integer"),  # is_integer() is checked first; still refused
    ],
)
def test_non_finite_values_are_refused(feature: str, value: float, fragment: str) -> None:
    """JSON has no NaN/inf (see the parse cases above), but a decoder that yields them must not pass them."""
    spec = make_spec()
    feature_spec = next(f for f in spec.features if f.name == feature)
    with pytest.raises(InvalidEvent) as info:
        coerce_feature(feature_spec, value)
    assert f"{feature!r}" in str(info.value)
    assert fragment in str(info.value)


def test_bool_classes_keep_true_apart_from_1() -> None:
    """`_label_key` keys classes by type: with classes [false, true], the label 1 is not `true`."""
    parser = EventParser(make_spec(classes=[False, True]))
    assert parser.parse(event(label=True)).label_index == 1
    assert parser.parse(event(label=False)).label_index == 0
    for label in (1, 0, 1.0, "true"):
        with pytest.raises(InvalidEvent, match="is not one of the spec's classes"):
            parser.parse(event(label=label))


def test_int_classes_accept_integral_floats_but_refuse_bools() -> None:
    parser = EventParser(make_spec(classes=[0, 1]))
    assert parser.parse(event(label=0)).label_index == 0
    assert parser.parse(event(label=1.0)).label_index == 1  # JSON writers often emit 1.0 for 1
    for label in (1.5, True, False):
        with pytest.raises(InvalidEvent, match="is not one of"):
            parser.parse(event(label=label))


def test_string_classes_map_to_their_index() -> None:
    parser = EventParser(make_spec(classes=["spam", "ham", "eggs"]))
    assert [parser.parse(event(label=c)).label_index for c in ("eggs", "spam", "ham")] == [2, 0, 1]


@pytest.mark.parametrize("label", [[1], {"value": 1}])
def test_unhashable_label_is_an_invalid_event(parser: EventParser, label) -> None:
    with pytest.raises(InvalidEvent, match="label must be a string, number or bool"):
        parser.parse(event(label=label))


@pytest.mark.parametrize(
    ("label", "expected"),
    [(2.5, 2.5), (-3, -3.0), (0, 0.0), (10**6, 1e6)],
)
def test_regression_label_is_its_value(label, expected: float) -> None:
    parsed = EventParser(make_spec("regression")).parse(event(label=label))
    assert parsed.label_index is None
    assert parsed.label_value == expected


@pytest.mark.parametrize("label", [True, "2.5", [1.0], {"v": 1}])
def test_regression_label_must_be_a_number(label) -> None:
    with pytest.raises(InvalidEvent, match="regression label must be a finite number"):
        EventParser(make_spec("regression")).parse(event(label=label))


def _corpus() -> list[bytes | None]:
    """Good and bad messages mixed, including every case the fast path must hand to `parse`."""
    good = [
        event(),
        event(id=42, ts=None, label=0),
        event(label=DROP),
        event(features={"i": 4.0, "b": 0, "f": -7}),
        event(features={"b": 1.0, "i": -2}),
        event(features={"n": None}),
        event(ts=DROP),
        event(label=1.0),
        event(id=2**64 - 1),  # orjson's integer range ends here; both ends are ids
        event(id=-(2**63)),
        b'{"id": "dup", "id": "e2", "features": {"f": 1, "i": 2, "i": 3, "b": 1, "n": 1}, "label": 0}',  # last wins
        b'{"id": "e3", "features": {"f": 1, "i": 2, "b": 1, "n": 1}, "features": {"f": 2, "i": 2, "b": 0, "n": 1}}',
        event(extra={"nested": [1, {"x": None}]}),  # unknown top-level fields are ignored
    ]
    bad = [
        None,
        b"{not json",
        b"",
        b"[1, 2]",
        b'"text"',
        b'{"id": "e1", "features": {"f": 1e400}}',
        event(id=DROP),
        event(id=""),
        event(id=True),
        event(id=1.5),
        event(features=DROP),
        event(features=[1.5, 3]),
        event(features={"i": DROP}),
        event(features={"zz": 1.0}),
        event(features={"f": "1.5"}),
        event(features={"f": True}),
        event(features={"i": 3.5}),
        event(features={"b": 2}),
        event(features={"b": 0.5}),
        event(features={"f": None}),
        b'{"id": "big", "features": {"f": 1, "i": 100000000000000000000000000, "b": 1, "n": 1}}',  # a float
        b'{"id": "big", "features": {"f": 1, "i": 1.5e300, "b": 1e300, "n": 1}}',
        event(ts="yesterday"),
        event(ts=True),
        event(label=2),
        event(label="1"),
        event(label=True),
        event(label=[1]),
        b'{"id": 100000000000000000000000, "features": {"f": 1, "i": 2, "b": 1, "n": 1}}',  # a float in orjson
        b'{"id": 18446744073709551616, "features": {"f": 1, "i": 2, "b": 1, "n": 1}}',  # one past 64 bits
        b'{"id": "e4", "features": {"f": 1, "i": 2, "i": null, "b": 1, "n": 1}}',  # the last duplicate decides
        b'{"id": "e5", "features": {"f": 1, "i": 2, "b": 1, "n": 1}, "label": 100000000000000000000000}',
        b'{"id": "e6", "features": {"f": NaN, "i": 2, "b": 1, "n": 1}}',
        b'\xef\xbb\xbf{"id": "e7", "features": {"f": 1, "i": 2, "b": 1, "n": 1}}',
        b'{"id": "e8", "features": {"f": 1, "i": 2, "b": 1, "n": 1}} trailing',
        b'{"id": "\\ud800", "features": {"f": 1, "i": 2, "b": 1, "n": 1}}',
        b'{"id": "e9", "features": {"f": 1, "i": 2, "b": 1, "n": 1}, "ts": {"t": 1}}',
        b'{"id": "\xff\xfe", "features": {"f": 1, "i": 2, "b": 1, "n": 1}}',  # not UTF-8 inside a string
        b'\xff{"id": "e10", "features": {"f": 1, "i": 2, "b": 1, "n": 1}}',  # not UTF-8 before the object
        b'[{"id": "e11", "features": {"f": 1, "i": 2, "b": 1, "n": 1}}]',  # an array holding an event
        b'{"id": "e12", "features": {"f": 1, "i": 2, "b": 1}}',  # a feature missing
        b'{"id": "e13", "features": {"f": 1, "i": 2, "b": 1, "n": 1}, "label": null, "label": 7}',
    ]
    return [raw for pair in zip(good * 4, bad + bad[: len(good) * 4 - len(bad)], strict=False) for raw in pair]


def _one_by_one(parser: EventParser, values: list[bytes | None]) -> tuple[list, list]:
    rows, failures = [], []
    for i, raw in enumerate(values):
        try:
            rows.append((i, parser.parse(raw)))
        except InvalidEvent as exc:
            failures.append((i, str(exc)))
    return rows, failures


@pytest.mark.parametrize("classes", [[0, 1], [False, True], ["0", "1"]])
def test_parse_many_matches_parse_message_by_message(classes: list) -> None:
    """The batch parser is an optimisation only: same rows, same order, same reasons."""
    parser = EventParser(make_spec(classes=classes))
    values = _corpus()
    batch = parser.parse_many(values)
    rows, failures = _one_by_one(parser, values)
    assert batch.failures == failures
    assert batch.index.tolist() == [i for i, _ in rows]
    assert batch.ids == [e.event_id for _, e in rows]
    np.testing.assert_array_equal(batch.X, np.asarray([e.values for _, e in rows]).reshape(-1, 4))
    expected_y = [math.nan if e.label_index is None else e.label_index for _, e in rows]
    np.testing.assert_array_equal(batch.y, np.asarray(expected_y, dtype=float))


def test_parse_many_regression_labels() -> None:
    parser = EventParser(make_spec("regression"))
    values = [event(label=2.5), event(label=True), event(label=DROP), event(label="3"), event(label=-4)]
    batch = parser.parse_many(values)
    np.testing.assert_array_equal(batch.y, [2.5, math.nan, -4.0])
    assert batch.index.tolist() == [0, 2, 4]
    assert [i for i, _ in batch.failures] == [1, 3]
    assert all("regression label must be a finite number" in reason for _, reason in batch.failures)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_a_parser_that_reads_no_labels_accepts_any_label_and_keeps_every_other_rule(task: str) -> None:
    """The scorer's parser: a label of another class or type does not stop an event being scored;
    everything else is refused as before, by both paths."""
    labels = [1, 7, "maybe", [1], {"yes": 1}, True, 1e300, DROP]
    values = [event(id=f"e{i}", label=label) for i, label in enumerate(labels)]
    values += [event(id="bad", features={"f": "x"}), b"{not json"]
    blind = EventParser(make_spec(task), labels=False)

    batch = blind.parse_many(values)

    assert batch.ids == [f"e{i}" for i in range(len(labels))]
    assert np.isnan(batch.y).all()
    np.testing.assert_array_equal(batch.X, np.tile([1.5, 3.0, 1.0, 0.25], (len(labels), 1)))
    assert [i for i, _ in batch.failures] == [len(labels), len(labels) + 1]
    for raw in values[: len(labels)]:  # the one-message path agrees
        assert blind.parse(raw).label_index is None and blind.parse(raw).label_value is None
    assert len(EventParser(make_spec(task)).parse_many(values).failures) > 2  # the trainer's parser refuses them


def test_parse_many_of_nothing() -> None:
    batch = EventParser(make_spec()).parse_many([])
    assert batch.X.shape == (0, 4)
    assert batch.ids == [] and batch.failures == []


def _fast(**changes) -> bytes:
    """A message the batch parser's typed decode accepts (the bool feature as 0/1, not true/false)."""
    features = changes.pop("features", {})
    return event(features={"b": 1} | features if isinstance(features, dict) else features, **changes)


DEEP = b"[" * 1000 + b"]" * 1000  # valid JSON (orjson takes 1,023 levels); its repr raised RecursionError

FAST_PATH_REFUSALS = [
    _fast(id=""),  # the type takes any string; the contract wants an id
    _fast(id="I" * 600_000),  # its prediction record was over 1 MB: the scorer crashed on it at every restart
    _fast(id=2**63).replace(b"9223372036854775808", b"18446744073709551616"),  # an int id beyond 64 bits
    _fast(label=2),  # a number that is not a class
    _fast(label="1"),  # a string for a number class
    _fast(label=0.5),
    _fast(features={"i": 3.5}),  # an int feature with a fraction
    _fast(features={"b": 2}),  # a bool feature that is not 0/1
    _fast(features={"f": 1e38}),  # beyond the float32 model's magnitude limit
    _fast(features={"f": "1.5"}),  # a wrong type
    _fast(features={"n": DROP}),  # a feature missing
    _fast(features={"f": 1, "zz": 2}),  # an unknown feature
    _fast(features=[1.5, 3, 1, 0.25]),  # an array where an object is expected
    b"[" + _fast() + b"]",  # an array holding an event
    _fast()[:-1],  # cut short
    _fast(id="XX").replace(b"XX", b"\xff\xfe"),  # not UTF-8 inside a string
    _fast(note="XX").replace(b"XX", b"\xff"),  # not UTF-8 in a field the typed decode skips unread
    _fast(features={"f": "XX"}).replace(b'"XX"', DEEP),  # nested 1,000 deep: refused, quoted short
    _fast(ts="XX").replace(b'"XX"', DEEP),
    None,
]


def test_an_id_is_at_most_max_id_chars_long(parser: EventParser) -> None:
    assert parser.parse(event(id="i" * MAX_ID_CHARS)).event_id == "i" * MAX_ID_CHARS
    with pytest.raises(InvalidEvent, match="event 'id' is 1,025 characters long, over the 1,024 an id may have"):
        parser.parse(event(id="i" * (MAX_ID_CHARS + 1)))


@pytest.mark.parametrize("position", [0, 3, 7])
def test_parse_many_refuses_among_fast_messages_what_parse_refuses(position: int) -> None:
    """Messages the typed decode takes but the contract refuses go to `parse` for their reason; the
    good messages around them keep their rows and positions (a broken fast path fails here)."""
    parser = EventParser(make_spec())
    for bad in FAST_PATH_REFUSALS:
        values = [_fast(id=f"g{i}", label=i % 2, features={"f": float(i)}) for i in range(8)]
        values[position] = bad
        batch = parser.parse_many(values)
        rows, failures = _one_by_one(parser, values)
        assert [i for i, _ in batch.failures] == [position], bad
        assert batch.failures == failures
        assert batch.index.tolist() == [i for i, _ in rows] == [i for i in range(8) if i != position]
        assert batch.ids == [f"g{i}" for i in range(8) if i != position]
        np.testing.assert_array_equal(batch.X, np.asarray([e.values for _, e in rows]))
        np.testing.assert_array_equal(batch.y, [i % 2 for i in range(8) if i != position])


def test_refusals_are_counted_by_kind_keeping_the_names_they_quote() -> None:
    """The counts of a batch's dead letters (its halt summary, its version's meta) group events that
    differ only in their values, and keep apart features whose names hold digits."""
    ahead = "event time {} is {} s ahead of its Kafka timestamp ({}), more than event_time.max_ahead 300 s: fix"
    assert reason_kind(ahead.format(1700000607.5, 607, 1700000000.5)) == reason_kind(ahead.format(1.7e9, 9, 1.7e9))
    assert reason_kind("feature '7d_sum' = 1e40 is beyond 1e37") == "feature '7d_sum' = <n> is beyond <n>"
    assert reason_kind("feature '7d_sum' = 1e40 is beyond") != reason_kind("feature '30d_sum' = 1e40 is beyond")
    assert reason_kind("feature x0 is -2.5e3, below min 0: fix") == "feature x0 is <n>, below min <n>"
