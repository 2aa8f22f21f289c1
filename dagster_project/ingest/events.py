"""The event contract: parse one Kafka message into a training row, or say exactly why not.

Events are JSON objects `{id, ts, features: {...}, label?}` keyed by event id. A message that
cannot be parsed or breaks the stream's schema becomes a dead-letter record that names the
reason and where the message came from; it never stops a batch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import orjson

from dagster_project.ingest.categories import NULL_CODE, CategoryError, category_code, fast_coder, unseen_code
from dagster_project.ingest.event_schema import event_decoder, fits_64_bits
from dagster_project.ingest.quoting import quoted
from dagster_project.spec import EPOCH_UNITS, FeatureSpec, StreamSpec, label_key

# The largest magnitude a feature or regression label may have. The served ONNX model computes in
# float32 (max 3.4e38), so a larger value becomes inf there and fails the parity check of every
# retry; squares of far larger values overflow float64 in training too. No real measurement comes
# near it, so such a value is a corrupt message, dead-lettered with this reason.
MAGNITUDE_LIMIT = 1e37
# The longest event id. An id travels as the prediction's key and inside its value, and keys the label
# join: a 600 KB id made a prediction record over the 1 MB a record may have, and the scorer crashed
# on it at every restart. Ids are names (UUIDs, composite keys), never documents.
MAX_ID_CHARS = 1024
# The longest derived-feature key (the `by` field's value), for the same reason: a key is held in the
# feature state, saved in every version's checkpoint and loaded by every scorer. 40 keys of 800 KB made
# a 32 MB checkpoint beside a 1 KB model, and `feature_state.max_keys` of them would make gigabytes.
# Keys are names (device ids, account numbers), never documents.
MAX_KEY_CHARS = MAX_ID_CHARS
# In a refusal's text: a quoted name or value (kept whole: `'7d_sum'`), or a number (not a digit
# inside a name such as x0).
_QUOTED_OR_NUMBER = re.compile(
    r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?:[eE][+-]?\d+)?"""
)


def reason_kind(reason: str) -> str:
    """What a refusal is, without the values of the event it refused: the key dead letters are counted by.

    Counted by their whole text before the first colon, 800 events each 607 s or 608 s ahead of
    their Kafka timestamp were 800 reasons, and the halt they caused said so in 121 KB.
    """
    return _QUOTED_OR_NUMBER.sub(lambda m: m[0] if m[0][0] in "'\"" else "<n>", reason.split(":")[0])


def _not_utf8(raw: bytes) -> str | None:
    """Where a message stops being UTF-8 text, else None: orjson says "surrogates not allowed: line 1
    column 1" for any invalid byte, anywhere, which names neither the cause nor the place."""
    try:
        bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        return (
            f"byte {exc.start} (0x{raw[exc.start]:02x}) is not UTF-8 ({exc.reason}): JSON messages must be UTF-8 text"
        )
    return None


def not_a_json_number(raw: bytes, exc: orjson.JSONDecodeError) -> str | None:
    """Why a NaN or Infinity literal is refused, else None: Python's `json.dumps` writes them by default
    (`allow_nan=True`), and orjson says only "unexpected character, expected a JSON value". Shared by
    events, label records and the scorer's request bodies, so all three name it alike."""
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError:  # orjson then failed on the bad byte, not on a literal
        return None
    rest = text[exc.pos : exc.pos + 8]  # exc.pos counts characters
    token = next((t for t in ("NaN", "Infinity", "nan", "inf") if rest.startswith(t)), None)
    if token is None:
        return None
    return (
        f"{token} at character {exc.pos} is not a JSON number (Python's json.dumps writes it unless "
        "allow_nan=False): send a finite number, or null for a nullable feature"
    )


def ts_problem(ts: Any, unit: str = "s") -> str | None:
    """Why an event's top-level `ts` breaks the contract (a number of epoch seconds), else None; the
    scorer's `/predict` holds a row's `ts` to it too, so HTTP takes what Kafka takes."""
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float)):
        return f"'ts' must be a number (epoch {EPOCH_UNITS[unit]}), got {quoted(ts)}"
    return None


def ts_unit(spec: StreamSpec) -> str:
    """The unit of a top-level `ts`: seconds, or `event_time.unit` when `ts` is the event time (so the
    refusal of a `ts` and of a missing event time name the same unit)."""
    event_time = spec.event_time
    return event_time.unit if event_time is not None and event_time.field == "ts" else "s"


LABEL_PLACE = 'the label goes at the event\'s top level: {"id": ..., "ts": ..., "features": {...}, "label": ...}'


