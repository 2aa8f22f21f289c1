"""Category and rolling features: prequential accuracy with and without them, and River's one-hot pipeline.

Two shipped streams whose ground truth needs the new kinds of feature: `census` (two numeric
features, two vocabulary categories and a hashed zip code) and `sensors` (a temperature whose
meaning depends on its device's rolling level: `derived` features over 60 s per device).
Streamfit learns them through its own batch path — `EventParser.parse_many` on the encoded
messages, `features.derive` with a `FeatureState` carried from batch to batch, then
`test_then_train` in the spec's batches — once with the spec as shipped and once without the
feature kind under test (categories dropped; derived features dropped). River's
`(Select(numeric) | StandardScaler) + (Select(categorical) | OneHotEncoder)` feeding a
`LogisticRegression` gets the same events in the same order, the raw fields (keys included as
categories) one at a time, predicting before learning. Accuracy counts every row after the
first batch for all of them (Streamfit has no model before it).

`python -m benchmarks.feature_quality` prints the table on its own (no broker needed).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.common import progress

ROWS = {"quick": 6_000, "full": 20_000}


def _streamfit(spec, events: list, batch: int) -> float:
    """Prequential accuracy of the spec's model through the product's parse → derive → test-then-train path."""
    from dagster_project.features import FeatureState
    from dagster_project.features.batch import derive
    from dagster_project.ingest.events import EventParser, make_event
    from dagster_project.learning.prequential import test_then_train

    parser = EventParser(spec)
    state = FeatureState(spec) if spec.derived else None
    model, correct, scored = None, 0.0, 0
    for lo in range(0, len(events), batch):
        chunk = events[lo : lo + batch]
        values = [make_event(e.event_id, _known(spec, e.features), e.label, e.ts, **e.fields) for e in chunk]
        parsed = parser.parse_many(values)
        if state is not None:
            parsed = derive(state, [0] * len(values), values, parsed)
        if parsed.failures:
            raise RuntimeError(f"{spec.name}: {len(parsed.failures)} events refused, e.g. {parsed.failures[0]}")
        model, metrics, _ = test_then_train(model, spec, parsed.X, parsed.y)
        if lo:
            correct += metrics.accuracy * metrics.rows
            scored += metrics.rows
    return correct / scored


def _known(spec, features: dict[str, Any]) -> dict[str, Any]:
    """The event's features the spec declares (a spec without categories is sent events without them)."""
    names = set(spec.feature_names)
    return {k: v for k, v in features.items() if k in names}


def _river(spec, events: list, batch: int) -> float:
    """River's one-hot pipeline on the raw fields, predict then learn per row, over the same rows."""
    from river import compose, linear_model, preprocessing

    categorical = [f.name for f in spec.features if f.type == "category"]
    categorical += [d.by for d in spec.derived if d.by not in categorical]  # keys are categories to River
    numeric = [f.name for f in spec.features if f.type != "category"]
    parts = [compose.Select(*numeric) | preprocessing.StandardScaler()]
    if categorical:
        parts.append(compose.Select(*categorical) | preprocessing.OneHotEncoder())
    model = compose.TransformerUnion(*parts) | linear_model.LogisticRegression()
    correct = scored = 0
    for i, e in enumerate(events):
        x = {**e.fields, **e.features}
        x = {k: (str(v) if k in categorical else v) for k, v in x.items()}  # a null category: its own level
        if i >= batch:
            correct += int(model.predict_one(x) == e.label)
            scored += 1
        model.learn_one(x, e.label)
    return correct / scored


def _without(spec, kind: str):
    """The spec without the feature kind under test: its categories, or its derived features."""
    from dagster_project.spec import StreamSpec

    raw = spec.model_dump(mode="json", exclude_defaults=True)
    if kind == "derived":
        raw.pop("derived", None), raw.pop("event_time", None), raw.pop("feature_state", None)
    else:
        raw["features"] = [f for f in raw["features"] if f.get("type") != "category"]
        raw.get("quality", {}).pop("max_unseen_category_share", None)
    return StreamSpec.model_validate(raw)


def run(quick: bool, rows: int | None = None) -> dict[str, Any]:
    """Prequential accuracy per stream on `rows` events (default: the mode's ROWS)."""
    from benchmarks.data import shipped_spec
    from dagster_project.dev.datasets import census_events, sensor_events

    rows = rows or ROWS["quick" if quick else "full"]
    streams = {"census": (census_events, "categories"), "sensors": (sensor_events, "derived")}
    out: dict[str, Any] = {"rows": rows}
    for name, (source, kind) in streams.items():
        spec = shipped_spec(name)
        events = list(source(rows=rows))
        batch = spec.batch.rows
        labels = np.asarray([e.label for e in events])
        majority = float(max(np.mean(labels == c) for c in np.unique(labels)))
        progress(f"features: {name} ({rows:,} events, batches of {batch:,}): Streamfit with and without {kind}, River")
        started = time.perf_counter()
        result = {
            "kind": kind,
            "batch_rows": batch,
            "majority_rate": majority,
            "streamfit": _streamfit(spec, events, batch),
            "streamfit_without": _streamfit(_without(spec, kind), events, batch),
        }
        result["streamfit_s"] = time.perf_counter() - started
        started = time.perf_counter()
        result["river_onehot_logreg"] = _river(spec, events, batch)
        result["river_s"] = time.perf_counter() - started
        out[name] = result
    return out


def table(result: dict[str, Any]) -> list[str]:
    rows = [("stream", "Streamfit", "Streamfit without", "River one-hot LR", "majority")]
    for name in ("census", "sensors"):
        r = result.get(name)
        if r:
            rows.append(
                (
                    name,
                    f"{r['streamfit']:.3f}",
                    f"{r['streamfit_without']:.3f} (no {r['kind']})",
                    f"{r['river_onehot_logreg']:.3f}",
                    f"{r['majority_rate']:.3f}",
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]


if __name__ == "__main__":
    import sys

    full = "--full" in sys.argv
    result = run(quick=not full)
    print(f"Prequential accuracy, {result['rows']:,} events per stream, every row after the first batch")
    print("\n".join(table(result)))
