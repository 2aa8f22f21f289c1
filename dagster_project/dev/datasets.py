"""Event sources for demos and tests: the real Phishing dataset, a synthetic drifting stream, and an
Adult-like census stream with category features (no Adult dataset ships with an installed package)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SourceEvent:
    event_id: str
    features: dict[str, Any]
    label: Any
    ts: float | None = None  # event time, when the source has one (else the producer's clock)
    fields: dict[str, Any] = field(default_factory=dict)  # top-level fields, e.g. a key
    key: str | None = None  # the Kafka message key, when not the event id


def phishing_events() -> Iterator[SourceEvent]:
    """The 1,250 Phishing web pages that River bundles, in River's arrival order."""
    from river import datasets

    for i, (x, y) in enumerate(datasets.Phishing()):
        features = {k: (float(v) if isinstance(v, float) else int(v)) for k, v in x.items()}
        yield SourceEvent(f"phishing-{i}", features, bool(y))


SYNTHETIC_FEATURES = ("x0", "x1", "x2", "x3", "x4")


def synthetic_events(rows: int = 20_000, change_at: int = 10_000, seed: int = 7) -> Iterator[SourceEvent]:
    """Five Gaussian features and a linear concept that flips abruptly at row `change_at`.

    Before the change, label = (w·x + noise > 0); from `change_at` on, the weights are different,
    so a model that learned the old concept gets about half its predictions wrong. Features keep
    their distribution (pure concept drift) except x4, whose mean shifts (data drift a monitor sees).
    """
    rng = np.random.default_rng(seed)
    before = np.array([1.5, -2.0, 1.0, 0.0, 0.5])
    after = np.array([-1.5, 0.5, 0.0, 2.0, -0.5])
    for i in range(rows):
        drifted = i >= change_at
        x = rng.normal(0.0, 1.0, size=5)
        if drifted:
            x[4] += 1.0
        w = after if drifted else before
        label = int(float(x @ w) + rng.normal(0.0, 0.3) > 0)
        features = {n: round(float(v), 6) for n, v in zip(SYNTHETIC_FEATURES, x, strict=True)}
        yield SourceEvent(f"synthetic-{i}", features, label)


CENSUS_WORKCLASSES = ("Private", "Self-emp", "Gov", "Without-pay")
CENSUS_EDUCATION = ("HS-grad", "Some-college", "Bachelors", "Masters", "Doctorate")
# Log-odds each category adds to "income > 50K": the ground truth depends on the categories, so a
# model only learns this stream if their encoding reaches it.
_EDUCATION_EFFECT = {"HS-grad": -1.5, "Some-college": -0.8, "Bachelors": 0.6, "Masters": 1.4, "Doctorate": 2.0}
_WORKCLASS_EFFECT = {"Private": 0.0, "Self-emp": 0.6, "Gov": 0.2, "Without-pay": -3.0, "Never-worked": -3.0}


def census_events(rows: int = 20_000, seed: int = 11, unseen_share: float = 0.01) -> Iterator[SourceEvent]:
    """An Adult-like census stream: two numeric features, two vocabulary categories, one hashed.

    ``workclass`` and ``education`` come from fixed vocabularies (about `unseen_share` of the rows
    carry ``"Never-worked"``, a workclass outside the vocabulary, and 2 % have no education);
    ``zip`` is an open-ended 5-digit code (hashed in the spec). Labels follow a logistic model in
    age, hours and the categories' effects above.
    """
    rng = np.random.default_rng(seed)
    for i in range(rows):
        age = float(rng.integers(18, 80))
        hours = float(np.clip(rng.normal(40, 10), 1, 99))
        if rng.random() < unseen_share:
            workclass = "Never-worked"
        else:
            workclass = str(rng.choice(CENSUS_WORKCLASSES, p=[0.7, 0.12, 0.15, 0.03]))
        education = None if rng.random() < 0.02 else str(rng.choice(CENSUS_EDUCATION, p=[0.35, 0.25, 0.25, 0.1, 0.05]))
        logit = (
            0.04 * (age - 45)
            + 0.05 * (hours - 40)
            + _WORKCLASS_EFFECT[workclass]
            + _EDUCATION_EFFECT.get(education, 0.0)
        )
        label = int(rng.random() < 1.0 / (1.0 + np.exp(-logit)))
        features = {
            "age": age,
            "hours_per_week": round(hours, 1),
            "workclass": workclass,
            "education": education,
            "zip": int(rng.integers(10_000, 99_999)),
        }
        yield SourceEvent(f"census-{i}", features, label)


SENSOR_START = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def sensor_events(
    rows: int = 20_000, seed: int = 5, devices: int = 20, spike_share: float = 0.3
) -> Iterator[SourceEvent]:
    """Industrial sensors whose ground truth needs a per-device rolling mean.

    Each device's temperature drifts around its own level (uniform 10-40 degrees, a slow random
    walk), so a temperature alone says little. A *spike* (about `spike_share` of the readings) is
    3-5 degrees above the device's level; the label is whether a reading is one. A model that sees
    the device's mean temperature over the last 60 s (the stream's `temp_mean_60s`) learns
    `temp - mean`; without it, it is near the majority rate. Events are about 0.5 s apart per
    device, carry their device as the top-level `device` field and as the Kafka key (so a device's
    history is on one partition), with event times in epoch seconds.
    """
    rng = np.random.default_rng(seed)
    level = rng.uniform(10.0, 40.0, size=devices)
    t = SENSOR_START
    for i in range(rows):
        t += float(rng.exponential(0.5 / devices))
        device = int(rng.integers(devices))
        level[device] += float(rng.normal(0.0, 0.05))
        spike = bool(rng.random() < spike_share)
        temp = level[device] + float(rng.normal(0.0, 0.5)) + (float(rng.uniform(3.0, 5.0)) if spike else 0.0)
        name = f"dev-{device}"
        yield SourceEvent(
            f"sensors-{i}",
            {"temp": round(float(temp), 4)},
            int(spike),
            ts=round(t, 3),
            fields={"device": name},
            key=name,
        )