def unknown_features_reason(unknown: list[str]) -> str:
    """Why an event's unknown features refuse it; a `label` among them is a label put inside `features`,
    where "add it to the spec" would make the target a model input."""
    if unknown == ["label"]:
        return f"unknown feature(s) ['label']: {LABEL_PLACE}, not inside 'features'"
    reason = f"unknown feature(s) {quoted(unknown)}: add them to the stream spec or stop sending them"
    return f"{reason}; {LABEL_PLACE}" if "label" in unknown else reason


class InvalidEvent(ValueError):
    """The message breaks the event contract; the message is the reason stored in the DLQ."""


@dataclass(frozen=True)
class ParsedEvent:
    event_id: str
    ts: float | None
    values: list[float]
    label_index: int | None
    label_value: float | None
    unseen: tuple[tuple[str, Any], ...] = ()  # (feature, raw value) outside a category vocabulary


def coerce_feature(feature: FeatureSpec, raw: Any) -> float:
    """One raw JSON value as the model input holds it: a number, or a category's code."""
    if raw is None:
        if feature.nullable:
            return NULL_CODE if feature.type == "category" else math.nan
        raise InvalidEvent(f"feature {feature.name!r} is null but the spec does not allow nulls")
    if feature.type == "category":
        try:
            return category_code(feature, raw)
        except CategoryError as exc:
            raise InvalidEvent(str(exc)) from None
    if feature.type == "bool":
        if isinstance(raw, bool) or raw in (0, 1):
            return float(raw)
        raise InvalidEvent(f"feature {feature.name!r} must be a bool, got {type(raw).__name__} {quoted(raw)}")
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise InvalidEvent(f"feature {feature.name!r} must be a number, got {type(raw).__name__} {quoted(raw)}")
    value = float(raw)  # orjson turns integers beyond 64 bits into floats, so this cannot overflow
    if feature.type == "int" and not value.is_integer():
        raise InvalidEvent(f"feature {feature.name!r} must be an integer, got {quoted(raw)}")
    if not math.isfinite(value):
        raise InvalidEvent(f"feature {feature.name!r} is not finite: {quoted(raw)}")
    if abs(value) > MAGNITUDE_LIMIT:
        raise InvalidEvent(
            f"feature {feature.name!r} = {quoted(raw)} is beyond the magnitude limit {MAGNITUDE_LIMIT:g}: the float32 "
            "model cannot hold it"
        )
    return value


@dataclass
class ParsedBatch:
    """The valid rows of many messages, in input order, and why each other message was refused."""

    X: np.ndarray  # (rows, features) float64
    y: np.ndarray  # class index or regression value; NaN where unlabelled
    ids: list[str]
    index: np.ndarray  # position of each row in the input
    failures: list[tuple[int, str]]  # (position in the input, reason)
    unseen: list[tuple[int, str, Any]] = field(default_factory=list)  # (position, feature, raw value)


_NUMBER_TYPES = frozenset((int, float))
_LABEL_TYPES = frozenset((int, float, str))  # bools take the slow path: True must not match class 1


