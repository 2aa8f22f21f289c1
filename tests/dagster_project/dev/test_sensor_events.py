"""The sensors stream: its ground truth needs the rolling feature, so a model without it does worse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from dagster_project.dev.datasets import sensor_events
from dagster_project.features import FeatureState
from dagster_project.ingest.events import make_event
from dagster_project.learning.prequential import test_then_train
from dagster_project.spec import StreamSpec, load_spec

SPEC = Path(__file__).resolve().parents[3] / "streams" / "sensors.yaml"
ROWS, BATCH = 10_000, 1_000


def prequential_accuracy(spec: StreamSpec, X: np.ndarray, y: np.ndarray) -> float:
    """Test-then-train in the spec's batches; accuracy over every batch after the first."""
    model, correct = None, 0.0
    for lo in range(0, len(X), BATCH):
        model, metrics, _ = test_then_train(model, spec, X[lo : lo + BATCH], y[lo : lo + BATCH])
        if lo:
            correct += metrics.accuracy * metrics.rows
    return correct / (len(X) - BATCH)


def test_the_rolling_mean_is_what_makes_the_sensor_stream_learnable():
    spec = load_spec(SPEC)
    events = list(sensor_events(rows=ROWS))
    assert 0.25 < np.mean([e.label for e in events]) < 0.35
    assert len({e.fields["device"] for e in events}) == 20
    state = FeatureState(spec)
    X = np.asarray(
        [
            [
                e.features["temp"],
                *state.observe(
                    0, orjson.loads(make_event(e.event_id, e.features, None, e.ts, **e.fields)), [e.features["temp"]]
                ),
            ]
            for e in events
        ]
    )
    y = np.asarray([e.label for e in events], dtype=np.float64)
    without = spec.model_copy(update={"derived": [], "event_time": None})
    with_rolling = prequential_accuracy(spec, X, y)
    temp_only = prequential_accuracy(without, X[:, :1], y)
    print(f"\nsensors prequential accuracy: with rolling features {with_rolling:.3f}, temp only {temp_only:.3f}")
    assert with_rolling > 0.9
    assert temp_only < 0.80  # near the majority rate (0.70): the temperature alone says little
