"""Serving a category stream over HTTP: unseen values are encoded per the spec and counted, a wrong
type is a 422 naming the row and the field, and a model trained with another encoding is refused."""

from __future__ import annotations

import numpy as np

from dagster_project.dev.datasets import census_events
from dagster_project.ingest.categories import category_code
from dagster_project.ingest.events import EventParser, make_event
from dagster_project.learning.estimators import build_model, partial_fit
from dagster_project.learning.pipeline import export_checked
from dagster_project.registry.store import FilesystemRegistry, Version
from dagster_project.serving import ChampionWatcher, ScorerMetrics
from dagster_project.spec import StreamSpec
from tests.conftest import census_spec
from tests.dagster_project.serving.support import Client, onnx_of
from tests.dagster_project.serving.test_http import http_server

ROW = {"age": 39, "hours_per_week": 40.0, "workclass": "Private", "education": "Bachelors", "zip": "94110"}


def train_census_version(registry: FilesystemRegistry, spec: StreamSpec, rows: int = 600) -> Version:
    """Train on parsed census events, export with the parity check (as a training run does), register as champion."""
    events = list(census_events(rows=rows))
    parsed = EventParser(spec).parse_many([make_event(e.event_id, e.features, e.label) for e in events])
    model = partial_fit(build_model(spec), parsed.X, parsed.y, np.arange(2))
    artifact = export_checked(spec, model, parsed.X)
    assert artifact.passed, artifact.reason
    head = registry.head(spec.name)
    meta = {"task": spec.task, "features": spec.feature_names, "classes": spec.label.classes, "offsets": {}}
    version = registry.register(spec.name, head.name if head else None, artifact.onnx_bytes, model, meta)
    registry.set_champion(spec.name, version.name, reason="test")
    return version


def test_unseen_categories_are_served_per_the_spec_and_counted(registry: FilesystemRegistry) -> None:
    spec = census_spec()
    train_census_version(registry, spec)
    unseen = [ROW | {"workclass": "Astronaut"}, ROW | {"education": "Kindergarten", "workclass": "Pilot"}]
    with http_server(spec, registry) as (server, _):
        client = Client(server.url)
        status, body = client.predict([ROW, *unseen, ROW | {"education": None}])
        assert status == 200, body
        # Codes: workclass 4 is "other", education 5 (unseen) and -1 (null) encode as zeros.
        zip_code = category_code(spec.features[4], "94110")
        codes = [[0, 2], [4, 2], [4, 5], [0, -1]]
        X = np.array([[39, 40.0, w, e, zip_code] for w, e in codes], dtype=np.float32)
        expected = onnx_of(registry, spec, "v1").predict(X)
        assert [p["probabilities"] for p in body["predictions"]] == expected.scores.tolist()
        assert len({tuple(p["probabilities"]) for p in body["predictions"]}) == 4  # each encoding differs
        text = client.request("GET", "/metrics")[1]
    assert f'streamfit_unseen_categories_total{{feature="workclass",source="http",stream="{spec.name}"}} 2.0' in text
    assert f'streamfit_unseen_categories_total{{feature="education",source="http",stream="{spec.name}"}} 1.0' in text


def test_a_wrong_category_type_is_a_422_naming_the_row_and_field(registry: FilesystemRegistry) -> None:
    spec = census_spec()
    train_census_version(registry, spec)
    with http_server(spec, registry) as (server, _):
        status, body = Client(server.url).predict([ROW, ROW | {"workclass": 7}, ROW | {"zip": [1]}])
    assert status == 422
    assert body["error"].startswith("2 of 3 rows are invalid: invalid values")
    assert body["rows"] == [
        {"row": 1, "errors": ["feature 'workclass' is a category with str values: send a string, got int 7"]},
        {"row": 2, "errors": ["feature 'zip' is a hashed category: send a string or an integer, got list [1]"]},
    ]


def test_a_model_trained_with_another_vocabulary_is_refused(registry: FilesystemRegistry) -> None:
    spec = census_spec()
    train_census_version(registry, spec)
    metrics = ScorerMetrics(spec.name)
    watcher = ChampionWatcher(registry, spec, metrics, retry_refused_s=0.0)
    assert watcher.check() and watcher.current.version == "v1"

    features = [f.model_dump() for f in spec.features]
    features[2]["categories"] = ["Gov", "Private", "Self-emp", "Without-pay"]  # same values, other codes
    train_census_version(registry, census_spec(spec.name, features=features))

    assert not watcher.check()
    assert watcher.current.version == "v1" and watcher.refused == "v2"
    assert "serve a version trained with this spec's categories" in watcher.degraded
