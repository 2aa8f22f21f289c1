"""Stream specs: one declarative YAML file per stream, validated into typed objects.

A spec is the single source of truth for a stream: topics, feature schema, label, estimator,
batching and policies. The Dagster factory turns each spec into its assets, checks and sensors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FeatureType = Literal["float", "int", "bool"]
Task = Literal["classification", "regression"]
EstimatorName = Literal[
    "sgd_classifier",
    "sgd_regressor",
    "gaussian_nb",
    "bernoulli_nb",
    "passive_aggressive",
    "mlp_classifier",
    "mlp_regressor",
]
CLASSIFIERS = {"sgd_classifier", "gaussian_nb", "bernoulli_nb", "passive_aggressive", "mlp_classifier"}

STREAM_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureSpec(_Strict):
    """One input feature: its JSON type and optional value range."""

    name: str
    type: FeatureType = "float"
    nullable: bool = False
    min: float | None = None
    max: float | None = None


class LabelSpec(_Strict):
    """The target. Classification labels are mapped to class indices in the order given."""

    name: str = "label"
    classes: list[Any] | None = None


class ModelSpec(_Strict):
    """Which estimator learns, with which scikit-learn parameters."""

    estimator: EstimatorName = "sgd_classifier"
    params: dict[str, Any] = Field(default_factory=dict)
    scale: bool = True
    seed: int = 0


class BatchSpec(_Strict):
    """When the sensor launches a training run, and how large a batch may be."""

    rows: int = Field(default=1000, ge=1)
    max_rows: int = Field(default=100_000, ge=1)
    max_wait_s: float = Field(default=30.0, gt=0)
    sensor_interval_s: int = Field(default=5, ge=1)

    @model_validator(mode="after")
    def _rows_within_cap(self) -> BatchSpec:
        if self.rows > self.max_rows:
            raise ValueError(f"batch.rows ({self.rows}) exceeds batch.max_rows ({self.max_rows})")
        return self


class ParitySpec(_Strict):
    """How closely onnxruntime must match scikit-learn before a version may be registered."""

    atol: float = 1e-4
    rtol: float = 1e-4


class StreamSpec(_Strict):
    """Everything Streamfit knows about one stream."""

    name: str = Field(pattern=STREAM_NAME_PATTERN)
    description: str = ""
    task: Task = "classification"
    partitions: int = Field(default=1, ge=1)
    features: list[FeatureSpec]
    label: LabelSpec = LabelSpec()
    model: ModelSpec = ModelSpec()
    batch: BatchSpec = BatchSpec()
    parity: ParitySpec = ParitySpec()

    @field_validator("features")
    @classmethod
    def _unique_features(cls, features: list[FeatureSpec]) -> list[FeatureSpec]:
        names = [f.name for f in features]
        if not names:
            raise ValueError("a stream needs at least one feature")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate feature names in {names}")
        return features

    @model_validator(mode="after")
    def _task_matches_estimator(self) -> StreamSpec:
        is_classifier = self.model.estimator in CLASSIFIERS
        if self.task == "classification" and not is_classifier:
            raise ValueError(f"estimator {self.model.estimator!r} is a regressor but task is classification")
        if self.task == "regression" and is_classifier:
            raise ValueError(f"estimator {self.model.estimator!r} is a classifier but task is regression")
        if self.task == "classification" and not self.label.classes:
            raise ValueError("classification streams must list label.classes (partial_fit needs them up front)")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def events_topic(self) -> str:
        return f"{self.name}.events"

    @property
    def labels_topic(self) -> str:
        return f"{self.name}.labels"

    @property
    def dlq_topic(self) -> str:
        return f"{self.name}.dlq"

    @property
    def predictions_topic(self) -> str:
        return f"{self.name}.predictions"

    @property
    def trainer_group(self) -> str:
        return f"streamfit-{self.name}-trainer"


def load_spec(path: str | Path) -> StreamSpec:
    """Load and validate one spec file; errors name the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
        return StreamSpec.model_validate(raw)
    except Exception as exc:  # re-raised with the file's name so the fix is obvious
        raise ValueError(f"invalid stream spec {path}: {exc}") from exc


def specs_dir() -> Path:
    """Where stream specs live: $STREAMFIT_STREAMS, else ./streams next to the project."""
    configured = os.environ.get("STREAMFIT_STREAMS")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parent.parent / "streams"


def load_specs(directory: str | Path | None = None) -> list[StreamSpec]:
    """All specs in a directory, sorted by name; stream names must be unique."""
    directory = Path(directory) if directory else specs_dir()
    if not directory.is_dir():
        raise FileNotFoundError(f"no stream spec directory at {directory}: set STREAMFIT_STREAMS to one")
    specs = [load_spec(p) for p in sorted(directory.glob("*.y*ml"))]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate stream names in {directory}: {names}")
    return sorted(specs, key=lambda s: s.name)


def get_spec(name: str, directory: str | Path | None = None) -> StreamSpec:
    """The spec called `name`, with an error listing the known streams."""
    specs = {s.name: s for s in load_specs(directory)}
    if name not in specs:
        raise KeyError(f"unknown stream {name!r}; known streams: {sorted(specs)}")
    return specs[name]
