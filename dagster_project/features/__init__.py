"""Derived features: per-key rolling aggregates over event-time windows, declared in the spec.

Training (the micro-batch reader) and serving (the scorer, `/predict`) compute them with the same
`FeatureState`, and a model version stores the state after the offsets it learned, so a version is
a checkpoint of (model, feature state, offsets) and both sides see the same values.
"""

from dagster_project.features.serialization import dump_state, load_state
from dagster_project.features.state import FeatureState
from dagster_project.features.timing import EventError

__all__ = ["EventError", "FeatureState", "dump_state", "load_state"]
