"""Event sources for demos and tests: the real Phishing dataset and a synthetic drifting stream."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SourceEvent:
    event_id: str
    features: dict[str, Any]
    label: Any


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