class EventParser:
    """Validates messages against one stream's spec; built once per batch for speed.

    ``labels=False`` neither reads nor checks labels (every row unlabelled): what a scorer needs,
    which scores features only. A label of the wrong type or class is the trainer's dead letter; the
    scorer refused the whole event too and served no prediction for it.
    """

    def __init__(self, spec: StreamSpec, labels: bool = True) -> None:
        self.spec = spec
        self.labels = labels
        self._features = spec.features
        self._names = tuple(spec.feature_names)
        self._known = set(spec.feature_names)
        self._position = {name: j for j, name in enumerate(spec.feature_names)}
        self._ts_unit = ts_unit(spec)
        classes = spec.label.classes or []
        self._class_index = {label_key(c): i for i, c in enumerate(classes)}
        # Raw label -> class index for the fast path. Bools are left out on purpose: as dict keys
        # True == 1, and a bool label must match only a bool class (the slow path's label_key).
        self._fast_labels = {c: i for i, c in enumerate(classes) if type(c) in _LABEL_TYPES}
        self._decoder = event_decoder(spec, with_label=labels)
        self._int_columns = [j for j, f in enumerate(spec.features) if f.type == "int"]
        self._bool_columns = [j for j, f in enumerate(spec.features) if f.type == "bool"]
        # Category columns: (position, name, value -> code or None, the unseen code or None).
        self._category_coders = [
            (j, f.name, fast_coder(f), unseen_code(f)) for j, f in enumerate(spec.features) if f.type == "category"
        ]
        self._unseen_codes = [(f, unseen_code(f)) for f in spec.features if f.type == "category" and f.categories]

    def parse_many(self, values: Sequence[bytes | None]) -> ParsedBatch:
        """Parse a whole poll batch: the same result as `parse` per message, several times faster.

        Messages are decoded straight into the spec's typed struct (`event_schema`): plain numbers,
        and category values of their feature's type, turned into codes by `categories.fast_coder`;
        then the per-column rules run on the numpy matrix at once. Anything else (nulls, bools,
        wrong types, malformed JSON, rows a column rule refuses) goes through `parse`, which gives
        the exact reason. The fast path never accepts a message `parse` would refuse.
        """
        decode = self._decoder.decode
        astuple = msgspec.structs.astuple
        width = len(self._names)
        classification = self.spec.task == "classification"
        fast_labels = self._fast_labels
        fits = fits_64_bits
        flat: list[float] = []
        extend = flat.extend
        labels: list[float] = []
        add_label = labels.append
        ids: list[str] = []
        add_id = ids.append
        slow: list[int] = []
        to_parse = slow.append
        coders = self._category_coders
        read_labels = self.labels
        unseen: list[tuple[int, str, Any]] = []
        # One row's work is kept to what each message needs (bound methods, no per-row position list,
        # the category branch only for specs with categories): at 100 k rows each bytecode here costs ~1 ms.
        for i, raw in enumerate(values):
            try:
                event = decode(raw)
                if not raw.isascii():  # msgspec skips unknown fields unchecked: invalid UTF-8 must not pass
                    raw.decode()
            except Exception:  # any type or shape problem (or no value), invalid UTF-8: `parse` names it
                to_parse(i)
                continue
            event_id = event.id
            if type(event_id) is not str:  # an int (the type is str | int)
                if not fits(event_id):
                    to_parse(i)
                    continue
                event_id = str(event_id)
            elif not event_id or len(event_id) > MAX_ID_CHARS:
                to_parse(i)
                continue
            label = event.label if read_labels else None
            if label is None:
                target = math.nan
            elif classification:
                target = fast_labels.get(label)
                if target is None:
                    to_parse(i)
                    continue
            else:
                target = label
            if coders:
                encoded = self._encode(astuple(event.features))
                if encoded is None:
                    to_parse(i)
                    continue
                row, row_unseen = encoded
                if row_unseen:
                    unseen.extend((i, name, value) for name, value in row_unseen)
                extend(row)
            else:
                extend(astuple(event.features))
            add_label(target)
            add_id(event_id)
        X = np.fromiter(flat, dtype=np.float64, count=len(flat)).reshape(-1, width)
        y = np.asarray(labels, dtype=np.float64)
        positions = _accepted(len(values), slow)
        refused = ~np.isfinite(X).all(axis=1) | (np.abs(X) > MAGNITUDE_LIMIT).any(axis=1)
        if not classification:
            refused |= np.isinf(y) | (np.abs(y) > MAGNITUDE_LIMIT)
        for j in self._int_columns:
            refused |= X[:, j] != np.floor(X[:, j])
        for j in self._bool_columns:
            refused |= (X[:, j] != 0) & (X[:, j] != 1)
        if refused.any():
            again = positions[refused].tolist()
            slow = sorted(slow + again)
            keep = ~refused
            X, y, positions = X[keep], y[keep], positions[keep]
            ids = [event_id for event_id, kept in zip(ids, keep, strict=True) if kept]
            if unseen:  # `parse` records them again if their rows are valid
                unseen = [u for u in unseen if u[0] not in set(again)]
        return self._merge_slow_path(values, slow, X, y, ids, positions, unseen)

    def _encode(self, row: tuple) -> tuple[list, list[tuple[str, Any]]] | None:
        """The row with its category values as codes, and the unseen ones; None if a value needs `parse`."""
        encoded = list(row)
        unseen: list[tuple[str, Any]] = []
        for j, name, coder, unseen_at in self._category_coders:
            value = encoded[j]
            code = coder(value) if type(value) is not int or fits_64_bits(value) else None  # orjson: a float
            if code is None:
                return None
            encoded[j] = code
            if code == unseen_at:
                unseen.append((name, value))
        return encoded, unseen

    def _merge_slow_path(
        self,
        values: Sequence[bytes | None],
        slow: list[int],
        X: np.ndarray,
        y: np.ndarray,
        ids: list[str],
        positions: np.ndarray,
        unseen: list[tuple[int, str, Any]],
    ) -> ParsedBatch:
        failures: list[tuple[int, str]] = []
        extra: list[tuple[int, ParsedEvent]] = []
        for i in slow:
            try:
                event = self.parse(values[i])
            except InvalidEvent as exc:
                failures.append((i, str(exc)))
                continue
            extra.append((i, event))
            unseen.extend((i, name, value) for name, value in event.unseen)
        if extra:
            X = np.vstack([X, np.asarray([e.values for _, e in extra], dtype=np.float64)])
            y = np.concatenate([y, [_target(e) for _, e in extra]])
            ids = ids + [e.event_id for _, e in extra]
            positions = np.concatenate([positions, np.asarray([i for i, _ in extra], dtype=np.int64)])
            order = np.argsort(positions, kind="stable")
            X, y, positions = X[order], y[order], positions[order]
            ids = [ids[k] for k in order]
        return ParsedBatch(X=X, y=y, ids=ids, index=positions, failures=failures, unseen=sorted(unseen, key=_position))

    def parse(self, raw: bytes | None) -> ParsedEvent:
        if raw is None:
            raise InvalidEvent("empty message (null value)")
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent(f"not valid JSON: {_not_utf8(raw) or not_a_json_number(raw, exc) or exc}") from None
        if not isinstance(event, dict):
            raise InvalidEvent(f"event must be a JSON object, got {type(event).__name__}")
        event_id = event.get("id")
        if isinstance(event_id, float):  # a fraction, or an integer beyond 64 bits (orjson reads it as a float)
            raise InvalidEvent(f"event 'id' must be a string or an integer within 64 bits, got {quoted(event_id)}")
        if not isinstance(event_id, str | int) or isinstance(event_id, bool) or event_id == "":
            raise InvalidEvent("event has no 'id' (string or integer)")
        if isinstance(event_id, str) and len(event_id) > MAX_ID_CHARS:
            raise InvalidEvent(
                f"event 'id' is {len(event_id):,} characters long, over the {MAX_ID_CHARS:,} an id may have "
                f"(it keys the event's prediction and label): {quoted(event_id)}"
            )
        features = event.get("features")
        if not isinstance(features, dict):
            raise InvalidEvent("event has no 'features' object")
        missing = [f.name for f in self._features if f.name not in features]
        if missing:
            raise InvalidEvent(f"missing feature(s) {missing}")
        unknown = sorted(set(features) - self._known)
        if unknown:
            raise InvalidEvent(unknown_features_reason(unknown))
        values = [coerce_feature(f, features[f.name]) for f in self._features]
        ts = event.get("ts")
        if problem := ts_problem(ts, self._ts_unit):
            raise InvalidEvent(problem)
        label_index, label_value = self._label(event.get("label")) if self.labels else (None, None)
        unseen = tuple(
            (f.name, features[f.name]) for f, code in self._unseen_codes if values[self._position[f.name]] == code
        )
        return ParsedEvent(str(event_id), ts, values, label_index, label_value, unseen)

    def _label(self, label: Any) -> tuple[int | None, float | None]:
        if label is None:
            return None, None
        if self.spec.task == "classification":
            if not isinstance(label, str | int | float):
                raise InvalidEvent(f"label must be a string, number or bool, got {type(label).__name__}")
            index = self._class_index.get(label_key(label))
            if index is None:
                raise InvalidEvent(f"label {quoted(label)} is not one of the spec's classes {self.spec.label.classes}")
            return index, None
        if isinstance(label, bool) or not isinstance(label, int | float) or not math.isfinite(label):
            raise InvalidEvent(f"regression label must be a finite number, got {quoted(label)}")
        if abs(label) > MAGNITUDE_LIMIT:
            raise InvalidEvent(f"regression label {quoted(label)} is beyond the magnitude limit {MAGNITUDE_LIMIT:g}")
        return None, float(label)


def _accepted(count: int, refused: list[int]) -> np.ndarray:
    """Positions 0..count-1 less the (ascending) `refused` ones."""
    if not refused:
        return np.arange(count, dtype=np.int64)
    return np.delete(np.arange(count, dtype=np.int64), refused)


def _position(unseen: tuple[int, str, Any]) -> int:
    return unseen[0]


def _target(event: ParsedEvent) -> float:
    if event.label_index is not None:
        return float(event.label_index)
    return math.nan if event.label_value is None else event.label_value


def make_event(
    event_id: str, features: dict[str, Any], label: Any = None, ts: float | None = None, **fields: Any
) -> bytes:
    """Encode one event in the contract format; `fields` are top-level fields such as a key that is
    not a model input (a derived feature's `by`)."""
    event: dict[str, Any] = {"id": event_id, "ts": ts, **fields, "features": features}
    if label is not None:
        event["label"] = label
    return orjson.dumps(event)
